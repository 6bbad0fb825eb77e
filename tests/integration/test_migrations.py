"""Migrations build exactly the schema that storage/tables.py describes, on every backend."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from storage.db import DEFAULT_DATABASE_URL
from storage.migrate import (
    current_revision_async,
    downgrade_async,
    head_revision,
    upgrade,
    upgrade_async,
)
from storage.tables import metadata
from tests.conftest import Database


def schema_differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_migrations_build_exactly_the_tables_schema(database: Database) -> None:
    await upgrade_async(database.engine)
    async with database.engine.connect() as connection:
        assert await connection.run_sync(schema_differences) == []
    assert await current_revision_async(database.engine) == head_revision()


async def test_upgrading_twice_changes_nothing_and_downgrade_removes_everything(
    database: Database,
) -> None:
    await upgrade_async(database.engine)
    await upgrade_async(database.engine)
    async with database.engine.connect() as connection:
        assert await connection.run_sync(table_names) >= set(metadata.tables)
    await downgrade_async(database.engine, "base")
    async with database.engine.connect() as connection:
        assert await connection.run_sync(table_names) == {"alembic_version"}
    assert await current_revision_async(database.engine) is None
    await upgrade_async(database.engine)
    assert await current_revision_async(database.engine) == head_revision()


def stored_revision(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    connection.close()
    return str(revision)


def test_upgrade_creates_the_default_sqlite_file_under_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    upgrade(DEFAULT_DATABASE_URL)
    upgrade(DEFAULT_DATABASE_URL)
    assert stored_revision(tmp_path / "var" / "cardbot.db") == head_revision()


def test_upgrade_creates_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "bot.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    assert stored_revision(path) == head_revision()
