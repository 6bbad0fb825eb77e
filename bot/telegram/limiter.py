"""Outbound flow control shared by every sender in the process.

Telegram's limits (../shared/reference/messaging.md §4): about one message a second per chat
with short bursts, about 30 messages a second in total, and HTTP 429 with ``retry_after`` when a
bot goes over. One :class:`FlowControl` per process sits in front of *every* Bot API call that
the bot makes on its own initiative or in answer to someone:

- **messages** (sendMessage, sendPhoto, sendDocument) take a token from the chat's bucket
  (``chat_burst`` tokens, one more every second) and a slot in the global window (at most
  ``global_per_second`` in any second);
- **chat actions** that add no message to the chat (deleteMessage, editMessageReplyMarkup) take
  a global slot only: they count against the bot's overall budget but not the chat's;
- **other calls** (answerCallbackQuery, setMyCommands, setWebhook…) take nothing: a pressed
  button spins until it is answered, so that must never queue behind a broadcast;
- **every** call, answers included, waits while a 429 pause is in force: a 429 pauses all sends
  for ``retry_after`` seconds, not just the one that got it.

The limits must hold by *Telegram's* clock, and a request reaches Telegram some unknown time
after we allowed it (a busy event loop, a slow connection), so a send is dated by when its
answer came back — the latest moment Telegram can have received it — not by when it started:
:meth:`FlowControl.slot` holds a global slot while the request is in flight and records its
completion time in the one-second window, and re-dates the chat's token to the completion.
Whatever the delays, no second then sees more than ``global_per_second`` sends, nor a chat more
than its burst plus one a second. ``margin`` (1 %) adds a little slack on top. Time is read
through ``clock``/``sleep`` so tests drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

IN_FLIGHT_POLL_SECONDS = 0.01


class CallKind(Enum):
    """How a Bot API call counts against the limits (see the module docstring)."""

    MESSAGE = "message"
    CHAT_ACTION = "chat_action"
    OTHER = "other"


@dataclass
class _Bucket:
    tokens: float
    updated: float


class FlowControl:
    """Token buckets per chat, a sliding one-second window overall, and a global 429 pause."""

    def __init__(
        self,
        *,
        per_chat_per_second: float = 1.0,
        chat_burst: int = 3,
        global_per_second: int = 30,
        margin: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if per_chat_per_second <= 0 or chat_burst < 1 or global_per_second < 1:
            raise ValueError("limits must be positive")
        self.chat_burst = chat_burst
        self.chat_interval = (1.0 + margin) / per_chat_per_second
        self.global_per_second = global_per_second
        self.window = 1.0 + margin
        self._clock = clock
        self._sleep = sleep
        self._chats: dict[str, _Bucket] = {}
        self._recent: deque[float] = deque()  # completion times of sends in the last window
        self._in_flight = 0
        self._paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """Stop every call for ``seconds`` (Telegram said 429 with this ``retry_after``)."""
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    @property
    def paused_for(self) -> float:
        """Seconds left of the current 429 pause (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    @contextlib.asynccontextmanager
    async def slot(self, chat: str | None, kind: CallKind) -> AsyncIterator[None]:
        """Hold the right to make one call of ``kind`` to ``chat`` while it is in flight."""
        started = await self.acquire(chat, kind)
        try:
            yield
        finally:
            self.release(chat, kind, started)

    async def acquire(self, chat: str | None, kind: CallKind) -> float:
        """Wait until a call of ``kind`` to ``chat`` is allowed, and count it as in flight;
        returns the time it was allowed (give it back to :meth:`release`)."""
        while True:
            now = self._clock()
            wait = self._paused_until - now
            if kind is not CallKind.OTHER:
                wait = max(wait, self._global_wait(now))
            if kind is CallKind.MESSAGE and chat is not None:
                wait = max(wait, self._chat_wait(chat, now))
            if wait <= 0:
                # Checked and counted with no await in between: no other task can slip in.
                if kind is not CallKind.OTHER:
                    self._in_flight += 1
                if kind is CallKind.MESSAGE and chat is not None:
                    self._chats[chat].tokens -= 1.0
                return now
            await self._sleep(wait)

    def release(self, chat: str | None, kind: CallKind, started: float) -> None:
        """The call's answer is back: date it now, in the window and in the chat's bucket."""
        now = self._clock()
        if kind is not CallKind.OTHER:
            self._in_flight -= 1
            self._recent.append(now)
        bucket = self._chats.get(chat) if chat is not None else None
        if kind is CallKind.MESSAGE and bucket is not None:
            bucket.tokens -= max(0.0, now - started) / self.chat_interval

    def _global_wait(self, now: float) -> float:
        while self._recent and self._recent[0] <= now - self.window:
            self._recent.popleft()
        if self._in_flight + len(self._recent) < self.global_per_second:
            return 0.0
        if self._recent:
            return max(self._recent[0] + self.window - now, IN_FLIGHT_POLL_SECONDS)
        return IN_FLIGHT_POLL_SECONDS  # only calls in flight: one of them will finish soon

    def _chat_wait(self, chat: str, now: float) -> float:
        bucket = self._chats.get(chat)
        if bucket is None:
            if len(self._chats) > 10_000:
                self._forget_idle(now)
            bucket = self._chats[chat] = _Bucket(float(self.chat_burst), now)
        bucket.tokens = min(
            float(self.chat_burst), bucket.tokens + (now - bucket.updated) / self.chat_interval
        )
        bucket.updated = now
        if bucket.tokens >= 1.0:
            return 0.0
        return (1.0 - bucket.tokens) * self.chat_interval

    def _forget_idle(self, now: float) -> None:
        """Drop buckets that have refilled completely: a new one would be identical."""
        full = self.chat_burst * self.chat_interval
        for chat in [c for c, b in self._chats.items() if now - b.updated >= full]:
            del self._chats[chat]
