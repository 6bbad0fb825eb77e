"""Engines and sessions. Nothing is created at import time: the caller (bot wiring, tests) builds
an engine from a URL and owns it (``await engine.dispose()`` when done).

SQLite runs in WAL mode with foreign keys on and a 5 s busy timeout, and every transaction starts
with ``BEGIN IMMEDIATE``: a unit of work holds the database's write lock from its first statement,
so read-then-write sequences (optimistic locking, the audit hash chain) cannot interleave with
another process's writes. The flip side: on SQLite, do not hold two units of work open at once in
one task — the second waits for the first (up to the busy timeout) and then fails as locked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from storage.uow import SqlAlchemyUnitOfWork

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/cardbot.db"
SQLITE_BUSY_TIMEOUT_MS = 5_000


def default_database_url() -> str:
    """The zero-install database: a SQLite file under ./var/."""
    return DEFAULT_DATABASE_URL


def is_sqlite(url: str | URL) -> bool:
    """Whether a URL points at SQLite (any driver)."""
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str | URL) -> Path | None:
    """The file behind a SQLite URL, or None for in-memory databases and other backends."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        if "mode=memory" in database:
            return None
        database = database.removeprefix("file:").split("?", 1)[0]
    return Path(database)


def make_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://`` URLs; extra
    keyword arguments go to ``create_async_engine`` (e.g. ``connect_args``)."""
    if is_sqlite(url):
        path = sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so that BEGIN is ours (see do_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Take the write lock up front: a deferred transaction that reads and then writes fails
        # with SQLITE_BUSY_SNAPSHOT (no waiting) when another process committed in between.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for units of work; objects stay readable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


class SqlAlchemyUnitOfWorkFactory:
    """Makes a fresh ``SqlAlchemyUnitOfWork`` per call, all sharing one engine's pool."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = session_factory(engine)

    @classmethod
    def from_url(cls, url: str | URL, **engine_kwargs: Any) -> SqlAlchemyUnitOfWorkFactory:
        """A factory over a new engine for ``url``; call ``dispose`` when done."""
        return cls(make_engine(url, **engine_kwargs))

    def __call__(self) -> SqlAlchemyUnitOfWork:
        return SqlAlchemyUnitOfWork(self._sessions)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is the database's or its connection's (down, unreachable, locked,
    restarted, out of connections) rather than the program's: then nothing was kept and the
    work may be done again. Integrity and programming errors are not transient."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.TimeoutError):  # no connection free in the pool in time
        return True
    return isinstance(exc, (OSError, TimeoutError))
