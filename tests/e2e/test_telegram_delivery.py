"""The Telegram channel in one process against the Bot API test server: what storage trouble does
to an update (issue 12, item 8) and what a button press delivered again after a restart gets
(item 11) — on SQLite and PostgreSQL. Updates are confirmed once they are in the inbound queue
and handled from there (bot/inflow.py): trouble while handling keeps the update queued for
another try; trouble while queueing confirms nothing, so Telegram delivers it again."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from bot.runtime import RunOptions
from bot.telegram import SECRET_HEADER, TelegramRunner, build_runner
from core.ports import TakenUpdate
from handlers.engine import Conversation
from tests.e2e.conftest import Harness
from tests.e2e.telegram_harness import watch_queue
from tests.e2e.test_delivery_faults import FailingCommits
from tests.telegram_api import TOKEN, FakeTelegram, User

SECRET = "webhook-secret"


@dataclass
class World:
    h: Harness
    tg: FakeTelegram
    runner: TelegramRunner

    def fail_next_commits(self, failures: int) -> None:
        """The database connection drops for the next ``failures`` commits."""
        app = self.h.app
        assert app is not None
        self.runner.adapter.conversation = Conversation(
            replace(app.services, uow_factory=FailingCommits(app.uow_factory, failures)),
            app.conversation.flow,
            app.conversation.desk,
        )


@pytest.fixture
async def world(tmp_path: Path, database_url: str) -> AsyncIterator[World]:
    tg = FakeTelegram()
    base = await tg.start()
    h = Harness(
        tmp_path,
        database_url,
        channel="telegram",
        overrides={
            "telegram_bot_token": TOKEN,
            "telegram_api_base": base,
            "telegram_webhook_secret": SECRET,
        },
    )
    await h.start()
    assert h.app is not None
    runner = await build_runner(h.app, RunOptions(webhook="http://127.0.0.1:1/hook"))
    watch_queue(tg, database_url)
    try:
        yield World(h, tg, runner)
    finally:
        await runner.aclose()
        await h.close()
        await tg.close()


class FailingPuts:
    """An inbound queue whose next ``failures`` puts fail as a lost connection does."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    async def put(self, channel: str, updates: list[TakenUpdate], at: Any) -> int:
        if self.failures:
            self.failures -= 1
            raise OperationalError("INSERT", {}, ConnectionResetError("connection lost"))
        return int(await self.inner.put(channel, updates, at))


@contextlib.asynccontextmanager
async def working(w: World, *, poll: bool = True) -> AsyncIterator[None]:
    """The runner's inbound worker (and, with ``poll``, its long polling) until the block ends."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.runner.worker.serve(stop))]
    if poll:
        tasks.append(asyncio.create_task(w.runner.poll(stop)))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def first_try_failed(world: World) -> None:
    """Wait until the worker has tried the queued update once and put it back for later."""
    engine = world.h.app.uow_factory.engine  # type: ignore[union-attr]
    while True:
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT attempts, owner FROM inbound_queue"))).first()
        if row is not None and row[0] >= 1 and row[1] is None:
            return
        await asyncio.sleep(0.02)


async def test_storage_trouble_while_handling_keeps_the_update_queued_and_it_is_handled_later(
    world: World,
) -> None:
    alice = User(2001)
    world.fail_next_commits(1)
    update = world.tg.text_update(alice, "/start")
    async with working(world):
        world.tg.push(update)
        await world.tg.wait_for(  # confirmed at once: it is kept in the inbound queue
            lambda c: (
                c.method == "getupdates" and int(c.params.get("offset") or 0) > update["update_id"]
            )
        )
        await asyncio.wait_for(first_try_failed(world), 30)
        assert world.tg.texts(alice.id) == []  # the first try kept nothing, said nothing
        world.h.clock.advance(seconds=1)  # the retry's pause
        world.runner.worker.wake()
        await world.tg.handled(update)
    said = world.tg.texts(alice.id)
    assert len(said) == 1 and "卡回收助手" in said[0]  # answered once, after the retry


async def test_the_webhook_answers_503_while_storage_fails_and_the_retry_is_handled(
    world: World,
) -> None:
    bob = User(2002)
    queue = world.runner.intake._queue
    world.runner.intake._queue = FailingPuts(queue, 1)  # type: ignore[assignment]
    update = world.tg.text_update(bob, "/start")
    app = web.Application()
    app.add_routes(world.runner.routes())
    async with (
        working(world, poll=False),
        TestServer(app) as server,
        aiohttp.ClientSession() as session,
    ):
        url = server.make_url("/hook")
        headers = {SECRET_HEADER: SECRET}
        async with session.post(url, json=update, headers=headers) as first:
            assert first.status == 503  # not kept: Telegram must send it again
        assert world.tg.texts(bob.id) == []
        async with session.post(url, json=update, headers=headers) as again:  # Telegram retries
            assert again.status == 200
        assert world.tg.after_confirm is not None
        await asyncio.wait_for(world.tg.after_confirm(update), 30)
    said = world.tg.texts(bob.id)
    assert len(said) == 1 and "卡回收助手" in said[0]


async def test_a_button_press_delivered_again_after_a_restart_loses_its_keyboard(
    world: World,
) -> None:
    carol = User(2003)
    async with working(world):
        start = world.tg.text_update(carol, "/start")
        world.tg.push(start)
        await world.tg.handled(start)
        press = world.tg.press(carol, "menu.sell")
        # What Telegram delivers again is the press as it was: on a message with its keyboard.
        again: dict[str, Any] = {**copy.deepcopy(press), "update_id": world.tg.next_update_id()}
        # The press takes effect, then the process dies before removing the keyboard; after
        # the restart Telegram delivers the press again.
        assert world.h.app is not None
        inbound_count = len(world.tg.calls)
        world.tg.push(press)
        await world.tg.handled(press)
        mark = len(world.tg.calls)
        world.tg.push(again)
        await world.tg.handled(again)
    message_id = press["callback_query"]["message"]["message_id"]
    later = world.tg.calls[mark:]
    assert world.tg.texts(carol.id, mark) == []  # nothing happens twice…
    assert any(c.method == "answercallbackquery" for c in later)  # …the press is answered…
    assert any(  # …and its keyboard taken away
        c.method == "editmessagereplymarkup" and c.params.get("message_id") == message_id
        for c in later
    )
    assert inbound_count < mark
