"""Delivering the outbox: one worker per channel a process serves.

Everything said to a person that is not the direct reply to their own message is a row in the
outbox, written in the same transaction as its cause (``core.ports.OutboxRepository``). Each
process runs an :class:`OutboxWorker` for every channel it serves; the worker leases the due
messages of its channel (per recipient only the oldest undelivered one and those right behind
it, so a person's messages arrive in order, whichever process sends them), hands each
recipient's messages to the channel's :class:`Courier` and records what happened:

- :class:`Delivered` — sent (``via`` names how);
- :class:`Held` — the channel will not take it now; it goes with the person's next message
  (WeChat's customer-service window);
- :class:`Retry` — a passing failure: tried again after a growing pause (2 s, 4 s … an hour),
  given up after :data:`MAX_ATTEMPTS` tries (about a day: a blocked bot, an unfollowed account);
- :class:`Undeliverable` — given up at once.

A process that dies while sending loses its lease; another process sends the message after it
(so a message may, rarely, arrive twice; it is never lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from core.ports import Clock, OutboxMessage, UnitOfWorkFactory

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)
BATCH = 20
POLL_SECONDS = 1.0
MAX_ATTEMPTS = 30


@dataclass(frozen=True)
class Delivered:
    via: str


@dataclass(frozen=True)
class Held:
    reason: str


@dataclass(frozen=True)
class Retry:
    reason: str


@dataclass(frozen=True)
class Undeliverable:
    reason: str


Delivery = Delivered | Held | Retry | Undeliverable


@dataclass(frozen=True)
class Handed:
    """What a courier did with a recipient's leased messages: the first ``taken`` of them had
    ``result``; the rest (that did not fit in one channel message) go in the next round."""

    taken: int
    result: Delivery


class Courier(Protocol):
    """Sends outbox messages on one channel."""

    channel: str

    async def deliver(self, recipient: str, messages: Sequence[OutboxMessage]) -> Handed:
        """Send some of a recipient's messages (oldest first, at least one)."""
        ...


def backoff(attempts: int) -> timedelta:
    """How long to wait after the ``attempts``-th failed try: 2, 4, 8 … seconds, up to an
    hour."""
    return timedelta(seconds=min(3600, 2 ** max(1, min(attempts, 12))))


class OutboxWorker:
    """Delivers one channel's outbox messages until stopped."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        courier: Courier,
        clock: Clock,
        *,
        wake: asyncio.Event | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._uow_factory = uow_factory
        self.courier = courier
        self.channel = courier.channel
        self._clock = clock
        self._wake = wake if wake is not None else asyncio.Event()
        self._poll = poll_seconds

    def wake(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop``; never dies of one failure."""
        while not stop.is_set():
            try:
                busy = await self.deliver_due()
            except Exception as exc:
                log.error("%s outbox round failed: %s", self.channel, type(exc).__name__)
                busy = 0
            if busy:
                continue
            self._wake.clear()
            waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waits, timeout=self._poll, return_when="FIRST_COMPLETED")
            finally:
                for waiter in waits:
                    waiter.cancel()

    async def deliver_due(self) -> int:
        """Send what is due now; returns how many messages were handled this round."""
        now = self._clock.now()
        async with self._uow_factory() as uow:
            claimed = await uow.outbox.claim_due(self.channel, now, now + LEASE, BATCH)
            await uow.commit()
        batches: dict[str, list[OutboxMessage]] = {}
        for message in claimed:
            batches.setdefault(message.recipient, []).append(message)
        if batches:
            await asyncio.gather(*(self._hand(batch) for batch in batches.values()))
        return len(claimed)

    async def _hand(self, batch: list[OutboxMessage]) -> None:
        try:
            handed = await self.courier.deliver(batch[0].recipient, batch)
        except Exception as exc:  # one person's failure must not hold up the others
            log.warning("%s outbox delivery raised %s", self.channel, type(exc).__name__)
            handed = Handed(len(batch), Retry(type(exc).__name__))
        taken = max(1, min(handed.taken, len(batch)))
        await self._record(batch[:taken], handed.result, rest=batch[taken:])

    async def _record(
        self, messages: Sequence[OutboxMessage], result: Delivery, rest: Sequence[OutboxMessage]
    ) -> None:
        now = self._clock.now()
        async with self._uow_factory() as uow:
            for message in messages:
                assert message.id is not None
                match result:
                    case Delivered(via):
                        await uow.outbox.mark_sent(message.id, via, now)
                    case Held(reason):
                        log.info("%s message %s held: %s", self.channel, message.id, reason)
                        await uow.outbox.hold(message.id, reason)
                    case Retry(reason) if message.attempts >= MAX_ATTEMPTS:
                        log.warning(
                            "%s message %s given up after %s tries",
                            self.channel,
                            message.id,
                            message.attempts,
                        )
                        await uow.outbox.give_up(message.id, now, reason)
                    case Retry(reason):
                        log.warning(
                            "%s message %s not sent (%s): retrying",
                            self.channel,
                            message.id,
                            reason,
                        )
                        await uow.outbox.retry_later(
                            message.id, now + backoff(message.attempts), reason
                        )
                    case Undeliverable(reason):
                        await uow.outbox.give_up(message.id, now, reason)
            for message in rest:
                assert message.id is not None
                await uow.outbox.retry_later(message.id, now, "")
            await uow.commit()


__all__ = [
    "Courier",
    "Delivered",
    "Delivery",
    "Handed",
    "Held",
    "OutboxWorker",
    "Retry",
    "Undeliverable",
    "backoff",
]
