"""Runs ``cardbot run telegram`` as its own process against the fake Bot API
(``tests/telegram_api.py``) and plays Telegram users at it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiogram.types import Update
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from bot.telegram.intake import update_key
from core.model import Order
from storage.db import SqlAlchemyUnitOfWorkFactory
from tests.telegram_api import FakeTelegram, User

ROOT = Path(__file__).resolve().parents[2]
CARDBOT = [sys.executable, "-m", "bot.cli"]
WEBHOOK_SECRET = "s3cret_for-the-webhook"


def watch_queue(tg: FakeTelegram, database_url: str) -> None:
    """Make ``tg.handled`` (and so :class:`Player`) wait until the bot has *handled* an update,
    not only confirmed it: the bot confirms an update once it is in its inbound queue and
    deletes it from there once handled (bot/inflow.py)."""

    async def settled(update: dict[str, Any]) -> None:
        try:
            key = update_key(Update.model_validate(update))
        except ValueError:
            return  # malformed: the bot skips it without queueing
        engine = create_async_engine(database_url, poolclass=NullPool)
        try:
            while True:
                async with engine.connect() as conn:
                    queued = (
                        await conn.execute(
                            text(
                                "SELECT 1 FROM inbound_queue"
                                " WHERE channel = 'telegram' AND update_key = :key"
                            ),
                            {"key": key},
                        )
                    ).first()
                if queued is None:
                    return
                await asyncio.sleep(0.02)
        finally:
            await engine.dispose()

    tg.after_confirm = settled


class BotProcess:
    """One ``cardbot run telegram`` process; can be stopped, killed and started again."""

    def __init__(self, tmp_path: Path, database_url: str, api_base: str, **env: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("CARDBOT_", "TELEGRAM_"))
        }
        self.env.update(
            CARDBOT_VAR_DIR=str(tmp_path / "var"),
            CARDBOT_DATABASE_URL=database_url,
            CARDBOT_DATA_KEY_FILE=str(tmp_path / "data.key"),
            CARDBOT_CONFIG=str(tmp_path / "no-cardbot.toml"),
            CARDBOT_LOG_LEVEL="INFO",
            TELEGRAM_BOT_TOKEN="123456789:TEST-token_for-the-fake-bot-api",
            TELEGRAM_API_BASE=api_base,
            PYTHONUNBUFFERED="1",
        )
        self.env.update(env)
        self.proc: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.starts = 0
        self._migrated = False

    @property
    def log_file(self) -> Path:
        return self.tmp_path / "var" / "cardbot.log"

    def output(self) -> str:
        """What every run printed (for assertion messages)."""
        parts = []
        for n in range(self.starts):
            path = self.tmp_path / f"bot-{n}.err"
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    async def start(self, *args: str) -> None:
        if not self._migrated and self.database_url.startswith("postgresql"):
            # A shared server is migrated by an operator, not by the bot process.
            done = await asyncio.create_subprocess_exec(
                *CARDBOT,
                "db",
                "upgrade",
                cwd=ROOT,
                env=self.env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await done.communicate()
            assert done.returncode == 0, err.decode()
        self._migrated = True
        err_path = self.tmp_path / f"bot-{self.starts}.err"
        self.starts += 1
        with err_path.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *CARDBOT,
                "run",
                "telegram",
                *args,
                cwd=ROOT,
                env=self.env,
                stdout=err,
                stderr=err,
            )

    async def stop(self, within: float = 10.0) -> int:
        """SIGTERM, as a service manager stops it; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), within)
        self.proc = None
        return code

    async def kill(self) -> None:
        """SIGKILL: a crash, nothing cleaned up."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()
        self.proc = None

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def orders(self) -> list[Order]:
        factory = SqlAlchemyUnitOfWorkFactory.from_url(self.database_url)
        try:
            async with factory() as uow:
                return list(await uow.orders.recent(limit=100))
        finally:
            await factory.dispose()

    async def reachable(self, user: User) -> bool | None:
        """Whether the user's Telegram identity is marked reachable (None: no identity)."""
        engine = create_async_engine(self.database_url)
        try:
            async with engine.connect() as conn:
                row = (
                    await conn.execute(
                        text(
                            "SELECT reachable FROM channel_identities"
                            " WHERE channel = 'telegram' AND external_id = :user"
                        ),
                        {"user": str(user.id)},
                    )
                ).first()
        finally:
            await engine.dispose()
        return None if row is None else bool(row[0])


class Player:
    """Delivers updates to the bot the way Telegram would — by polling (the bot confirms them
    with its next getUpdates) or by webhook (the POST returns once the update is queued) — and,
    with :func:`watch_queue` on, waits until they are handled."""

    def __init__(self, tg: FakeTelegram, webhook_url: str | None = None) -> None:
        self.tg = tg
        self.webhook_url = webhook_url

    async def deliver(self, *updates: dict[str, Any], secret: str = WEBHOOK_SECRET) -> list[int]:
        """Deliver updates; returns the webhook's HTTP statuses (empty when polling)."""
        if self.webhook_url is None:
            self.tg.push(*updates)
            for update in updates:
                await self.tg.handled(update)
            return []
        statuses = []
        async with aiohttp.ClientSession() as session:
            for update in updates:
                async with session.post(
                    self.webhook_url,
                    json=update,
                    headers={"X-Telegram-Bot-Api-Secret-Token": secret},
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as response:
                    statuses.append(response.status)
                if response.status == 200 and self.tg.after_confirm is not None:
                    await asyncio.wait_for(self.tg.after_confirm(update), 30)
        return statuses

    async def say(self, update: dict[str, Any]) -> list[str]:
        """Deliver one update; the texts the bot sent to that user in answer."""
        mark = len(self.tg.calls)
        await self.deliver(update)
        chat = _chat_of(update)
        if chat is None:  # an update without a chat: whatever the bot sent to anyone
            return [
                str(c.params.get("text")) for c in self.tg.sends() if c in self.tg.calls[mark:]
            ]
        return self.tg.texts(chat, mark)


def _chat_of(update: dict[str, Any]) -> int | None:
    for kind in ("message", "edited_message"):
        if kind in update:
            return int(update[kind]["chat"]["id"])
    if "callback_query" in update:
        return int(update["callback_query"]["from"]["id"])
    return None


async def wait_until_ready(tg: FakeTelegram, *, polling: bool, within: float = 120.0) -> None:
    """The bot is ready once it has registered its commands and is polling (or has set its
    webhook)."""
    method = "getupdates" if polling else "setwebhook"
    await tg.wait_for(lambda c: c.method == method, within=within)
