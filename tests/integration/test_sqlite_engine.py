"""How the SQLite engine is set up: WAL, foreign keys, busy timeout, and units of work that
take the write lock at their first statement (so read-then-write cannot interleave)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from core.errors import ConcurrentUpdate
from core.model import ConversationState
from storage.db import SqlAlchemyUnitOfWorkFactory, make_engine, sqlite_file

T0 = datetime(2025, 3, 1, tzinfo=UTC)
sqlite_only = pytest.mark.parametrize("uow_factory", ["sqlite"], indirect=True)


@sqlite_only
async def test_connections_use_wal_foreign_keys_and_a_busy_timeout(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    async with uow_factory.engine.connect() as connection:
        pragmas = {
            name: (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar_one()
            for name in ("journal_mode", "foreign_keys", "busy_timeout")
        }
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000}


@sqlite_only
async def test_foreign_keys_are_enforced(uow_factory: SqlAlchemyUnitOfWorkFactory) -> None:
    async with uow_factory.engine.connect() as connection:
        with pytest.raises(IntegrityError):
            await connection.exec_driver_sql(
                "INSERT INTO channel_identities (channel, external_id, user_id, chat_id,"
                " reachable, created_at) VALUES ('telegram', '1', 999, '1', 1, '2025-01-01')"
            )


@sqlite_only
async def test_a_reading_unit_of_work_already_holds_the_write_lock(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    async def writer() -> None:
        async with uow_factory() as uow:
            await uow.conversations.save(ConversationState("telegram", "1", "start"))
            await uow.commit()

    async with uow_factory() as reader:
        assert await reader.conversations.get("telegram", "1") is None
        blocked = asyncio.create_task(writer())
        await asyncio.sleep(0.2)
        # Under a deferred BEGIN the writer would be done by now, and a later write by the
        # reader would fail with SQLITE_BUSY_SNAPSHOT instead of seeing a consistent state.
        assert not blocked.done()
        await reader.conversations.save(ConversationState("telegram", "1", "reader"))
        await reader.commit()
    with pytest.raises(ConcurrentUpdate):
        await blocked


async def test_make_engine_creates_the_directory_of_the_file(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/a/b/cardbot.db"
    engine = make_engine(url)
    try:
        assert (tmp_path / "a" / "b").is_dir()
        async with engine.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        assert (tmp_path / "a" / "b" / "cardbot.db").exists()
    finally:
        await engine.dispose()


def test_sqlite_file_names_the_file_behind_a_url() -> None:
    assert sqlite_file("sqlite+aiosqlite:///./var/cardbot.db") == Path("./var/cardbot.db")
    assert sqlite_file("sqlite+aiosqlite:////srv/bot.db") == Path("/srv/bot.db")
    assert sqlite_file("sqlite+aiosqlite://") is None
    assert sqlite_file("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_file("postgresql+asyncpg://u@h/db") is None
