"""Attack tests: each file repeats an attack from issue 12 and checks that it gets nowhere.

``database_url`` (SQLite, and PostgreSQL when ``CARDBOT_TEST_DATABASE_URL`` is set) comes from
the end-to-end fixtures. :class:`WeChatBot` is cardbot's WeChat channel built in this process
exactly as ``cardbot run wechat`` builds it (``build_app`` + ``bot.wechat.build_runner``,
served by the runtime's HTTP server), but on a :class:`~tests.fakes.FakeClock`, so that a push
signed a year ago or five minutes ago is a matter of arithmetic, not of waiting.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import App, build_app
from bot.http import HttpServer
from bot.runtime import RunOptions
from bot.settings import Settings
from bot.telegram import TelegramRunner
from bot.telegram import build_runner as telegram_build_runner
from bot.wechat import WeChatRunner, build_runner
from tests.e2e.conftest import database_url  # noqa: F401 - a fixture, used by the tests here
from tests.e2e.telegram_harness import watch_queue
from tests.fakes import FakeClock
from tests.telegram_api import FakeTelegram
from tests.wechat_peer import (
    ACCOUNT,
    AES_KEY,
    APP_ID,
    APP_SECRET,
    TOKEN,
    WeChatApiPeer,
    WeChatPusher,
)

ADMIN = "o_admin_openid_0000000000001"


class WeChatBot:
    """The WeChat channel in this process, on 127.0.0.1, with an injected clock."""

    def __init__(self, tmp_path: Path, url: str, **settings: Any) -> None:
        self.clock = FakeClock(datetime(2026, 11, 22, 6, 0, tzinfo=UTC))
        self.tmp_path = tmp_path
        self.database_url = url
        self.overrides = settings
        self.peer = WeChatApiPeer()
        self.session = aiohttp.ClientSession()
        self.app: App | None = None
        self.runner: WeChatRunner | None = None
        self.http: HttpServer | None = None
        self.url = ""

    def settings(self) -> Settings:
        values: dict[str, Any] = {
            "var_dir": self.tmp_path / "var",
            "database_url": self.database_url,
            "data_key": None,
            "data_key_file": self.tmp_path / "data.key",
            "redis_url": None,
            "staff": "",
            "admins": f"wechat:{ADMIN}",
            "wechat_token": TOKEN,
            "wechat_app_id": APP_ID,
            "wechat_app_secret": APP_SECRET,
            "wechat_account_id": ACCOUNT,
            "wechat_aes_key": AES_KEY,
            "wechat_mode": "safe",
            "wechat_api_base": self.peer.base,
        }
        values.update(self.overrides)
        return Settings(**values)

    async def start(self) -> None:
        await self.peer.start()
        self.app = await build_app(self.settings(), clock=self.clock, migrate=True)
        self.runner = await build_runner(self.app, RunOptions())
        self.http = HttpServer(self.runner.routes())
        port = await self.http.start("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{port}/wechat"

    def pusher(self, mode: str = "safe") -> WeChatPusher:
        """WeChat pushing now, by the bot's clock."""
        return WeChatPusher(self.session, self.url, mode, now=lambda: self.clock.now().timestamp())

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.runner is not None:
            await self.runner.aclose()
        if self.app is not None:
            await self.app.close()
        await self.session.close()
        await self.peer.close()


StartBot = Callable[..., Awaitable[WeChatBot]]


@pytest.fixture
async def wechat_bot(
    tmp_path: Path,
    database_url: str,  # noqa: F811 - the fixture imported above
) -> AsyncIterator[StartBot]:
    """``await wechat_bot(**settings)``: a started :class:`WeChatBot` (closed after the test)."""
    started: list[WeChatBot] = []

    async def start(**settings: Any) -> WeChatBot:
        bot = WeChatBot(tmp_path / f"bot{len(started)}", database_url, **settings)
        started.append(bot)
        await bot.start()
        return bot

    try:
        yield start
    finally:
        for bot in started:
            await bot.close()


class TelegramBot:
    """The Telegram channel in this process in webhook mode, built as ``cardbot run telegram
    --webhook URL`` builds it, served on 127.0.0.1, talking to a fake Bot API; the test posts
    updates to the webhook itself (``post``)."""

    SECRET = "s3cret_for-the-webhook"

    def __init__(self, tmp_path: Path, url: str, **settings: Any) -> None:
        self.clock = FakeClock(datetime(2026, 11, 22, 6, 0, tzinfo=UTC))
        self.tmp_path = tmp_path
        self.database_url = url
        self.overrides = settings
        self.tg = FakeTelegram()
        self.session = aiohttp.ClientSession()
        self.app: App | None = None
        self.runner: TelegramRunner | None = None
        self._stop = asyncio.Event()
        self._working: asyncio.Task[None] | None = None
        self.http: HttpServer | None = None
        self.url = ""

    async def start(self) -> None:
        await self.tg.start()
        settings = Settings(
            var_dir=self.tmp_path / "var",
            database_url=self.database_url,
            data_key=None,
            data_key_file=self.tmp_path / "data.key",
            redis_url=None,
            staff="",
            admins="",
            telegram_bot_token=self.tg.token,
            telegram_api_base=self.tg.base_url,
            telegram_webhook_secret=self.SECRET,
            **self.overrides,
        )
        self.app = await build_app(settings, clock=self.clock, migrate=True)
        self.runner = await telegram_build_runner(
            self.app, RunOptions(webhook="https://bot.example/tg")
        )
        # The webhook only queues an update; the runner's inbound worker handles it.
        watch_queue(self.tg, self.database_url)
        self._working = asyncio.create_task(self.runner.worker.serve(self._stop))
        self.http = HttpServer(self.runner.routes())
        port = await self.http.start("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{port}/tg"

    async def post(self, body: bytes | dict[str, Any]) -> tuple[int, str]:
        """POST to the webhook as Telegram does (with the secret): (status, text); a queued
        update is waited for until it is handled."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        async with self.session.post(
            self.url,
            data=data,
            headers={"X-Telegram-Bot-Api-Secret-Token": self.SECRET, **JSON},
        ) as response:
            answer = response.status, await response.text()
        if answer[0] == 200 and isinstance(body, dict) and self.tg.after_confirm is not None:
            await asyncio.wait_for(self.tg.after_confirm(body), 30)
        return answer

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        self._stop.set()
        if self._working is not None:
            await self._working
        if self.runner is not None:
            await self.runner.aclose()
        if self.app is not None:
            await self.app.close()
        await self.session.close()
        await self.tg.close()


JSON = {"Content-Type": "application/json"}
StartTelegram = Callable[..., Awaitable[TelegramBot]]


@pytest.fixture
async def telegram_bot(
    tmp_path: Path,
    database_url: str,  # noqa: F811 - the fixture imported above
) -> AsyncIterator[StartTelegram]:
    """``await telegram_bot(**settings)``: a started :class:`TelegramBot` (closed after)."""
    started: list[TelegramBot] = []

    async def start(**settings: Any) -> TelegramBot:
        bot = TelegramBot(tmp_path / f"tg{len(started)}", database_url, **settings)
        started.append(bot)
        await bot.start()
        return bot

    try:
        yield start
    finally:
        for bot in started:
            await bot.close()
