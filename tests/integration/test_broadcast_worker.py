"""The broadcast worker in process, on SQLite and PostgreSQL: Telegram through the fake Bot API
(limit enforced, on a clock 10x faster), WeChat through a fake API — cancel mid-send, a
scheduled start, blocked recipients, 429s, replies during a broadcast, a graceful stop, and
WeChat's 48-hour window."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from bench.broadcast import max_in_window
from bot.broadcast import (
    BroadcastChannel,
    BroadcastWorker,
    TelegramBroadcastChannel,
    WeChatBroadcastChannel,
)
from bot.telegram.limiter import FlowControl
from bot.telegram.outbound import TelegramSender
from bot.wechat.api import WeChatApiError
from core import broadcast as bc
from core.broadcast import (
    OPEN_DELIVERY_STATES,
    Audience,
    AudienceKind,
    BroadcastRequest,
    BroadcastState,
    DeliveryState,
)
from core.messages import Reply
from storage.db import SqlAlchemyUnitOfWorkFactory
from tests.fakes import FakeClock
from tests.telegram_api import TOKEN, FakeTelegram

SCALE = 10.0
FIRST_CHAT = 700_000


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram(rate_limit=30, time_scale=SCALE)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def sender(
    tg: FakeTelegram, uow_factory: SqlAlchemyUnitOfWorkFactory
) -> AsyncIterator[TelegramSender]:
    bot = Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(tg.base_url)))
    flow = FlowControl(
        clock=lambda: time.monotonic() * SCALE, sleep=lambda s: asyncio.sleep(s / SCALE)
    )
    try:
        yield TelegramSender(bot, flow, uow_factory)
    finally:
        await bot.session.close()


async def seed(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
    n: int,
    channel: str = "telegram",
    send_at: datetime | None = None,
    now: datetime | None = None,
) -> int:
    now = now or datetime.now(UTC)
    async with uow_factory() as uow:
        for k in range(n):
            chat = str(FIRST_CHAT + k) if channel == "telegram" else f"oUser{k}"
            await uow.users.for_channel(channel, chat, chat, "zh", now)
        draft, _ = await bc.draft(
            uow, BroadcastRequest(Audience(AudienceKind.ALL), "价格更新", send_at), "t:1", now
        )
        assert draft.id is not None
        await bc.confirm(uow, draft.id, "t:1", now)
        await uow.commit()
    return draft.id


async def report(uow_factory: SqlAlchemyUnitOfWorkFactory, broadcast_id: int) -> bc.DeliveryReport:
    async with uow_factory() as uow:
        return await bc.report(uow, broadcast_id)


async def state(uow_factory: SqlAlchemyUnitOfWorkFactory, broadcast_id: int) -> BroadcastState:
    async with uow_factory() as uow:
        return (await uow.broadcasts.get(broadcast_id)).state


async def until(predicate: Any, within: float = 300.0) -> None:  # a hang, not a timing
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def ok_sends(tg: FakeTelegram) -> Counter[int | None]:
    return Counter(c.chat for c in tg.sends())


def worker_for(uow_factory: Any, channels: list[Any], clock: Any = None) -> BroadcastWorker:
    return BroadcastWorker(
        uow_factory,
        channels,
        clock or WallClock(),
        poll_seconds=0.05,
        stale_after=timedelta(seconds=1),
    )


class CountingWorker(BroadcastWorker):
    """A worker that counts how often it looked for deliveries to send."""

    def __init__(self, uow_factory: Any, channels: list[Any], clock: Any) -> None:
        super().__init__(
            uow_factory, channels, clock, poll_seconds=0.05, stale_after=timedelta(seconds=1)
        )
        self.claims = 0

    async def claim(self, channel: str, limit: int) -> Any:
        claimed = await super().claim(channel, limit)
        self.claims += 1
        return claimed


async def run_until_finished(
    uow_factory: SqlAlchemyUnitOfWorkFactory, channel: BroadcastChannel, broadcast_id: int
) -> None:
    """A worker with this one channel, run until the broadcast has finished."""
    worker = worker_for(uow_factory, [channel])
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:

        async def finished() -> bool:
            return await state(uow_factory, broadcast_id) is BroadcastState.FINISHED

        await until(finished)
    finally:
        stop.set()
        await running


async def test_cancelling_mid_send_stops_after_at_most_the_few_deliveries_in_hand(
    uow_factory: SqlAlchemyUnitOfWorkFactory, tg: FakeTelegram, sender: TelegramSender
) -> None:
    broadcast_id = await seed(uow_factory, 200)
    worker = worker_for(uow_factory, [TelegramBroadcastChannel(sender)])
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await until(lambda: _true(len(tg.sends()) >= 30))
        async with uow_factory() as uow:
            await bc.cancel(uow, broadcast_id, "t:1", datetime.now(UTC))
            await uow.commit()
        at_cancel = len(tg.sends())

        async def settled() -> bool:  # every row decided: sent, or skipped by the cancel
            final = await report(uow_factory, broadcast_id)
            return not any(final[open_state] for open_state in OPEN_DELIVERY_STATES)

        await until(settled)
    finally:
        stop.set()
        await running  # its requests in flight are answered and recorded before it returns
    after = len(tg.sends()) - at_cancel
    assert after <= worker.claim_ahead + 4
    final = await report(uow_factory, broadcast_id)
    received = ok_sends(tg)
    assert final[DeliveryState.SENT] == sum(received.values()) == len(tg.sends())
    assert max(received.values()) == 1
    assert final[DeliveryState.SKIPPED] == 200 - final[DeliveryState.SENT]
    assert await state(uow_factory, broadcast_id) is BroadcastState.CANCELLED


async def _true(value: bool) -> bool:
    return value


async def test_a_scheduled_broadcast_waits_for_its_time_then_reaches_everyone_once(
    uow_factory: SqlAlchemyUnitOfWorkFactory, tg: FakeTelegram, sender: TelegramSender
) -> None:
    clock = FakeClock(datetime.now(UTC))
    broadcast_id = await seed(
        uow_factory, 40, send_at=clock.now() + timedelta(hours=1), now=clock.now()
    )
    worker = CountingWorker(uow_factory, [TelegramBroadcastChannel(sender)], clock)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        # Not "nothing within some time": the worker has looked for due rows three times.
        await until(lambda: _true(worker.claims >= 3))
        assert tg.sends() == []
        assert await state(uow_factory, broadcast_id) is BroadcastState.SCHEDULED
        clock.advance(hours=1)
        worker.wake.set()

        async def finished() -> bool:
            return await state(uow_factory, broadcast_id) is BroadcastState.FINISHED

        await until(finished)
    finally:
        stop.set()
        await running
    assert ok_sends(tg) == Counter({FIRST_CHAT + k: 1 for k in range(40)})
    assert (await report(uow_factory, broadcast_id))[DeliveryState.SENT] == 40
    async with uow_factory() as uow:
        events = await uow.audit.for_subject(f"broadcast:{broadcast_id}")
    assert [(e.actor, e.action, e.details) for e in events[-1:]] == [
        ("system:broadcast", "broadcast.finished", {"sent": 40})
    ]


async def test_blocked_recipients_are_marked_unreachable_and_429s_pause_every_send(
    uow_factory: SqlAlchemyUnitOfWorkFactory, tg: FakeTelegram, sender: TelegramSender
) -> None:
    broadcast_id = await seed(uow_factory, 60)
    tg.blocked = {FIRST_CHAT + k for k in range(0, 60, 10)}
    tg.flood(2)  # the first send opens a 2-second flood window
    channel = TelegramBroadcastChannel(sender)
    await run_until_finished(uow_factory, channel, broadcast_id)
    final = await report(uow_factory, broadcast_id)
    assert final[DeliveryState.UNREACHABLE] == 6 and final[DeliveryState.SENT] == 54
    assert max(ok_sends(tg).values()) == 1
    refused = [c for c in tg.sends(ok_only=False) if c.status == 429]
    assert 1 <= len(refused) <= 4  # only the requests already in flight met the flood
    assert channel.retry_afters == len(refused)
    first_ok = min(c.at for c in tg.sends())
    assert first_ok >= refused[0].at + 2 / SCALE - 0.01  # nothing went through the window
    counted = [c.at for c in tg.sends(ok_only=False) if c.status != 429]
    assert max_in_window(counted, 1 / SCALE) <= 30
    async with uow_factory() as uow:
        identity = (await uow.users.identities(1))[0]
    assert identity.chat_id == str(FIRST_CHAT) and identity.reachable is False


async def test_a_reply_gets_through_while_a_broadcast_is_sending(
    uow_factory: SqlAlchemyUnitOfWorkFactory, tg: FakeTelegram, sender: TelegramSender
) -> None:
    broadcast_id = await seed(uow_factory, 200)
    worker = worker_for(uow_factory, [TelegramBroadcastChannel(sender)])
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    overtaken = []
    try:
        await until(lambda: _true(len(tg.sends()) >= 20))
        for _ in range(5):
            before = len(tg.sends())
            await sender.send_reply(42, Reply("您的订单已结算"))
            # Broadcast messages that reached Telegram while this reply waited its turn.
            overtaken.append(len(tg.sends()) - before - 1)

        async def finished() -> bool:
            return await state(uow_factory, broadcast_id) is BroadcastState.FINISHED

        await until(finished)
    finally:
        stop.set()
        await running
    assert tg.texts(42) == ["您的订单已结算"] * 5
    # Counted in messages, not seconds (a busy machine slows both alike): a reply waits its
    # turn among the broadcast's senders — at worst a full second's window of them — and never
    # queues behind the broadcast's backlog.
    assert max(overtaken) <= 2 * tg.rate_limit, overtaken


async def test_a_graceful_stop_leaves_nothing_ambiguous_and_a_new_worker_finishes(
    uow_factory: SqlAlchemyUnitOfWorkFactory, tg: FakeTelegram, sender: TelegramSender
) -> None:
    broadcast_id = await seed(uow_factory, 120)
    stop = asyncio.Event()
    first = worker_for(uow_factory, [TelegramBroadcastChannel(sender)])
    running = asyncio.create_task(first.run(stop))
    await until(lambda: _true(len(tg.sends()) >= 30))
    stop.set()
    await running
    middle = await report(uow_factory, broadcast_id)
    assert middle[DeliveryState.SENDING] == 0 and middle[DeliveryState.UNKNOWN] == 0
    assert middle[DeliveryState.SENT] == len(tg.sends()) < 120
    stop = asyncio.Event()
    second = worker_for(uow_factory, [TelegramBroadcastChannel(sender)])
    running = asyncio.create_task(second.run(stop))
    try:

        async def finished() -> bool:
            return await state(uow_factory, broadcast_id) is BroadcastState.FINISHED

        await until(finished)
    finally:
        stop.set()
        await running
    assert ok_sends(tg) == Counter({FIRST_CHAT + k: 1 for k in range(120)})


class FakeWeChatApi:
    """Records customer-service and template sends; refuses openids it is told to."""

    def __init__(self, refuse: dict[str, int] | None = None) -> None:
        self.refuse = refuse or {}
        self.texts: list[str] = []
        self.templates: list[str] = []

    async def send_text(self, openid: str, text: str) -> None:
        if openid in self.refuse:
            raise WeChatApiError(self.refuse[openid], "refused")
        self.texts.append(openid)

    async def send_template(self, openid: str, template_id: str, data: dict[str, str]) -> None:
        if openid in self.refuse:
            raise WeChatApiError(self.refuse[openid], "refused")
        assert "价格更新" in data["content"]
        self.templates.append(openid)


async def run_wechat(
    uow_factory: SqlAlchemyUnitOfWorkFactory, api: FakeWeChatApi, template: str | None
) -> int:
    now = datetime.now(UTC)
    broadcast_id = await seed(uow_factory, 4, channel="wechat", now=now)
    async with uow_factory() as uow:
        await uow.wechat_contacts.touch("oUser0", now - timedelta(hours=1), by_message=True)
        await uow.wechat_contacts.touch("oUser1", now - timedelta(hours=49), by_message=True)
        await uow.wechat_contacts.touch("oUser3", now - timedelta(hours=2), by_message=True)
        await uow.commit()
    channel = WeChatBroadcastChannel(api, uow_factory, WallClock(), template_id=template)  # type: ignore[arg-type]
    await run_until_finished(uow_factory, channel, broadcast_id)
    return broadcast_id


async def test_wechat_without_a_template_sends_only_inside_the_48_hour_window(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    api = FakeWeChatApi(refuse={"oUser3": 43004})
    broadcast_id = await run_wechat(uow_factory, api, None)
    assert api.texts == ["oUser0"] and api.templates == []
    async with uow_factory() as uow:
        rows = {d.chat_id: d for d in await uow.broadcasts.deliveries(broadcast_id)}
        contact = await uow.wechat_contacts.get("oUser0")
    assert rows["oUser0"].state is DeliveryState.SENT
    assert contact is not None and contact.message_sends == 1
    for outside in ("oUser1", "oUser2"):  # 49 hours ago; never wrote
        assert rows[outside].state is DeliveryState.SKIPPED
        assert rows[outside].error == "outside the 48-hour customer-service window"
    assert rows["oUser3"].state is DeliveryState.UNREACHABLE


async def test_wechat_with_a_template_reaches_followers_outside_the_window(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    api = FakeWeChatApi(refuse={"oUser3": 43004})
    broadcast_id = await run_wechat(uow_factory, api, "TPL-price")
    assert sorted(api.templates) == ["oUser0", "oUser1", "oUser2"] and api.texts == []
    final = await report(uow_factory, broadcast_id)
    assert final[DeliveryState.SENT] == 3 and final[DeliveryState.UNREACHABLE] == 1
