"""Test doubles that implement the ports (assert on state, not on calls)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.outbox import Delivered, Handed
from core.messages import Reply
from core.model import PayoutState
from core.ports import OutboxMessage, PayoutRequest, PayoutResult
from handlers.engine import Services


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 22, 6, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, **delta: float) -> None:
        self._now += timedelta(**delta)


class ScriptedIssuer:
    """Wraps a real issuer; ``redeem`` first raises the scripted errors, one per call."""

    def __init__(self, inner: Any, redeem_errors: list[Exception] | None = None) -> None:
        self.inner = inner
        self.redeem_errors = list(redeem_errors or [])

    async def verify(self, brand: str, number: str, secret: str | None) -> Any:
        return await self.inner.verify(brand, number, secret)

    async def redeem(
        self, brand: str, number: str, secret: str | None, amount_fen: int, reference: str
    ) -> Any:
        if self.redeem_errors:
            raise self.redeem_errors.pop(0)
        return await self.inner.redeem(brand, number, secret, amount_fen, reference)


class ScriptedGateway:
    """A payout provider whose answers are scripted: each entry is a PayoutState or an
    exception; once a script runs out, transfers succeed and queries report the last state."""

    def __init__(
        self,
        transfer: list[PayoutState | Exception] | None = None,
        query: list[PayoutState | Exception] | None = None,
    ) -> None:
        self.transfer_script = list(transfer or [])
        self.query_script = list(query or [])
        self.sent: list[str] = []
        self.state: dict[str, PayoutState] = {}

    async def transfer(self, request: PayoutRequest) -> PayoutResult:
        self.sent.append(request.reference)
        step = self.transfer_script.pop(0) if self.transfer_script else PayoutState.SUCCEEDED
        if isinstance(step, Exception):
            raise step
        self.state[request.reference] = step
        return self._result(request.reference, step)

    async def query(self, reference: str) -> PayoutResult:
        step = (
            self.query_script.pop(0)
            if self.query_script
            else self.state.get(reference, PayoutState.UNKNOWN)
        )
        if isinstance(step, Exception):
            raise step
        self.state[reference] = step
        return self._result(reference, step)

    def transfers(self) -> list[dict[str, Any]]:
        return [{"reference": r, "state": s.value} for r, s in self.state.items()]

    @staticmethod
    def _result(reference: str, state: PayoutState) -> PayoutResult:
        failed = state is PayoutState.FAILED
        return PayoutResult(
            reference,
            state,
            provider_txn_id=None if failed else f"TXN-{reference}",
            failure_reason="PAYEE_NOT_EXIST" if failed else None,
        )


class GatedReader:
    """A photo reader that waits until told to go on: a slow photo, on demand."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def read(self, image: bytes) -> Any:
        self.entered.set()
        await self.release.wait()
        return await self.inner.read(image)


class MisreportingIssuer:
    """Wraps a real issuer; ``verify`` reports the balances given in ``balances`` (by card
    number) instead of the true ones — an issuer whose data cannot be trusted."""

    def __init__(self, inner: Any, balances: dict[str, int]) -> None:
        self.inner = inner
        self.balances = dict(balances)

    async def verify(self, brand: str, number: str, secret: str | None) -> Any:
        from dataclasses import replace

        verification = await self.inner.verify(brand, number, secret)
        if number in self.balances:
            return replace(verification, balance_fen=self.balances[number])
        return verification

    async def redeem(
        self, brand: str, number: str, secret: str | None, amount_fen: int, reference: str
    ) -> Any:
        return await self.inner.redeem(brand, number, secret, amount_fen, reference)


# --------------------------------------------------------------------------------------------
# The outbox, delivered in tests


class RecordingCourier:
    """A courier for one channel that hands each outbox message to ``notify`` (channel,
    recipient, reply) — what a person on that channel would see."""

    def __init__(
        self, channel: str, notify: Callable[[str, str, Reply], Awaitable[None] | None]
    ) -> None:
        self.channel = channel
        self._notify = notify

    async def deliver(self, recipient: str, messages: Sequence[OutboxMessage]) -> Handed:
        for message in messages:
            done = self._notify(self.channel, recipient, message.reply)
            if done is not None:
                await done
        return Handed(len(messages), Delivered("test"))


async def deliver_outbox(
    services: Services,
    told: Any,
    channels: Sequence[str] = ("console", "telegram", "wechat"),
) -> int:
    """Deliver every due outbox message of ``channels`` to ``told``: an object with an async
    ``notify(channel, user_key, reply)``, or a callable taking each message's console text."""
    from bot.console import render_reply
    from bot.outbox import OutboxWorker

    if hasattr(told, "notify"):
        notify = told.notify
    else:

        def notify(channel: str, user_key: str, reply: Reply) -> None:
            told(render_reply(reply))

    count = 0
    for channel in channels:
        worker = OutboxWorker(
            services.uow_factory, RecordingCourier(channel, notify), services.sale.clock
        )
        while n := await worker.deliver_due():
            count += n
    return count


async def finish_and_tell(services: Services, told: Any) -> int:
    """The runtime's background pass (resume what nobody is settling, announce decisions), then
    what it queued in the outbox delivered to ``told`` (see :func:`deliver_outbox`)."""
    from handlers.notify import finish_unfinished

    changed = await finish_unfinished(services)
    await deliver_outbox(services, told)
    return changed
