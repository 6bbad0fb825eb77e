"""Handling queued inbound updates: every chat in order, chats side by side, none waiting on
another.

A channel takes updates in (:class:`~core.ports.InboundQueue` ``put``) and confirms them to the
channel at once — getUpdates moves on, the webhook answers — so no person's backlog holds the
channel's connections or the next poll. :class:`InboundWorker` then leases the oldest update of
each chat with work, up to ``concurrency`` chats at once, and handles that chat's updates one
after another until it has none left; a finished chat frees its place for the next.

- **At most once, never lost.** A handled update is deleted; the conversation records each
  message's key with its effect, so an update handled twice (a lease that ran out, a crash
  between handling and deletion) has its effect once. An update whose handling failed for a
  reason that passes (the database unreachable, a connection reset) stays queued and is tried
  again with growing pauses; one that failed for any other reason is logged by its key and let
  go, so a poisoned update cannot stop its chat.
- **Crashes.** Leases are short and renewed while an update is in hand: a process that dies
  loses its chats to another process (or to itself, restarted) within ``lease``.
- **Stopping.** :meth:`InboundWorker.serve` returns when ``stop`` is set, after the updates in
  hand are finished (within ``drain_seconds``); the rest stays queued for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from core.ports import Clock, InboundQueue, QueuedUpdate

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """A channel's handler says the update must be handled again later (its storage failed
    and nothing of it was kept)."""


# Failures that pass by themselves: the update is kept and tried again.
RETRYABLE: tuple[type[BaseException], ...] = (
    RetryLater,
    OperationalError,
    InterfaceError,
    ConnectionError,
    TimeoutError,
    OSError,
)
MAX_RETRY_PAUSE_SECONDS = 300.0

Handler = Callable[[QueuedUpdate], Awaitable[None]]


def retry_pause(attempts: int) -> timedelta:
    """How long an update waits after its ``attempts``-th failed try: 1 s, 2 s, 4 s … 5 min."""
    return timedelta(seconds=min(MAX_RETRY_PAUSE_SECONDS, 2.0 ** max(0, attempts - 1)))


class InboundWorker:
    """Works one channel's inbound queue (see the module docstring)."""

    def __init__(
        self,
        channel: str,
        queue: InboundQueue,
        handle: Handler,
        clock: Clock,
        *,
        concurrency: int = 16,
        lease: timedelta = timedelta(seconds=10),
        idle_poll_seconds: float = 1.0,
        drain_seconds: float = 10.0,
        owner: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.channel = channel
        self.owner = owner or f"{channel}:{uuid.uuid4().hex[:16]}"
        self._queue = queue
        self._handle = handle
        self._clock = clock
        self._concurrency = concurrency
        self._lease = lease
        self._idle_poll = idle_poll_seconds
        self._drain = drain_seconds
        self._wakeup = asyncio.Event()
        self._chats: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()

    def wake(self) -> None:
        """New updates were queued: look for work now rather than at the next poll."""
        self._wakeup.set()

    @property
    def busy_chats(self) -> int:
        """Chats being handled by this process right now."""
        return len(self._chats)

    async def serve(self, stop: asyncio.Event) -> None:
        """Handle queued updates until ``stop`` is set; then finish what is in hand."""
        self._stop = stop
        failures = 0
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                self._wakeup.clear()
                try:
                    await self._start_chats()
                    failures = 0
                except RETRYABLE as exc:
                    failures += 1
                    log.warning(
                        "%s inbound queue unreachable (%s); trying again",
                        self.channel,
                        type(exc).__name__,
                    )
                waiter = asyncio.ensure_future(self._wakeup.wait())
                waiting: set[asyncio.Future[Any]] = {stopper, waiter, *self._chats.values()}
                pause = self._idle_poll * min(30.0, 2.0**failures) if failures else self._idle_poll
                await asyncio.wait(waiting, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
        finally:
            stopper.cancel()
            await self._finish()

    async def _start_chats(self) -> None:
        free = self._concurrency - len(self._chats)
        if free <= 0:
            return
        now = self._clock.now()
        heads = await self._queue.claim_heads(
            self.channel, self.owner, now, now + self._lease, free, busy=frozenset(self._chats)
        )
        for item in heads:
            task = asyncio.create_task(self._work_chat(item), name=f"chat-{item.chat_key}")
            self._chats[item.chat_key] = task
            task.add_done_callback(functools.partial(self._chat_done, item.chat_key))

    def _chat_done(self, chat_key: str, _task: asyncio.Task[None]) -> None:
        self._chats.pop(chat_key, None)
        self._wakeup.set()

    async def _work_chat(self, item: QueuedUpdate | None) -> None:
        """One chat's updates, oldest first, until none is due or the worker stops."""
        while item is not None:
            if not await self._handle_one(item) or self._stop.is_set():
                return
            now = self._clock.now()
            try:
                more = await self._queue.claim_heads(
                    self.channel, self.owner, now, now + self._lease, 1, chat_key=item.chat_key
                )
            except RETRYABLE:
                return  # the main loop claims it again when the queue is back
            item = more[0] if more else None

    async def _handle_one(self, item: QueuedUpdate) -> bool:
        """Handle one update; False when it stays queued for a later try."""
        renewer = asyncio.create_task(self._keep_lease(item))
        try:
            await self._handle(item)
        except RETRYABLE as exc:
            log.warning(
                "%s update %s failed (%s); kept for another try",
                self.channel,
                item.update_key,
                type(exc).__name__,
            )
            await self._release(item, self._clock.now() + retry_pause(item.attempts))
            return False
        except asyncio.CancelledError:
            await self._release(item, self._clock.now())
            raise
        except Exception as exc:
            # Only the key and the type: the payload may hold a secret.
            log.error(
                "%s update %s failed (%s); let go",
                self.channel,
                item.update_key,
                type(exc).__name__,
                exc_info=True,
            )
        finally:
            renewer.cancel()
        try:
            await self._queue.done(item.id, self.owner)
        except RETRYABLE as exc:
            # Handled but still queued: handled again later, to no effect (inbox dedupe).
            log.warning("%s update %s: done not recorded (%s)", self.channel, item.update_key, exc)
            return False
        return True

    async def _keep_lease(self, item: QueuedUpdate) -> None:
        every = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(*RETRYABLE):
                await self._queue.renew([item.id], self.owner, self._clock.now() + self._lease)

    async def _release(self, item: QueuedUpdate, not_before: datetime) -> None:
        with contextlib.suppress(*RETRYABLE):
            await asyncio.shield(self._queue.retry_later(item.id, self.owner, not_before))

    async def _finish(self) -> None:
        tasks = list(self._chats.values())
        if not tasks:
            return
        _, unfinished = await asyncio.wait(tasks, timeout=self._drain)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
