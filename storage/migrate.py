"""Schema migrations, run from code: ``upgrade(url)`` brings a database to the newest revision.

``cardbot db upgrade`` calls ``upgrade``; tests call ``upgrade_async`` with their own engine.
New revisions: ``alembic_command.revision(alembic_config(url), message=..., autogenerate=True)``
against an up-to-date database, then read and edit the generated file."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command as alembic_command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration for cardbot's migrations, without any ini file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.attributes["url"] = url
    return config


def head_revision() -> str | None:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade_on(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    alembic_command.upgrade(config, revision)


def _downgrade_on(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    alembic_command.downgrade(config, revision)


def _current_on(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade_async(target: str | AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database at ``target`` (a URL, or an engine the caller keeps owning) to
    ``revision``, in one transaction."""
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade_on, revision)
    finally:
        if isinstance(target, str):
            await engine.dispose()


async def downgrade_async(target: str | AsyncEngine, revision: str) -> None:
    """Downgrade the database at ``target`` to ``revision`` (``"base"``: drop everything)."""
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_downgrade_on, revision)
    finally:
        if isinstance(target, str):
            await engine.dispose()


async def current_revision_async(target: str | AsyncEngine) -> str | None:
    """The revision a database is at (None when it was never migrated)."""
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_current_on)
    finally:
        if isinstance(target, str):
            await engine.dispose()


def upgrade(url: str) -> None:
    """Upgrade the database at ``url`` to the newest revision (for ``cardbot db upgrade``).
    Creates the directory of a SQLite file. Call it outside a running event loop."""
    asyncio.run(upgrade_async(url))
