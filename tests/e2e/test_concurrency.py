"""Many things at once: the same confirmation fifty times, concurrent payouts of one order — on
SQLite and PostgreSQL, through the real conversation and storage."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.messages import Inbound
from core.model import OrderStatus, PayoutState
from core.sale import retry_failed_payout, settle
from tests.e2e.conftest import Harness
from tests.e2e.test_console_sale import (
    WALMART,
    ZH,
    card_photo,
    identity_and_payout,
    sell_until_quote,
)
from tests.fakes import ScriptedGateway


def _clicks(h: Harness, option_id: str, n: int) -> list[Inbound]:
    return [
        Inbound(
            channel="console",
            user_id=h.user,
            chat_id=h.user,
            message_id=f"click-{i}",
            language="zh",
            option=option_id,
        )
        for i in range(n)
    ]


async def test_fifty_simultaneous_confirmations_of_one_quote_accept_it_once(
    harness: Harness, tmp_path: Path
) -> None:
    await sell_until_quote(harness, card_photo(tmp_path, WALMART[0]), WALMART[1])
    accept = harness.option_id("quote.accept")
    assert harness.app is not None
    results = await asyncio.gather(
        *(harness.app.conversation.handle(i) for i in _clicks(harness, accept, 50))
    )
    texts = [r.text for replies in results for r in replies]
    assert sum(t == ZH("quote.accepted") for t in texts) == 1
    # Everyone else hears that the button is no longer current — not an apology for an error.
    assert ZH("error.internal") not in texts
    assert sum(t == ZH("error.option_gone") for t in texts) == 49
    [order] = await harness.orders()
    assert order.status is OrderStatus.ACCEPTED
    async with harness.app.uow_factory() as uow:
        events = await uow.audit.for_subject(f"order:{order.id}")
    assert [e.action for e in events].count("order.accepted") == 1


async def test_fifty_simultaneous_payment_confirmations_pay_once(
    harness: Harness, tmp_path: Path
) -> None:
    await sell_until_quote(harness, card_photo(tmp_path, WALMART[0]), WALMART[1])
    await identity_and_payout(harness, confirm=False)
    confirm = harness.option_id("pay.confirm")
    assert harness.app is not None
    results = await asyncio.gather(
        *(harness.app.conversation.handle(i) for i in _clicks(harness, confirm, 50))
    )
    texts = [r.text for replies in results for r in replies]
    assert ZH("error.internal") not in texts
    assert sum("【电子回单】" in t for t in texts) == 1
    [order] = await harness.orders()
    assert order.status is OrderStatus.SETTLED
    async with harness.app.uow_factory() as uow:
        txns = await uow.ledger.transactions(order.id)
    assert [t.kind for t in txns] == ["purchase", "payout_reserve", "payout_post"]


async def test_two_concurrent_payouts_of_one_balance_pay_exactly_once(
    tmp_path: Path, database_url: str
) -> None:
    """A failed payout leaves the money owed; two processes try to pay it at once to two new
    accounts. Together they would pay twice the balance: exactly one may go through."""
    gateway = ScriptedGateway(transfer=[PayoutState.FAILED])
    h = Harness(tmp_path, database_url, gateway=gateway)
    await h.start()
    try:
        await sell_until_quote(h, card_photo(tmp_path, WALMART[0]), WALMART[1])
        await identity_and_payout(h)
        [order] = await h.orders()
        assert order.status is OrderStatus.PAYOUT_FAILED and order.id is not None
        assert h.app is not None
        deps = h.app.services.sale
        async with h.app.uow_factory() as uow:
            (account,) = await uow.payout_accounts.for_user(order.user_id)
        # Two payouts of the same owed balance, concurrently (the account may repeat: the point
        # is the money, which exists once).
        results = await asyncio.gather(
            retry_failed_payout(h.app.uow_factory, deps, order.id, account),
            retry_failed_payout(h.app.uow_factory, deps, order.id, account),
            return_exceptions=True,
        )
        assert all(not isinstance(r, BaseException) for r in results), results
        await settle(h.app.uow_factory, deps, order.id)
        async with h.app.uow_factory() as uow:
            txns = await uow.ledger.transactions(order.id)
            after = await uow.orders.get(order.id)
        assert after.status is OrderStatus.SETTLED
        assert [t.kind for t in txns].count("payout_post") == 1
        assert [t.kind for t in txns].count("payout_reserve") == 2  # the failed one + one retry
        assert len(gateway.sent) == 2 and len(set(gateway.sent)) == 2
    finally:
        await h.close()
