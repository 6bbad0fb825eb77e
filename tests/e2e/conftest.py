"""End-to-end harness: the real app (storage, vault, sandbox issuer and payouts, pyzbar reader)
behind the console channel, on SQLite and — when CARDBOT_TEST_DATABASE_URL is set — on a fresh
PostgreSQL database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from bot.app import App, build_app
from bot.console import ConsoleChannel, render_reply
from bot.settings import DEFAULT_CARDS, Settings
from core.messages import Inbound, Reply
from core.model import Order
from tests.fakes import FakeClock

PG_URL = os.environ.get("CARDBOT_TEST_DATABASE_URL")


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgres",
            marks=pytest.mark.skipif(not PG_URL, reason="CARDBOT_TEST_DATABASE_URL not set"),
        ),
    ]
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database for one test."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{(tmp_path / 'cardbot.db').as_posix()}"
        return
    import asyncpg

    assert PG_URL is not None
    base = make_url(PG_URL)
    name = f"cardbot_e2e_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(
        host=base.host,
        port=base.port or 5432,
        user=base.username,
        password=base.password,
        database=base.database,
    )
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


class Harness:
    """One console user talking to a real cardbot; can restart the process in between."""

    def __init__(
        self,
        tmp_path: Path,
        database_url: str,
        lang: str = "zh",
        cards: Path = DEFAULT_CARDS,
        risk_rules: Path | None = None,
        channel: str = "console",
        overrides: dict[str, Any] | None = None,
        **ports: Any,
    ) -> None:
        self.clock = FakeClock()
        self.settings = Settings(
            var_dir=tmp_path / "var",
            database_url=database_url,
            data_key=None,
            data_key_file=tmp_path / "data.key",
            sandbox_cards=cards,
            **({"risk_rules": risk_rules} if risk_rules else {}),
            **(overrides or {}),
        )
        self.channel_name = channel
        self.lang = lang
        self.user = "alice"
        self.ports = ports
        self.transcript: list[str] = []
        self.last: list[Reply] = []
        self.app: App | None = None
        self.channel: ConsoleChannel | None = None

    async def start(self) -> None:
        self.app = await build_app(self.settings, clock=self.clock, migrate=True, **self.ports)
        self.channel = ConsoleChannel(
            self.app.conversation,
            user_id=self.user,
            lang=self.lang,
            write=self.transcript.append,
            channel=self.channel_name,
        )

    async def restart(self) -> None:
        """Throw away the process state, as a crash and restart would."""
        assert self.app is not None
        await self.app.close()
        await self.start()

    async def close(self) -> None:
        if self.app is not None:
            await self.app.close()

    async def say(self, line: str) -> list[Reply]:
        assert self.channel is not None
        self.last = await self.channel.send(line)
        return self.last

    async def send(self, inbound: Inbound) -> list[Reply]:
        """Deliver a hand-made inbound message (e.g. a redelivery with the same id)."""
        assert self.app is not None
        self.last = await self.app.conversation.handle(inbound)
        return self.last

    def option_number(self, option_id: str) -> int:
        for reply in reversed(self.last):
            ids = [o.id.split(":", 1)[0] for o in reply.options]  # ids may carry object ids
            if option_id in ids:
                return ids.index(option_id) + 1
        raise AssertionError(f"{option_id!r} not offered; last: {self.text()}")

    def option_id(self, action: str) -> str:
        """The full id (with the ids it carries) of the option on screen for an action."""
        return next(o.id for r in self.last for o in r.options if o.id.split(":", 1)[0] == action)

    async def choose(self, option_id: str) -> list[Reply]:
        return await self.say(str(self.option_number(option_id)))

    def text(self, replies: list[Reply] | None = None) -> str:
        return "\n".join(render_reply(r) for r in (self.last if replies is None else replies))

    async def step(self) -> str:
        assert self.app is not None
        async with self.app.uow_factory() as uow:
            state = await uow.conversations.get(self.channel_name, self.user)
        return state.step if state else "start"

    async def orders(self) -> list[Order]:
        assert self.app is not None
        async with self.app.uow_factory() as uow:
            return list(await uow.orders.recent(limit=100))


@pytest.fixture
async def harness(tmp_path: Path, database_url: str) -> AsyncIterator[Harness]:
    h = Harness(tmp_path, database_url)
    await h.start()
    try:
        yield h
    finally:
        await h.close()
