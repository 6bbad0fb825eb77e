"""The broadcast worker: sends confirmed broadcasts from their outbox (``broadcast_deliveries``)
through each channel's sender, at most once per recipient.

**At most once.** A lane claims a few deliveries ahead (``claimed``, committed), and commits
each one ``sending`` just before its request, then ``sent`` / ``failed`` / ``unreachable`` /
``skipped`` after it. After a crash, rows another worker left ``claimed`` for longer than
``stale_after`` go back to ``pending`` (no request was made for them); rows it left ``sending``
are never sent again: they are marked ``unknown`` and reported so. Only the requests in flight
at the moment of a kill (at most ``concurrency``) can be ambiguous. Only a request that surely
never left (the connection was refused) puts a row back to ``pending``. A graceful stop sends
nothing more: claimed rows not yet sent go back to ``pending`` and the requests in flight are
awaited and recorded.

**Pacing.** Telegram: every send goes through the process's
:class:`~bot.telegram.limiter.FlowControl` — the same one conversation replies use, so the
broadcast never takes the chats' or the bot's budget from under them, and a reply competes with
only a few broadcast sends (``concurrency``) for the next slot. A 429 pauses every call for its
``retry_after`` (then the same request is made again: a refused request delivered nothing). 403
or "chat not found" marks the recipient and their channel identity unreachable. A broadcast
with a picture is a photo with the text as caption; the picture is uploaded once and re-sent by
its ``file_id``.

WeChat: a template message when ``WECHAT_TEMPLATE_ID`` is set; else a customer-service message
only inside the user's 48-hour window and within its quota (:func:`bot.wechat.delivery.
open_window`), otherwise the delivery is ``skipped`` with the reason. Never the mass-send API
(1 a day / 4 a month per follower: not for price updates). Pictures are not sent on WeChat
(they would need a media upload); the text is.

Scheduled broadcasts start when their time comes (the claim only takes rows of due
broadcasts); a cancelled one stops promptly: its pending rows are skipped by the cancel, and
rows this worker claimed but had not sent yet are skipped when the lane next looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

import aiohttp
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
)
from aiogram.methods import SendMessage, SendPhoto
from aiogram.types import BufferedInputFile

from bot.telegram.limiter import CallKind, FlowControl
from bot.wechat.api import WeChatApi, WeChatApiError, WeChatUnavailable
from bot.wechat.delivery import (
    MAX_TEMPLATE_CHARS,
    OUT_OF_WINDOW,
    open_window,
)
from core.broadcast import (
    ACTIVE_STATES,
    Broadcast,
    BroadcastState,
    Delivery,
    DeliveryState,
    Outcome,
)
from core.messages import Reply
from core.ports import WECHAT_CUSTOM, BroadcastUnitOfWorkFactory, Clock, WeChatUnitOfWorkFactory
from handlers.broadcast import recipient_text

if TYPE_CHECKING:
    from bot.app import App
    from bot.runtime import ChannelRunner
    from bot.telegram.outbound import TelegramSender

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
CLAIM_AHEAD = 8
STALE_AFTER = timedelta(minutes=2)
DRAIN_SECONDS = 30.0
WORKER_ACTOR = "system:broadcast"
# WeChat: 43004 the user does not follow the account (any more); 40003 no such openid.
WECHAT_UNREACHABLE = frozenset({43004, 40003})
TELEGRAM_GONE = ("chat not found", "user is deactivated", "bot was kicked", "peer_id_invalid")


Start = Callable[[], Awaitable[bool]]

NOT_OURS = Outcome(DeliveryState.SKIPPED, "claim lost")


class BroadcastChannel(Protocol):
    """How one channel delivers one broadcast message."""

    channel: str
    concurrency: int  # sends in flight at once

    def paused_for(self) -> float:
        """Seconds to wait before sending anything (a 429 pause), 0 when free."""
        ...

    async def deliver(self, delivery: Delivery, broadcast: Broadcast, start: Start) -> Outcome:
        """Send one recipient's message; never raises for the channel's own failures.
        ``start()`` commits the delivery ``sending``: call it once, as late as possible before
        the request (after any wait for the channel's limits); False means do not send."""
        ...


class TelegramBroadcastChannel:
    """Telegram, through the process's sender and its FlowControl."""

    channel = "telegram"

    def __init__(self, sender: TelegramSender, concurrency: int = 4) -> None:
        self.sender = sender
        self.concurrency = concurrency
        self.retry_afters = 0  # 429s received (each one paused every send)
        self._photo_ids: dict[int, str] = {}

    def paused_for(self) -> float:
        return self.sender.flow.paused_for

    async def deliver(self, delivery: Delivery, broadcast: Broadcast, start: Start) -> Outcome:
        text = recipient_text(broadcast.text, delivery.language)
        flow = self.sender.flow
        started = False
        while True:
            try:
                async with flow.slot(delivery.chat_id, CallKind.MESSAGE):
                    # Committed "sending" only once the limits let it go: a kill while it
                    # waited for its slot leaves it claimed, and it is sent after a restart.
                    if not started:
                        if not await start():
                            return NOT_OURS
                        started = True
                    await self._send(int(delivery.chat_id), broadcast, text)
                return Outcome(DeliveryState.SENT)
            except TelegramRetryAfter as exc:
                # Refused, so not delivered: pause everything, then the same request again.
                self.retry_afters += 1
                flow.pause(float(exc.retry_after))
                log.warning("broadcast: 429, every send paused %ss", exc.retry_after)
            except TelegramForbiddenError as exc:
                return Outcome(DeliveryState.UNREACHABLE, f"403 {exc.message}")
            except TelegramBadRequest as exc:
                if any(gone in exc.message.lower() for gone in TELEGRAM_GONE):
                    return Outcome(DeliveryState.UNREACHABLE, f"400 {exc.message}")
                return Outcome(DeliveryState.FAILED, f"400 {exc.message}")
            except TelegramEntityTooLarge as exc:
                return Outcome(DeliveryState.FAILED, f"413 {exc.message}")
            except TelegramNetworkError as exc:
                if isinstance(exc.__cause__, aiohttp.ClientConnectorError):
                    return Outcome(DeliveryState.PENDING, "could not connect")
                return Outcome(DeliveryState.UNKNOWN, f"no answer: {exc.message}")
            except TelegramAPIError as exc:  # 5xx and the rest: it may have been delivered
                return Outcome(DeliveryState.UNKNOWN, f"{type(exc).__name__}: {exc.message}")

    async def _send(self, chat_id: int, broadcast: Broadcast, text: str) -> None:
        bot = self.sender.bot
        if broadcast.image is None:
            await bot(SendMessage(chat_id=chat_id, text=text))
            return
        assert broadcast.id is not None
        known = self._photo_ids.get(broadcast.id)
        photo: str | BufferedInputFile = known or BufferedInputFile(
            broadcast.image, filename="broadcast.jpg"
        )
        message = await bot(SendPhoto(chat_id=chat_id, photo=photo, caption=text))
        if known is None and message.photo:
            self._photo_ids[broadcast.id] = message.photo[-1].file_id


class WeChatBroadcastChannel:
    """WeChat: template message when configured, else customer service inside its window."""

    channel = "wechat"

    def __init__(
        self,
        api: WeChatApi,
        uow_factory: Any,
        clock: Clock,
        template_id: str | None = None,
        template_field: str = "content",
        concurrency: int = 2,
    ) -> None:
        self.api = api
        self.uow_factory = uow_factory  # a WeChat unit of work (wechat_contacts)
        self.clock = clock
        self.template_id = template_id
        self.template_field = template_field
        self.concurrency = concurrency

    def paused_for(self) -> float:
        return 0.0

    async def deliver(self, delivery: Delivery, broadcast: Broadcast, start: Start) -> Outcome:
        openid = delivery.chat_id
        text = recipient_text(broadcast.text, delivery.language)
        if self.template_id:
            short = text if len(text) <= MAX_TEMPLATE_CHARS else text[: MAX_TEMPLATE_CHARS - 1]
            if not await start():
                return NOT_OURS
            try:
                await self.api.send_template(
                    openid, self.template_id, {self.template_field: short}
                )
                return Outcome(DeliveryState.SENT)
            except WeChatApiError as exc:
                if exc.errcode in WECHAT_UNREACHABLE:
                    return Outcome(DeliveryState.UNREACHABLE, f"{exc.errcode} {exc.errmsg}")
                log.warning("broadcast template refused (%s): customer service instead", exc)
            except WeChatUnavailable as exc:
                return Outcome(DeliveryState.UNKNOWN, f"template: {exc}")
        async with self.uow_factory() as uow:
            contact = await uow.wechat_contacts.get(openid)
        window = open_window(contact, self.clock.now())
        if window is None:
            return Outcome(DeliveryState.SKIPPED, "outside the 48-hour customer-service window")
        if not self.template_id and not await start():
            return NOT_OURS
        try:
            await self.api.send_text(openid, text)
        except WeChatApiError as exc:
            if exc.errcode in OUT_OF_WINDOW:
                return Outcome(DeliveryState.SKIPPED, f"{exc.errcode} {exc.errmsg}")
            if exc.errcode in WECHAT_UNREACHABLE:
                return Outcome(DeliveryState.UNREACHABLE, f"{exc.errcode} {exc.errmsg}")
            return Outcome(DeliveryState.FAILED, f"{exc.errcode} {exc.errmsg}")
        except WeChatUnavailable as exc:
            return Outcome(DeliveryState.UNKNOWN, f"customer service: {exc}")
        async with self.uow_factory() as uow:
            # Kept in the outbox as sent: WeChat's quota is worked out from there.
            await uow.outbox.record_sent(
                "wechat", openid, Reply(text), WECHAT_CUSTOM, self.clock.now()
            )
            await uow.commit()
        return Outcome(DeliveryState.SENT)


@dataclass
class LaneStats:
    """What one channel's lane did since the worker started."""

    claimed: int = 0
    recorded: dict[str, int] = field(default_factory=dict)


class _Lane:
    """One channel: claims ahead, sends with a few tasks, records outcomes in batches."""

    def __init__(self, worker: BroadcastWorker, channel: BroadcastChannel) -> None:
        self.worker = worker
        self.channel = channel
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self.outstanding = 0  # claimed and not yet recorded
        self.results: list[tuple[int, Outcome]] = []
        self.recorded = asyncio.Event()
        self.resulted = asyncio.Event()
        self.in_flight = 0
        self.backoff = 0.0
        self.stats = LaneStats()

    async def run(self, stop: asyncio.Event) -> None:
        senders = [
            asyncio.create_task(self._sender(), name=f"broadcast-{self.channel.channel}-{n}")
            for n in range(self.channel.concurrency)
        ]
        recorder = asyncio.create_task(self._recorder(), name="broadcast-recorder")
        try:
            await self._claimer(stop)
        finally:
            # Nothing more leaves: claimed rows still queued go back to pending; the requests
            # in flight finish and are recorded.
            released = []
            while not self.queue.empty():
                delivery = self.queue.get_nowait()
                assert delivery.id is not None
                released.append((delivery.id, Outcome(DeliveryState.PENDING, "worker stopped")))
            self.results += released
            self.resulted.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), DRAIN_SECONDS)
            for task in [*senders, recorder]:
                task.cancel()
            await asyncio.gather(*senders, recorder, return_exceptions=True)
            # The recorder may have been cancelled between taking results and committing them.
            await self._flush_remaining()

    async def _drained(self) -> None:
        while self.in_flight or self.results or self.outstanding > 0:
            self.recorded.clear()
            await self.recorded.wait()

    async def _claimer(self, stop: asyncio.Event) -> None:
        worker = self.worker
        while not stop.is_set():
            paused = self.channel.paused_for() or self.backoff
            if paused > 0:
                self.backoff = 0.0
                await _sleep_unless(stop, min(paused, POLL_SECONDS))
                continue
            room = worker.claim_ahead - self.outstanding
            if room < max(1, worker.claim_ahead // 2):
                self.recorded.clear()
                await _wait_any(stop, self.recorded, POLL_SECONDS)
                continue
            try:
                claimed = await worker.claim(self.channel.channel, room)
            except Exception:
                log.exception("broadcast: claiming %s deliveries failed", self.channel.channel)
                await _sleep_unless(stop, POLL_SECONDS)
                continue
            self.stats.claimed += len(claimed)
            self.outstanding += len(claimed)
            for delivery in claimed:
                self.queue.put_nowait(delivery)
            if not claimed:
                await _wait_any(stop, worker.wake, POLL_SECONDS)
                worker.wake.clear()

    async def _sender(self) -> None:
        while True:
            delivery = await self.queue.get()
            self.in_flight += 1
            try:
                outcome = await self._deliver(delivery)
            except Exception as exc:  # a bug, not the channel: at most once still holds
                log.exception("broadcast delivery %s failed", delivery.id)
                outcome = Outcome(DeliveryState.UNKNOWN, f"{type(exc).__name__}")
            finally:
                self.in_flight -= 1
            if outcome.state is DeliveryState.PENDING:
                self.backoff = min(30.0, max(1.0, self.backoff * 2))
            assert delivery.id is not None
            self.results.append((delivery.id, outcome))
            self.resulted.set()

    async def _deliver(self, delivery: Delivery) -> Outcome:
        broadcast = await self.worker.broadcast(delivery.broadcast_id)
        if broadcast.state is BroadcastState.CANCELLED:
            return Outcome(DeliveryState.SKIPPED, "cancelled")
        # start() False: no longer ours (taken back after a long pause), someone else sends
        # it; recording NOT_OURS then changes nothing, the row being no longer claimed by us.
        return await self.channel.deliver(delivery, broadcast, lambda: self.worker.start(delivery))

    async def _recorder(self) -> None:
        while True:
            await self.resulted.wait()
            self.resulted.clear()
            await self._flush()

    async def _flush(self) -> None:
        if not self.results:
            return
        batch, self.results = self.results, []
        while True:
            try:
                await self.worker.record(batch)
                break
            except asyncio.CancelledError:
                self.results = batch + self.results
                raise
            except Exception:
                log.exception("broadcast: recording %d outcomes failed; retrying", len(batch))
                await asyncio.sleep(POLL_SECONDS)
        for _, outcome in batch:
            key = outcome.state.value
            self.stats.recorded[key] = self.stats.recorded.get(key, 0) + 1
        self.outstanding -= len(batch)
        self.recorded.set()

    async def _flush_remaining(self) -> None:
        with contextlib.suppress(Exception):
            await self._flush()


class BroadcastWorker:
    """Runs one lane per channel plus housekeeping (crash leftovers → unknown, finished
    broadcasts) until stopped."""

    def __init__(
        self,
        uow_factory: BroadcastUnitOfWorkFactory,
        channels: Sequence[BroadcastChannel],
        clock: Clock,
        *,
        claim_ahead: int = CLAIM_AHEAD,
        stale_after: timedelta = STALE_AFTER,
        poll_seconds: float = POLL_SECONDS,
        worker_id: str | None = None,
    ) -> None:
        self.uow_factory = uow_factory
        self.channels = list(channels)
        self.clock = clock
        self.claim_ahead = max(1, claim_ahead)
        self.stale_after = stale_after
        self.poll_seconds = poll_seconds
        self.worker_id = worker_id or f"w-{uuid.uuid4().hex[:16]}"
        self.wake = asyncio.Event()
        self.lanes = [_Lane(self, channel) for channel in self.channels]
        self._broadcasts: dict[int, Broadcast] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop``; never dies of one failure."""
        log.info(
            "broadcast worker %s: %s",
            self.worker_id,
            ", ".join(c.channel for c in self.channels) or "no channel",
        )
        await self.housekeeping()
        keeper = asyncio.create_task(self._keep_house(stop), name="broadcast-housekeeping")
        try:
            await asyncio.gather(*(lane.run(stop) for lane in self.lanes))
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        with contextlib.suppress(Exception):
            await self.housekeeping()

    async def _keep_house(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _sleep_unless(stop, self.poll_seconds)
            try:
                await self.housekeeping()
            except Exception:
                log.exception("broadcast housekeeping failed")

    async def housekeeping(self) -> None:
        """Crash leftovers become unknown; broadcasts with nothing left to send finish."""
        now = self.clock.now()
        async with self.uow_factory() as uow:
            for channel in self.channels:
                lost = await uow.broadcasts.expire_claims(
                    channel.channel, self.worker_id, now - self.stale_after
                )
                if lost:
                    log.warning(
                        "broadcast: %d %s deliveries were left sending by a stopped worker;"
                        " marked unknown (never sent again)",
                        lost,
                        channel.channel,
                    )
            finished = await uow.broadcasts.finish_done(now)
            for broadcast_id in finished:
                report = await uow.broadcasts.report(broadcast_id)
                counts: dict[str, object] = {s.value: n for s, n in report.counts.items()}
                await uow.audit.append(
                    now, WORKER_ACTOR, "broadcast.finished", f"broadcast:{broadcast_id}", counts
                )
                log.info("broadcast %s finished: %s", broadcast_id, counts)
            await uow.commit()

    async def claim(self, channel: str, limit: int) -> Sequence[Delivery]:
        """Claim due deliveries (committed ``sending`` before any request)."""
        async with self.uow_factory() as uow:
            claimed = await uow.broadcasts.claim(channel, self.worker_id, self.clock.now(), limit)
            await uow.commit()
        # Fresh states of the broadcasts in hand: a cancel is noticed before the next send.
        live = {i for i, b in self._broadcasts.items() if b.state in ACTIVE_STATES}
        if claimed or live:
            await self.refresh({d.broadcast_id for d in claimed} | live)
        return claimed

    async def start(self, delivery: Delivery) -> bool:
        """Commit ``sending`` just before the request: only a request in flight at a crash can
        leave a delivery ambiguous; claimed rows not started go back to pending."""
        assert delivery.id is not None
        async with self.uow_factory() as uow:
            started = await uow.broadcasts.start(delivery.id, self.worker_id, self.clock.now())
            await uow.commit()
        return started

    async def record(self, outcomes: Sequence[tuple[int, Outcome]]) -> None:
        async with self.uow_factory() as uow:
            await uow.broadcasts.record(self.worker_id, outcomes, self.clock.now())
            await uow.commit()

    async def refresh(self, ids: set[int]) -> None:
        async with self.uow_factory() as uow:
            for broadcast_id in ids:
                try:
                    broadcast = await uow.broadcasts.get(broadcast_id)
                except KeyError:
                    self._broadcasts.pop(broadcast_id, None)
                    continue
                self._broadcasts[broadcast_id] = broadcast

    async def broadcast(self, broadcast_id: int) -> Broadcast:
        """A broadcast as last read (refreshed whenever deliveries are claimed)."""
        cached = self._broadcasts.get(broadcast_id)
        if cached is None:
            await self.refresh({broadcast_id})
            cached = self._broadcasts[broadcast_id]
        return cached


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_any(stop: asyncio.Event, event: asyncio.Event, seconds: float) -> None:
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(event.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()


# --------------------------------------------------------------------------------------------
# Wiring for ``cardbot run``


def tuned_flow(flow: FlowControl, scale: float, margin: float) -> FlowControl:
    """The same limits with another slack ``margin``, on a clock running ``scale`` times
    faster (a scale other than 1 is for tests and benchmarks: the fake Bot API runs on the
    same scaled clock)."""
    return FlowControl(
        chat_burst=flow.chat_burst,
        per_chat_per_second=flow.window / flow.chat_interval,
        global_per_second=flow.global_per_second,
        margin=margin,
        clock=lambda: time.monotonic() * scale,
        sleep=lambda seconds: asyncio.sleep(seconds / scale),
    )


Closer = Callable[[], Awaitable[None]]


async def build_worker(
    app: App, runners: Sequence[ChannelRunner]
) -> tuple[BroadcastWorker, list[Closer]]:
    """The worker for the channels this process serves, and what to close after it."""
    settings = app.settings
    clock = app.services.sale.clock
    channels: list[BroadcastChannel] = []
    closers: list[Closer] = []
    for runner in runners:
        if runner.channel == "telegram":
            sender: TelegramSender = runner.sender  # type: ignore[attr-defined]
            margin = settings.telegram_flow_margin
            if settings.time_scale != 1.0 or abs(sender.flow.window - 1.0 - margin) > 1e-9:
                # Before anything is sent: the conversation and the broadcast share this one.
                sender.flow = tuned_flow(sender.flow, settings.time_scale, margin)
            channels.append(
                TelegramBroadcastChannel(sender, concurrency=settings.broadcast_concurrency)
            )
        elif runner.channel == "wechat":
            api, close = _wechat_api(app)
            closers.append(close)
            channels.append(
                WeChatBroadcastChannel(
                    api,
                    app.uow_factory,
                    clock,
                    template_id=settings.wechat_template_id,
                    template_field=settings.wechat_template_field,
                )
            )
    worker = BroadcastWorker(
        cast(BroadcastUnitOfWorkFactory, app.uow_factory),
        channels,
        clock,
        claim_ahead=settings.broadcast_claim_ahead,
        stale_after=timedelta(seconds=settings.broadcast_stale_seconds),
    )
    return worker, closers


def _wechat_api(app: App) -> tuple[WeChatApi, Closer]:
    from bot.wechat.api import DatabaseTokenStore, RedisTokenStore, TokenStore

    settings = app.settings
    assert settings.wechat_app_id is not None and settings.wechat_app_secret is not None
    clock = app.services.sale.clock
    vault = app.services.sale.vault
    store: TokenStore
    if settings.redis_url:
        store = RedisTokenStore(settings.redis_url, vault, settings.wechat_app_id, clock)
    else:
        uow_factory = cast(WeChatUnitOfWorkFactory, app.uow_factory)
        store = DatabaseTokenStore(uow_factory, vault, settings.wechat_app_id)
    session = aiohttp.ClientSession()
    api = WeChatApi(
        session,
        settings.wechat_api_base,
        settings.wechat_app_id,
        settings.wechat_app_secret.get_secret_value(),
        store,
        clock,
        timeout=settings.wechat_api_timeout_seconds,
    )

    async def close() -> None:
        await session.close()
        await store.aclose()

    return api, close


async def run_broadcasts(app: App, runners: Sequence[ChannelRunner], stop: asyncio.Event) -> None:
    """``cardbot run``'s broadcast task: deliver until ``stop``, then close what it opened."""
    worker, closers = await build_worker(app, runners)
    try:
        await worker.run(stop)
    finally:
        for close in closers:
            with contextlib.suppress(Exception):
                await close()
