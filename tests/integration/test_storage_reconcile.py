"""Storage contract for reconciliation: payouts with their orders, for a period or by reference,
and the ledger transactions of some orders — on every backend (see ``uow_factory``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from core import ledger
from core.model import Order, OrderStatus, PayoutAccount, PayoutState
from core.ports import UnitOfWork
from storage.db import SqlAlchemyUnitOfWorkFactory
from tests.integration.test_storage_contract import (
    BEIJING,
    T0,
    new_account,
    new_order,
    new_payout,
    new_user,
)

DAY = timedelta(days=1)


async def paid_order(
    uow: UnitOfWork,
    account: PayoutAccount,
    fp: str,
    attempts: list[tuple[PayoutState, timedelta]],
) -> Order:
    """An order with its payouts (state, created this long after T0) and their ledger
    transactions, the way settlement posts them."""
    user = await uow.users.get(account.user_id)
    order = await new_order(uow, user, fp=fp, status=OrderStatus.PAYING)
    assert order.id is not None
    for number, (state, after) in enumerate(attempts, start=1):
        at = T0 + after
        payout = replace(
            new_payout(order, account, f"CBP{order.id:010d}N{number:02d}"),
            state=state,
            created_at=at,
            updated_at=at,
        )
        await uow.payouts.add(payout)
        amount = payout.amount_fen
        await uow.ledger.post(ledger.payout_reserve(order.id, user.id, payout.method, amount, at))
        if state is PayoutState.SUCCEEDED:
            await uow.ledger.post(ledger.payout_post(order.id, user.id, payout.method, amount, at))
        if state is PayoutState.FAILED:
            await uow.ledger.post(ledger.payout_void(order.id, user.id, payout.method, amount, at))
    return order


class TestReconciliationStorage:
    async def test_every_payout_is_listed_with_its_order_oldest_first(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            account = await new_account(uow, await new_user(uow))
            first = await paid_order(
                uow,
                account,
                "fp-1",
                [(PayoutState.FAILED, timedelta(0)), (PayoutState.SUCCEEDED, 2 * DAY)],
            )
            second = await paid_order(uow, account, "fp-2", [(PayoutState.UNKNOWN, DAY)])
            await uow.commit()
        async with uow_factory() as uow:
            found = await uow.payouts.for_reconciliation(None, None, [])
        assert [(p.reference, o.id, o.status) for p, o in found] == [
            (f"CBP{first.id:010d}N01", first.id, OrderStatus.PAYING),
            (f"CBP{first.id:010d}N02", first.id, OrderStatus.PAYING),
            (f"CBP{second.id:010d}N01", second.id, OrderStatus.PAYING),
        ]
        assert [p.state for p, _ in found] == [
            PayoutState.FAILED,
            PayoutState.SUCCEEDED,
            PayoutState.UNKNOWN,
        ]
        assert found[0][0].created_at == T0 and found[1][0].amount_fen == first.payout_fen

    async def test_a_period_brings_whole_orders_and_references_bring_theirs(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            account = await new_account(uow, await new_user(uow))
            # retried into the period: both attempts come, the earlier one for the ledger
            retried = await paid_order(
                uow,
                account,
                "fp-1",
                [(PayoutState.FAILED, -DAY), (PayoutState.SUCCEEDED, timedelta(hours=1))],
            )
            before = await paid_order(uow, account, "fp-2", [(PayoutState.SUCCEEDED, -DAY)])
            at_end = await paid_order(uow, account, "fp-3", [(PayoutState.SUCCEEDED, DAY)])
            at_start = await paid_order(uow, account, "fp-4", [(PayoutState.PENDING, 0 * DAY)])
            await uow.commit()
        since = T0.astimezone(BEIJING)  # any zone: instants are compared
        async with uow_factory() as uow:
            in_period = await uow.payouts.for_reconciliation(since, since + DAY, [])
            named = await uow.payouts.for_reconciliation(
                since, since + DAY, [f"CBP{before.id:010d}N01", "NOT-OURS"]
            )
            from_on = await uow.payouts.for_reconciliation(since, None, [])
        assert [o.id for _, o in in_period] == [retried.id, retried.id, at_start.id]
        assert sorted({o.id for _, o in named}) == sorted({retried.id, before.id, at_start.id})
        assert len(named) == 4
        assert {o.id for _, o in from_on} == {retried.id, at_end.id, at_start.id}

    async def test_many_references_are_looked_up_in_batches(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            account = await new_account(uow, await new_user(uow))
            order = await paid_order(uow, account, "fp-1", [(PayoutState.SUCCEEDED, -DAY)])
            await uow.commit()
        references = [f"X{i:05d}" for i in range(2500)] + [f"CBP{order.id:010d}N01"]
        async with uow_factory() as uow:
            found = await uow.payouts.for_reconciliation(T0, T0 + DAY, references)
            txns = await uow.ledger.for_orders([order.id or 0] * 3 + list(range(100, 2600)))
        assert [o.id for _, o in found] == [order.id]
        assert [t.kind for t in txns] == [ledger.PAYOUT_RESERVE, ledger.PAYOUT_POST]

    async def test_the_ledger_of_some_orders_comes_oldest_first_with_its_postings(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            account = await new_account(uow, await new_user(uow))
            one = await paid_order(
                uow,
                account,
                "fp-1",
                [(PayoutState.FAILED, timedelta(0)), (PayoutState.SUCCEEDED, DAY)],
            )
            other = await paid_order(uow, account, "fp-2", [(PayoutState.SUCCEEDED, DAY)])
            await uow.commit()
        assert one.id is not None and other.id is not None
        async with uow_factory() as uow:
            txns = await uow.ledger.for_orders([one.id])
            both = await uow.ledger.for_orders([other.id, one.id])
            none = await uow.ledger.for_orders([])
            everything = await uow.ledger.transactions()
        assert [t.kind for t in txns] == [
            ledger.PAYOUT_RESERVE,
            ledger.PAYOUT_VOID,
            ledger.PAYOUT_RESERVE,
            ledger.PAYOUT_POST,
        ]
        assert {t.order_id for t in txns} == {one.id}
        assert [t.id for t in both] == [t.id for t in everything]
        assert none == []
        for txn in txns:
            assert sum(p.amount_fen for p in txn.postings) == 0
            assert any(p.account == ledger.payout_clearing("alipay") for p in txn.postings)
