"""No payout is ever made twice and none is lost — under a misbehaving provider and crashes.

A Hypothesis state machine drives real settlement code (``core.sale``) over a real database
against a model payment provider (:class:`Bank`) that can lose requests, time out after paying,
fail, or answer "processing" and settle later. A crash can be injected at any boundary of a
payout — before or after each commit, before or after each provider call — after which the
"process" restarts (fresh ports, same database and provider) and recovers with
``resume_unfinished``. After every step:

- the provider never moved money twice for one order, and never under a second reference
  unless the first one failed for sure;
- the ledger balances, every transaction sums to zero, no one's payable is overdrawn;
- an order the books call settled was paid exactly once, under its stored reference.

At the end the provider heals, late payments complete, failed orders are paid again to a new
account, and every order must be settled and paid exactly once: nothing is lost.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)
from sqlalchemy.pool import NullPool

from core import ledger
from core.catalog import default_catalog
from core.errors import IssuerUnavailable, PayoutOutcomeUnknown
from core.model import (
    Card,
    Order,
    OrderStatus,
    PayoutAccount,
    PayoutMethod,
    PayoutState,
    Quote,
    User,
)
from core.ports import PayoutRequest, PayoutResult
from core.pricing import default_pricing
from core.risk import RiskPolicy
from core.sale import SETTLE_LEASE, SaleDeps, resume_unfinished, settle
from core.sale import retry_failed_payout as retry_failed
from core.sealing import account_context, card_context, holder_context
from storage.crypto import AesGcmVault
from storage.db import SqlAlchemyUnitOfWorkFactory, make_engine
from storage.tables import metadata
from tests.fakes import FakeClock

T0 = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)


class Crash(Exception):
    """The process dies here: nothing after this point happens in this process."""


class CrashPoints:
    """Counts the boundaries a payout crosses (commits, provider calls) and kills the process
    at the armed one."""

    def __init__(self) -> None:
        self.countdown: int | None = None
        self.hit: list[str] = []

    def arm(self, after: int) -> None:
        self.countdown = after

    def disarm(self) -> None:
        self.countdown = None

    def boundary(self, where: str) -> None:
        if self.countdown is None:
            return
        if self.countdown == 0:
            self.countdown = None
            self.hit.append(where)
            raise Crash(where)
        self.countdown -= 1


class CrashingUnitOfWork:
    """A unit of work whose commit may be the moment the process dies (before or after)."""

    def __init__(self, inner: Any, points: CrashPoints) -> None:
        self._inner = inner
        self._points = points

    async def __aenter__(self) -> CrashingUnitOfWork:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._inner.__aexit__(*exc)

    async def commit(self) -> None:
        self._points.boundary("before commit")
        await self._inner.commit()
        self._points.boundary("after commit")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CrashingFactory:
    def __init__(self, inner: SqlAlchemyUnitOfWorkFactory, points: CrashPoints) -> None:
        self._inner = inner
        self._points = points

    def __call__(self) -> CrashingUnitOfWork:
        return CrashingUnitOfWork(self._inner(), self._points)


class Bank:
    """The payment provider, modelled: idempotent per reference, with scripted misbehaviour.

    Behaviours of the next transfer: ``ok``; ``fail`` (a confirmed failure); ``lost`` (the
    request never arrives: a timeout, nothing recorded); ``paid_then_timeout`` (the money moves,
    the answer is lost); ``late`` (accepted as processing; settles or fails later). Queries may
    time out. ``moved`` is the ground truth: money that actually left, per reference."""

    def __init__(self, points: CrashPoints) -> None:
        self.points = points
        self.state: dict[str, PayoutState] = {}
        self.amount: dict[str, int] = {}
        self.moved: dict[str, int] = {}
        self.plan: list[str] = []
        self.query_plan: list[str] = []

    async def transfer(self, request: PayoutRequest) -> PayoutResult:
        self.points.boundary("before transfer")
        behaviour = self.plan.pop(0) if self.plan else "ok"
        reference = request.reference
        if reference not in self.state:  # a known reference is never paid again
            if behaviour == "lost":
                raise PayoutOutcomeUnknown("request timed out")
            self.amount[reference] = request.amount_fen
            if behaviour in ("ok", "paid_then_timeout"):
                self._pay(reference)
            elif behaviour == "fail":
                self.state[reference] = PayoutState.FAILED
            else:
                self.state[reference] = PayoutState.PROCESSING
            if behaviour == "paid_then_timeout":
                self.points.boundary("after transfer")
                raise PayoutOutcomeUnknown("response timed out")
        self.points.boundary("after transfer")
        return self._result(reference)

    async def query(self, reference: str) -> PayoutResult:
        self.points.boundary("before query")
        if self.query_plan and self.query_plan.pop(0) == "timeout":
            raise PayoutOutcomeUnknown("query timed out")
        return self._result(reference)

    def finish_late(self, succeed: bool) -> None:
        for reference, state in self.state.items():
            if state is PayoutState.PROCESSING:
                if succeed:
                    self._pay(reference)
                else:
                    self.state[reference] = PayoutState.FAILED
                return

    def _pay(self, reference: str) -> None:
        assert reference not in self.moved, f"{reference} paid twice by the provider model"
        self.state[reference] = PayoutState.SUCCEEDED
        self.moved[reference] = self.amount[reference]

    def _result(self, reference: str) -> PayoutResult:
        state = self.state.get(reference, PayoutState.UNKNOWN)
        return PayoutResult(
            reference,
            state,
            provider_txn_id=f"T-{reference}" if state is PayoutState.SUCCEEDED else None,
            failure_reason="account_frozen" if state is PayoutState.FAILED else None,
        )


class FlakyIssuer:
    """Redeems every card (idempotent per reference); sometimes unavailable."""

    def __init__(self) -> None:
        self.down = False
        self.redeemed: Counter[str] = Counter()

    async def verify(self, brand: str, number: str, secret: str | None) -> Any:
        raise AssertionError("not used here")

    async def redeem(
        self, brand: str, number: str, secret: str | None, amount_fen: int, reference: str
    ) -> None:
        if self.down:
            raise IssuerUnavailable("issuer down")
        self.redeemed[reference] += 1


BEHAVIOURS = st.sampled_from(["ok", "fail", "lost", "paid_then_timeout", "late"])
QUERIES = st.sampled_from(["answer", "timeout"])
# None: no crash; n: the process dies at the n-th boundary (commit or provider call) it crosses.
CRASH_AT = st.none() | st.integers(min_value=0, max_value=8)


class PayoutMachine(RuleBasedStateMachine):
    """Sales, payouts, provider trouble, crashes and restarts, in any order."""

    orders = Bundle("orders")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.mkdtemp(prefix="cardbot-payouts-")
        self.points = CrashPoints()
        self.bank = Bank(self.points)
        self.issuer = FlakyIssuer()
        self.clock = FakeClock(T0)
        self.vault = AesGcmVault([os.urandom(32)])
        url = f"sqlite+aiosqlite:///{self.dir}/cardbot.db"
        self.engine_url = url
        self.run(self._create_tables())
        self.db = SqlAlchemyUnitOfWorkFactory.from_url(url)
        self.uow_factory = CrashingFactory(self.db, self.points)
        self.deps = self._deps()
        self.amounts: dict[int, int] = {}
        self.crashes = 0

    # ------------------------------------------------------------------ plumbing

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    async def _create_tables(self) -> None:
        engine = make_engine(self.engine_url, poolclass=NullPool)
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        await engine.dispose()

    def _deps(self) -> SaleDeps:
        return SaleDeps(
            catalog=default_catalog(),
            pricing=default_pricing(),
            risk=RiskPolicy(),
            issuer=self.issuer,
            gateway=self.bank,
            vault=self.vault,
            clock=self.clock,
        )

    def restart(self) -> None:
        """A new process: fresh ports over the same database, vault key and provider. The dead
        process's claims on the orders it was settling run out before anyone resumes them."""
        self.points.disarm()
        self.clock.advance(seconds=SETTLE_LEASE.total_seconds() + 1)
        self.deps = self._deps()

    def crashable(self, coroutine: Any) -> None:
        try:
            self.run(coroutine)
        except Crash:
            self.crashes += 1
            self.restart()

    async def _approved_order(self, n: int, amount_fen: int) -> int:
        now = self.clock.now()
        async with self.db() as uow:
            user, _ = await uow.users.for_channel("telegram", f"u{n}", f"u{n}", "zh", now)
            user = replace(user, real_name_masked="张*", verified_at=now, kyc_level=1)
            await uow.users.update(user)
            card = await uow.cards.add(
                Card(
                    user_id=user.id,
                    brand="jd_e",
                    number_enc=b"",
                    number_fp=f"fp{n}",
                    number_masked="**** 0000",
                    created_at=now,
                    face_value_fen=amount_fen,
                    balance_fen=amount_fen,
                )
            )
            assert card.id is not None
            await uow.cards.update(
                replace(
                    card,
                    number_enc=self.vault.encrypt(f"{n:016d}", card_context(card.id, "number")),
                )
            )
            quote = await uow.quotes.add(
                Quote(
                    user_id=user.id,
                    card_id=card.id,
                    brand="jd_e",
                    face_value_fen=amount_fen,
                    balance_fen=amount_fen,
                    rate_bp=9000,
                    gross_fen=amount_fen * 9 // 10,
                    fee_fen=0,
                    payout_fen=amount_fen * 9 // 10,
                    lines=(),
                    created_at=now,
                    expires_at=now + timedelta(minutes=10),
                    rates_version="test",
                )
            )
            account = await self._account(uow, user, n, 1)
            assert quote.id is not None
            order = await uow.orders.add(
                Order(
                    user_id=user.id,
                    channel="telegram",
                    card_id=card.id,
                    quote_id=quote.id,
                    brand="jd_e",
                    card_fp=f"fp{n}",
                    card_masked="**** 0000",
                    face_value_fen=amount_fen,
                    balance_fen=amount_fen,
                    payout_fen=quote.payout_fen,
                    fee_fen=0,
                    status=OrderStatus.APPROVED,
                    created_at=now,
                    updated_at=now,
                    payout_account_id=account.id,
                )
            )
            await uow.commit()
        assert order.id is not None
        self.amounts[order.id] = order.payout_fen
        return order.id

    async def _account(self, uow: Any, user: User, n: int, k: int) -> PayoutAccount:
        row = await uow.payout_accounts.add(
            PayoutAccount(
                user_id=user.id,
                method=PayoutMethod.ALIPAY,
                account_enc=b"",
                account_fp=f"acct{n}-{k}",
                account_masked="1**********",
                holder_name_enc=b"",
                holder_name_masked="张*",
                created_at=self.clock.now(),
            )
        )
        row = replace(
            row,
            account_enc=self.vault.encrypt(f"13800{n:03d}{k:03d}", account_context(row.id)),
            holder_name_enc=self.vault.encrypt("张三", holder_context(row.id)),
        )
        await uow.payout_accounts.update(row)
        return row

    async def _order(self, order_id: int) -> Order:
        async with self.db() as uow:
            return await uow.orders.get(order_id)

    def _references(self, order_id: int) -> list[str]:
        prefix = f"CBP{order_id:010d}N"
        return sorted(r for r in self.bank.state if r.startswith(prefix))

    # ------------------------------------------------------------------ rules

    @initialize(target=orders, amount=st.integers(min_value=1_000, max_value=100_000_00))
    def first_order(self, amount: int) -> int:
        return self.run(self._approved_order(0, amount))

    @rule(target=orders, amount=st.integers(min_value=1_000, max_value=100_000_00))
    def new_order(self, amount: int) -> int:
        return self.run(self._approved_order(len(self.amounts), amount))

    @rule(succeed=st.booleans())
    def provider_finishes_a_late_payout(self, succeed: bool) -> None:
        self.bank.finish_late(succeed)

    @rule(down=st.booleans())
    def issuer_goes(self, down: bool) -> None:
        self.issuer.down = down

    def provider_will(self, provider: str, queries: str) -> None:
        self.bank.plan = [provider]
        self.bank.query_plan = [queries]

    @rule(order_id=orders, provider=BEHAVIOURS, queries=QUERIES, crash_at=CRASH_AT)
    def settle_order(
        self, order_id: int, provider: str, queries: str, crash_at: int | None
    ) -> None:
        self.provider_will(provider, queries)
        if crash_at is not None:
            self.points.arm(crash_at)
        self.crashable(settle(self.uow_factory, self.deps, order_id))
        self.points.disarm()

    @rule(provider=BEHAVIOURS, queries=QUERIES, crash_at=CRASH_AT)
    def recover(self, provider: str, queries: str, crash_at: int | None) -> None:
        self.provider_will(provider, queries)
        if crash_at is not None:
            self.points.arm(crash_at)
        self.crashable(resume_unfinished(self.uow_factory, self.deps))
        self.points.disarm()

    @rule(order_id=orders, provider=BEHAVIOURS, queries=QUERIES, crash_at=CRASH_AT)
    def pay_a_failed_order_to_another_account(
        self, order_id: int, provider: str, queries: str, crash_at: int | None
    ) -> None:
        order = self.run(self._order(order_id))
        if order.status is not OrderStatus.PAYOUT_FAILED:
            return
        account = self.run(self._new_account(order))
        self.provider_will(provider, queries)
        if crash_at is not None:
            self.points.arm(crash_at)
        self.crashable(retry_failed(self.uow_factory, self.deps, order_id, account))
        self.points.disarm()

    async def _new_account(self, order: Order) -> PayoutAccount:
        async with self.db() as uow:
            user = await uow.users.get(order.user_id)
            k = len(await uow.payout_accounts.for_user(user.id)) + 1
            account = await self._account(uow, user, order.id or 0, k)
            await uow.commit()
        return account

    @rule(minutes=st.integers(min_value=1, max_value=60))
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def no_order_is_paid_twice(self) -> None:
        for order_id in self.amounts:
            references = self._references(order_id)
            paid = [r for r in references if r in self.bank.moved]
            assert len(paid) <= 1, f"order {order_id} paid under {paid}"
            # A new reference only ever follows a confirmed failure of the one before.
            for earlier in references[:-1]:
                assert self.bank.state[earlier] is PayoutState.FAILED, (order_id, references)
            for reference in paid:
                assert self.bank.moved[reference] == self.amounts[order_id]

    @invariant()
    def the_books_agree_with_the_provider(self) -> None:
        self.run(self._check_books())

    async def _check_books(self) -> None:
        async with self.db() as uow:
            txns = list(await uow.ledger.transactions())
            balances: Counter[str] = Counter()
            for txn in txns:
                assert sum(p.amount_fen for p in txn.postings) == 0
                for p in txn.postings:
                    balances[p.account] += p.amount_fen
            assert sum(balances.values()) == 0
            for account, balance in balances.items():
                ledger.check_no_overdraft(account, balance)
            for order_id in self.amounts:
                order = await uow.orders.get(order_id)
                payout = await uow.payouts.for_order(order_id)
                paid = [r for r in self._references(order_id) if r in self.bank.moved]
                if order.status is OrderStatus.SETTLED:
                    assert payout is not None and paid == [payout.reference]
                    assert payout.state is PayoutState.SUCCEEDED
                if order.status in (OrderStatus.PAYOUT_FAILED, OrderStatus.CANCELLED):
                    assert paid == [], f"order {order_id} is {order.status} yet was paid"
                if order.status is OrderStatus.CANCELLED:
                    assert not any(
                        t.order_id == order_id and t.kind == ledger.PURCHASE for t in txns
                    )

    # ------------------------------------------------------------------ the end

    def teardown(self) -> None:
        try:
            self.run(self._heal_and_finish())
        finally:
            self.run(self.db.dispose())
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    async def _heal_and_finish(self) -> None:
        self.points.disarm()
        self.restart()
        self.issuer.down = False
        self.bank.plan.clear()
        self.bank.query_plan.clear()
        for _ in range(5):
            while any(s is PayoutState.PROCESSING for s in self.bank.state.values()):
                self.bank.finish_late(succeed=True)
            await resume_unfinished(self.db, self.deps)
            for order_id in self.amounts:
                order = await self._order(order_id)
                if order.status is OrderStatus.PAYOUT_FAILED:
                    await retry_failed(
                        self.db, self.deps, order_id, await self._new_account(order)
                    )
        for order_id, amount in self.amounts.items():
            order = await self._order(order_id)
            assert order.status is OrderStatus.SETTLED, f"order {order_id} left {order.status}"
            paid = [r for r in self._references(order_id) if r in self.bank.moved]
            assert len(paid) == 1 and self.bank.moved[paid[0]] == amount
        # The card was taken from the issuer once per order, whatever was retried.
        assert all(count >= 1 for count in self.issuer.redeemed.values())
        assert len(self.issuer.redeemed) == len(self.amounts)


PayoutMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("CARDBOT_STATEFUL_EXAMPLES", "40")),
    stateful_step_count=25,
    deadline=None,
    derandomize=True,  # seeded: the same sequences on every run and in CI
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPayoutsUnderCrashesAndProviderTrouble = PayoutMachine.TestCase


def test_the_machine_really_crashes_and_recovers() -> None:
    """The harness is not vacuous: an armed crash kills settle mid-way, recovery finishes it."""
    machine = PayoutMachine()
    try:
        order_id = machine.first_order(50_000)
        machine.settle_order(order_id, "paid_then_timeout", "answer", crash_at=None)
        assert machine.run(machine._order(order_id)).status is OrderStatus.PAYING
        # Dies before it can query (after claiming the order: that commit is two boundaries).
        machine.settle_order(order_id, "ok", "answer", crash_at=2)
        assert machine.crashes == 1 and machine.points.hit == ["before query"]
        machine.recover("ok", "answer", crash_at=None)
        assert machine.run(machine._order(order_id)).status is OrderStatus.SETTLED
        machine.no_order_is_paid_twice()
        machine.the_books_agree_with_the_provider()
    finally:
        machine.teardown()
