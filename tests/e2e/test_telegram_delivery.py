"""The Telegram channel in one process against the Bot API test server: what storage trouble does
to an update (issue 12, item 8) and what a button press delivered again after a restart gets
(item 11) — on SQLite and PostgreSQL."""

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

from bot.runtime import RunOptions
from bot.telegram import SECRET_HEADER, TelegramRunner, build_runner
from handlers.engine import Conversation
from tests.e2e.conftest import Harness
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
    runner.redeliver_pause = 0.01
    try:
        yield World(h, tg, runner)
    finally:
        await runner.aclose()
        await h.close()
        await tg.close()


@contextlib.asynccontextmanager
async def polling(w: World) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(w.runner.poll(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_polling_leaves_an_update_unconfirmed_while_storage_fails_then_handles_it(
    world: World,
) -> None:
    alice = User(2001)
    world.fail_next_commits(1)
    update = world.tg.text_update(alice, "/start")
    async with polling(world):
        world.tg.push(update)
        await world.tg.handled(update)
    assert world.runner.redeliveries == 1  # the first try kept nothing and confirmed nothing
    offsets = [
        int(c.params.get("offset") or 0) for c in world.tg.calls if c.method == "getupdates"
    ]
    confirmed = update["update_id"] + 1
    # Fetched twice without confirming (no offset), then confirmed once it was handled.
    assert offsets.index(confirmed) >= 2 and set(offsets[: offsets.index(confirmed)]) == {0}
    said = world.tg.texts(alice.id)
    assert len(said) == 1 and "卡回收助手" in said[0]  # answered once, after the redelivery


async def test_the_webhook_answers_503_while_storage_fails_and_the_retry_is_handled(
    world: World,
) -> None:
    bob = User(2002)
    world.fail_next_commits(1)
    update = world.tg.text_update(bob, "/start")
    app = web.Application()
    app.add_routes(world.runner.routes())
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        url = server.make_url("/hook")
        headers = {SECRET_HEADER: SECRET}
        async with session.post(url, json=update, headers=headers) as first:
            assert first.status == 503
        assert world.tg.texts(bob.id) == []
        async with session.post(url, json=update, headers=headers) as again:  # Telegram retries
            assert again.status == 200
    said = world.tg.texts(bob.id)
    assert len(said) == 1 and "卡回收助手" in said[0]


async def test_a_button_press_delivered_again_after_a_restart_loses_its_keyboard(
    world: World,
) -> None:
    carol = User(2003)
    async with polling(world):
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
