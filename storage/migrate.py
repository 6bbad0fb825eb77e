"""Schema migrations, run from code: ``upgrade(url)`` brings a database to the newest revision.

``cardbot db upgrade`` calls ``upgrade``; tests call ``upgrade_async`` with their own engine.

Some revisions seal data that an older version kept in plaintext (0009: real names), which
needs the data key. The caller hands over a ``vault`` — a :class:`core.ports.Vault`, or a
function returning one, called only when there is something to seal, so that upgrading an
empty database or a schema-only test needs no key. A revision that must seal rows and was
given no vault stops with :class:`MigrationNeedsKey` and changes nothing.
New revisions: ``alembic_command.revision(alembic_config(url), message=..., autogenerate=True)``
against an up-to-date database, then read and edit the generated file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from alembic import command as alembic_command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from core.ports import Vault
from storage.db import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

VaultSource = Vault | Callable[[], Vault]


class MigrationNeedsKey(RuntimeError):
    """A revision must seal existing plaintext and was given no data key."""


def vault_for_migration(config: Config) -> Vault:
    """The vault a revision seals with (called by revisions, only when rows need it)."""
    source = config.attributes.get("vault")
    if source is None:
        raise MigrationNeedsKey(
            "this upgrade encrypts data already stored (real names) and needs the data key:"
            " run it with the key the bots use (CARDBOT_DATA_KEY or the key file)"
        )
    vault: Vault = source() if callable(source) else source
    return vault


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


def _upgrade_on(connection: Connection, revision: str, vault: VaultSource | None = None) -> bool:
    """Upgrade; whether a revision asks for the SQLite file to be scrubbed after the commit."""
    config = alembic_config()
    config.attributes["connection"] = connection
    config.attributes["vault"] = vault
    alembic_command.upgrade(config, revision)
    return bool(config.attributes.get("scrub"))


def _scrub_sqlite(connection: Connection) -> None:
    """Rewrite the SQLite file and empty its WAL, so no freed page or old frame keeps what a
    revision just sealed (VACUUM runs outside any transaction, on the driver's connection)."""
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute("VACUUM")
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        cursor.close()


def _downgrade_on(connection: Connection, revision: str, vault: VaultSource | None = None) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    config.attributes["vault"] = vault
    alembic_command.downgrade(config, revision)


def _current_on(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade_async(
    target: str | AsyncEngine, revision: str = "head", *, vault: VaultSource | None = None
) -> None:
    """Upgrade the database at ``target`` (a URL, or an engine the caller keeps owning) to
    ``revision``, in one transaction; ``vault`` seals what a revision must encrypt."""
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        async with engine.begin() as connection:
            scrub = await connection.run_sync(_upgrade_on, revision, vault)
        if scrub and engine.dialect.name == "sqlite":
            async with engine.connect() as connection:
                await connection.run_sync(_scrub_sqlite)
    finally:
        if isinstance(target, str):
            await engine.dispose()


async def downgrade_async(
    target: str | AsyncEngine, revision: str, *, vault: VaultSource | None = None
) -> None:
    """Downgrade the database at ``target`` to ``revision`` (``"base"``: drop everything);
    ``vault`` opens what a revision must give back in plaintext."""
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_downgrade_on, revision, vault)
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


def upgrade(url: str, *, vault: VaultSource | None = None) -> None:
    """Upgrade the database at ``url`` to the newest revision (for ``cardbot db upgrade``).
    Creates the directory of a SQLite file. Call it outside a running event loop."""
    asyncio.run(upgrade_async(url, vault=vault))
