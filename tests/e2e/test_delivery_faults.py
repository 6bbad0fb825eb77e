"""Faults around what a person is told (issue 12, items 8, 10 and 11), with the real app and
database — on SQLite and PostgreSQL.

- 10: an outcome is written to the outbox in the transaction that records it, so a payout
  finished by a process that does not serve the person's channel still reaches them, and a
  crash between the outcome and its delivery loses nothing;
- 11: a settlement in flight is claimed: the resume pass asks the provider nothing for it and
  tells nobody; a claim left by a dead process runs out and the pass then finishes the order;
- 8: a database failure while a message is handled keeps nothing and says so (the channel
  then has the message delivered again), and the redelivery takes effect.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from sqlalchemy.exc import OperationalError

from bot.outbox import LEASE
from core.messages import Inbound
from core.model import OrderStatus, PayoutState
from core.ports import PayoutRequest, PayoutResult
from core.sale import SETTLE_LEASE
from handlers.engine import Conversation, TurnKind
from handlers.notify import LIVE_HANDOVER, finish_unfinished
from tests.e2e.conftest import Harness
from tests.e2e.test_console_sale import SCRIPT, WALMART, play
from tests.fakes import ScriptedGateway, deliver_outbox

RECEIPT = "【电子回单】"


class Told:
    """What each person on each channel was sent by the outbox workers."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, str]] = []

    async def notify(self, channel: str, user_key: str, reply: Any) -> None:
        self.got.append((channel, user_key, reply.text))

    def receipts(self) -> list[tuple[str, str]]:
        return [(c, k) for c, k, text in self.got if RECEIPT in text]


class GatedGateway(ScriptedGateway):
    """A provider whose transfers wait for the test to let them finish (a slow provider)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = asyncio.Event()
        self.gate = asyncio.Event()

    async def transfer(self, request: PayoutRequest) -> PayoutResult:
        self.in_flight.set()
        await self.gate.wait()
        return await super().transfer(request)


async def pending(h: Harness, channel: str) -> list[str]:
    assert h.app is not None
    async with h.app.uow_factory() as uow:
        return [
            m.reply.text
            for m in await uow.outbox.for_recipient(channel, h.user)
            if m.state.value == "pending"
        ]


# --------------------------------------------------------------------------------------------
# Item 10


async def test_a_payout_finished_by_a_process_serving_another_channel_reaches_its_user(
    tmp_path: Any, database_url: str
) -> None:
    """The provider confirms late; the process that finishes the payout serves WeChat only
    (it has no Telegram courier at all). The receipt is in the outbox for the Telegram user
    as soon as the payout is recorded, and the Telegram process's worker delivers it once."""
    gateway = ScriptedGateway(transfer=[PayoutState.PROCESSING], query=[PayoutState.SUCCEEDED])
    h = Harness(tmp_path, database_url, channel="telegram", gateway=gateway)
    await h.start()
    try:
        await play(h, SCRIPT)
        assert RECEIPT not in h.text()
        assert h.app is not None
        assert await finish_unfinished(h.app.services) == 1  # "the WeChat process"
        [order] = await h.orders()
        assert order.status is OrderStatus.SETTLED
        assert any(RECEIPT in text for text in await pending(h, "telegram"))
        assert await h.step() == "start"  # the conversation moved on with it

        told = Told()
        await deliver_outbox(h.app.services, told, channels=("wechat",))
        assert told.got == []  # not WeChat's to send
        await deliver_outbox(h.app.services, told, channels=("telegram",))
        assert told.receipts() == [("telegram", h.user)]
        await deliver_outbox(h.app.services, told, channels=("telegram",))
        assert told.receipts() == [("telegram", h.user)]
    finally:
        await h.close()


async def test_a_crash_between_the_outcome_and_its_delivery_loses_nothing(
    tmp_path: Any, database_url: str
) -> None:
    gateway = ScriptedGateway(transfer=[PayoutState.PROCESSING], query=[PayoutState.SUCCEEDED])
    h = Harness(tmp_path, database_url, gateway=gateway)
    await h.start()
    try:
        await play(h, SCRIPT)
        assert h.app is not None
        await finish_unfinished(h.app.services)
        # A worker leases the receipt, and its process dies before sending it.
        async with h.app.uow_factory() as uow:
            now = h.clock.now()
            leased = await uow.outbox.claim_due("console", now, now + LEASE, 20)
            await uow.commit()
        assert any(RECEIPT in m.reply.text for m in leased)
        await h.restart()
        assert h.app is not None
        told = Told()
        assert await deliver_outbox(h.app.services, told) == 0  # still leased
        h.clock.advance(seconds=LEASE.total_seconds() + 1)
        await deliver_outbox(h.app.services, told)
        assert told.receipts() == [("console", h.user)]
    finally:
        await h.close()


# --------------------------------------------------------------------------------------------
# Item 11


async def test_the_resume_pass_leaves_a_payout_in_flight_alone_and_the_receipt_comes_once(
    tmp_path: Any, database_url: str
) -> None:
    """The attack: a provider that takes a few seconds, and the runtime's resume pass running
    meanwhile. It used to call the provider again under the same reference and tell the user a
    second time."""
    gateway = GatedGateway()
    h = Harness(tmp_path, database_url, gateway=gateway)
    await h.start()
    try:
        await play(h, SCRIPT[:-1])
        confirming = asyncio.create_task(h.choose("pay.confirm"))
        await asyncio.wait_for(gateway.in_flight.wait(), 30)
        assert h.app is not None
        for _ in range(3):  # every few seconds while the provider works
            assert await finish_unfinished(h.app.services) == 0
        gateway.gate.set()
        replies = await asyncio.wait_for(confirming, 30)
        assert sum(RECEIPT in r.text for r in replies) == 1
        assert len(gateway.sent) == 1
        [order] = await h.orders()
        assert order.status is OrderStatus.SETTLED
        # Nothing else is waiting to tell the user, now or after the hand-over time.
        h.clock.advance(seconds=LIVE_HANDOVER.total_seconds() + 1)
        assert await finish_unfinished(h.app.services) == 0
        told = Told()
        await deliver_outbox(h.app.services, told)
        assert told.got == []
    finally:
        await h.close()


async def test_a_claim_left_by_a_dead_process_runs_out_and_the_order_is_finished_once(
    tmp_path: Any, database_url: str
) -> None:
    gateway = ScriptedGateway(transfer=[PayoutState.PROCESSING], query=[PayoutState.SUCCEEDED])
    h = Harness(tmp_path, database_url, gateway=gateway)
    await h.start()
    try:
        await play(h, SCRIPT)
        [order] = await h.orders()
        assert order.status is OrderStatus.PAYING and order.id is not None
        assert h.app is not None
        async with h.app.uow_factory() as uow:  # a process took it, then died
            now = h.clock.now()
            assert await uow.order_claims.claim(order.id, "dead", now, now + SETTLE_LEASE)
            await uow.commit()
        assert await finish_unfinished(h.app.services) == 0
        [order] = await h.orders()
        assert order.status is OrderStatus.PAYING
        h.clock.advance(seconds=SETTLE_LEASE.total_seconds() + 1)
        assert await finish_unfinished(h.app.services) == 1
        told = Told()
        await deliver_outbox(h.app.services, told)
        assert told.receipts() == [("console", h.user)]
        assert len(gateway.sent) == 1  # queried, never sent again
    finally:
        await h.close()


# --------------------------------------------------------------------------------------------
# Item 8


class FailingCommits:
    """A unit-of-work factory whose next ``failures`` commits fail as a lost connection does."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def __call__(self) -> Any:
        uow = self.inner()
        commit = uow.commit

        async def failing_commit() -> None:
            if self.failures:
                self.failures -= 1
                raise OperationalError("COMMIT", {}, ConnectionResetError("connection lost"))
            await commit()

        uow.commit = failing_commit
        return uow


async def test_a_database_failure_mid_message_keeps_nothing_and_its_redelivery_works(
    tmp_path: Any, database_url: str
) -> None:
    h = Harness(tmp_path, database_url)
    await h.start()
    try:
        await play(h, SCRIPT[:3])  # the card number: the bot asks for the secret
        assert await h.step() == "await_secret"
        assert h.app is not None
        app = h.app
        flaky = Conversation(
            replace(app.services, uow_factory=FailingCommits(app.uow_factory, 1)),
            app.conversation.flow,
            app.conversation.desk,
        )
        secret = Inbound("console", h.user, h.user, "m-secret", "zh", text=WALMART[1])
        turn = await flaky.take(secret)
        assert turn.kind is TurnKind.RETRY and turn.replies == ()
        assert await h.step() == "await_secret"  # nothing was kept
        again = await app.conversation.take(secret)  # the platform delivers it again
        assert again.kind is TurnKind.HANDLED
        assert again.replies[0].delete_inbound  # the secret is taken out of the chat now
        assert await h.step() != "await_secret"
        assert (await app.conversation.take(secret)).kind is TurnKind.DUPLICATE
    finally:
        await h.close()


async def test_a_refusal_is_still_an_answer_not_a_retry(tmp_path: Any, database_url: str) -> None:
    h = Harness(tmp_path, database_url)
    await h.start()
    try:
        await play(h, SCRIPT[:2])
        assert h.app is not None
        wrong = Inbound("console", h.user, h.user, "m-wrong", "zh", text="1234")
        turn = await h.app.conversation.take(wrong)
        assert turn.kind is TurnKind.HANDLED and turn.replies
        assert (await h.app.conversation.take(wrong)).kind is TurnKind.DUPLICATE
    finally:
        await h.close()
