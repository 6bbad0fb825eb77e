"""Migrations build exactly the schema that storage/tables.py describes, on every backend."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from storage.db import DEFAULT_DATABASE_URL
from storage.migrate import (
    alembic_config,
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


# --------------------------------------------------------------------------------------------
# The stairway: every revision, one step at a time, up, down and up again. The revisions are
# read from the script directory, so a migration added later is on the stairway at once.


def revisions_base_to_head() -> list[Script]:
    scripts = ScriptDirectory.from_config(alembic_config())
    return list(reversed(list(scripts.walk_revisions("base", "heads"))))


def schema_snapshot(connection: Connection) -> dict[str, Any]:
    """What a revision's schema is, as the database reports it: tables, columns, keys and
    indexes (alembic's own bookkeeping table left out)."""
    inspector = inspect(connection)
    snapshot: dict[str, Any] = {}
    for table in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
        snapshot[table] = {
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
            ),
            "primary_key": sorted(inspector.get_pk_constraint(table)["constrained_columns"]),
            "foreign_keys": sorted(
                (tuple(fk["constrained_columns"]), fk["referred_table"])
                for fk in inspector.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (tuple(str(c) for c in ix["column_names"]), bool(ix["unique"]))
                for ix in inspector.get_indexes(table)
            ),
            "unique": sorted(
                tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)
            ),
            "checks": sorted(
                " ".join(str(c["sqltext"]).split()) for c in inspector.get_check_constraints(table)
            ),
        }
    return snapshot


async def snapshot_of(database: Database) -> dict[str, Any]:
    async with database.engine.connect() as connection:
        return await connection.run_sync(schema_snapshot)


def test_the_revision_history_is_one_line_from_base_to_a_single_head() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    revisions = revisions_base_to_head()

    assert len(scripts.get_heads()) == 1, f"several heads: {scripts.get_heads()} — re-chain them"
    assert revisions[0].down_revision is None
    for below, above in itertools.pairwise(revisions):
        assert above.down_revision == below.revision


async def test_stairway_each_revision_goes_up_down_and_up_again(database: Database) -> None:
    below: dict[str, Any] = await snapshot_of(database)
    for script in revisions_base_to_head():
        await upgrade_async(database.engine, script.revision)
        assert await current_revision_async(database.engine) == script.revision
        here = await snapshot_of(database)  # (a data-only revision may leave it as it was)

        await downgrade_async(database.engine, script.down_revision or "base")
        assert await current_revision_async(database.engine) == script.down_revision
        assert await snapshot_of(database) == below, (
            f"{script.revision} does not downgrade cleanly"
        )

        await upgrade_async(database.engine, script.revision)
        assert await snapshot_of(database) == here, f"{script.revision} does not upgrade again"
        below = here
