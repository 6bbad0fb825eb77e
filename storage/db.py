"""Engines and sessions. Nothing is created at import time: the caller (bot wiring, tests) builds
an engine from a URL and owns it (``await engine.dispose()`` when done).

SQLite runs in WAL mode with foreign keys on and a 5 s busy timeout, and every transaction starts
with ``BEGIN IMMEDIATE``: a unit of work holds the database's write lock from its first statement,
so read-then-write sequences (optimistic locking, the audit hash chain) cannot interleave with
another process's writes. The flip side: on SQLite, do not hold two units of work open at once in
one task — the second waits for the first (up to the busy timeout) and then fails as locked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy import event, inspect
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from storage.uow import SqlAlchemyUnitOfWork

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/cardbot.db"
SQLITE_BUSY_TIMEOUT_MS = 5_000


ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
PROBE_TIMEOUT_SECONDS = 15.0
URL_FORMS = "sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST:PORT/NAME"


class DatabaseUnavailable(RuntimeError):
    """The database cannot be used. The message is one line for an operator, never with a
    password in it.

    DatabaseUnavailable
    ├── DatabaseUrlError      the URL does not parse, or names a backend or driver cardbot
    │                         does not run on
    ├── DatabaseMissing       no such database (a SQLite file that is not there, a PostgreSQL
    │                         database that does not exist, a database without cardbot's tables)
    └── DatabaseUnreachable   the server does not answer or refuses the connection
    """


class DatabaseUrlError(DatabaseUnavailable):
    """The database URL cannot be used."""


class DatabaseMissing(DatabaseUnavailable):
    """The database does not exist (or holds no cardbot tables)."""


class DatabaseUnreachable(DatabaseUnavailable):
    """The database server cannot be reached."""


def parse_database_url(url: str | URL) -> URL:
    """The parsed URL of a database cardbot runs on (an async driver it ships with); raises
    DatabaseUrlError, whose message never repeats the URL (it may hold a password)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise DatabaseUrlError(f"the database URL is malformed; expected {URL_FORMS}") from None
    backend, _, driver = parsed.drivername.partition("+")  # without loading any dialect
    if ASYNC_DRIVERS.get(backend) != driver:
        raise DatabaseUrlError(
            f"the database URL names {parsed.drivername!r}, which cardbot does not run on; "
            f"expected {URL_FORMS}"
        )
    return parsed


def describe_database(url: str | URL) -> str:
    """The database for a message: the SQLite file, or the URL with its password hidden."""
    path = sqlite_file(url)
    if path is not None:
        return str(path)
    return make_url(url).render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


def _has_cardbot_tables(connection: Connection) -> bool:
    return "alembic_version" in inspect(connection).get_table_names()


async def probe_database(url: str | URL, *, must_exist: bool) -> None:
    """Check, before anything else touches it, that the database at ``url`` can be used: the
    URL parses and names a supported driver; the server answers; and with ``must_exist``, the
    database is there already and holds cardbot's tables — a mistyped SQLite path must not
    silently become a new, empty database. Raises a DatabaseUnavailable with a one-line
    message; creates nothing when ``must_exist`` (SQLite: not even the file)."""
    parsed = parse_database_url(url)
    where = describe_database(parsed)
    path = sqlite_file(parsed)
    if must_exist and path is not None and not path.is_file():
        raise DatabaseMissing(
            f"no database at {where}: check the path, or create it with `cardbot db upgrade`"
        )
    if not must_exist and path is not None:
        return  # the file (and its directory) is created on first use
    engine = make_engine(parsed, poolclass=NullPool)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            async with engine.connect() as connection:
                has_tables = await connection.run_sync(_has_cardbot_tables)
    except TimeoutError:
        raise DatabaseUnreachable(
            f"cannot reach the database at {where}: no answer in {PROBE_TIMEOUT_SECONDS:g} s"
        ) from None
    except (DBAPIError, OSError) as exc:
        if _is_missing_database(exc):
            raise DatabaseMissing(f"no database at {where}: {_first_line(exc)}") from None
        raise DatabaseUnreachable(
            f"cannot reach the database at {where}: {_first_line(exc)}"
        ) from None
    finally:
        await engine.dispose()
    if must_exist and not has_tables:
        raise DatabaseMissing(
            f"the database at {where} holds no cardbot tables: check the URL, or create them "
            "with `cardbot db upgrade`"
        )


def _is_missing_database(exc: BaseException) -> bool:
    """PostgreSQL's 'database does not exist' (SQLSTATE 3D000)."""
    cause = getattr(exc, "orig", None) or exc
    sqlstate = getattr(cause, "sqlstate", None) or getattr(
        getattr(cause, "__cause__", None), "sqlstate", None
    )
    return sqlstate == "3D000"


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
    keyword arguments go to ``create_async_engine`` (e.g. ``connect_args``). Raises
    DatabaseUrlError for a URL cardbot cannot run on."""
    url = parse_database_url(url)
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


class OpenUnits:
    """Which units of work of one factory are open, each by a ticket in the order they began.

    ``mark()`` names the present moment; ``ended_before(mark)`` says whether every unit of work
    that began before it has ended. Key rotation uses it (``storage.keyring``): a process that
    switched to a new data key reports the switch only once no transaction that might still
    write a value sealed under the old key is open."""

    def __init__(self) -> None:
        self._next = 0
        self._open: set[int] = set()

    def enter(self) -> int:
        ticket, self._next = self._next, self._next + 1
        self._open.add(ticket)
        return ticket

    def leave(self, ticket: int) -> None:
        self._open.discard(ticket)

    def mark(self) -> int:
        """Units of work that begin from now on get this ticket or a later one."""
        return self._next

    def ended_before(self, mark: int) -> bool:
        """Whether every unit of work that began before ``mark`` has ended."""
        return all(ticket >= mark for ticket in self._open)


class _TrackedUnitOfWork(SqlAlchemyUnitOfWork):
    """A unit of work that checks in and out with its factory's ``OpenUnits``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], open_units: OpenUnits) -> None:
        super().__init__(sessions)
        self._open_units = open_units
        self._ticket: int | None = None

    async def __aenter__(self) -> Self:
        self._ticket = self._open_units.enter()
        try:
            return await super().__aenter__()
        except BaseException:
            self._open_units.leave(self._ticket)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc, tb)
        finally:
            if self._ticket is not None:
                self._open_units.leave(self._ticket)
                self._ticket = None


class SqlAlchemyUnitOfWorkFactory:
    """Makes a fresh ``SqlAlchemyUnitOfWork`` per call, all sharing one engine's pool;
    ``open_units`` tracks which of them are open."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = session_factory(engine)
        self.open_units = OpenUnits()

    @classmethod
    def from_url(cls, url: str | URL, **engine_kwargs: Any) -> SqlAlchemyUnitOfWorkFactory:
        """A factory over a new engine for ``url``; call ``dispose`` when done."""
        return cls(make_engine(url, **engine_kwargs))

    def __call__(self) -> SqlAlchemyUnitOfWork:
        return _TrackedUnitOfWork(self._sessions, self.open_units)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is the database's or its connection's (down, unreachable, locked,
    restarted, out of connections; or this process could not confirm its data key with it
    lately) rather than the program's: then nothing was kept and the work may be done again.
    Integrity and programming errors are not transient."""
    from sqlalchemy import exc as sa_exc

    from storage.keyring import KeyGenerationStale

    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, KeyGenerationStale)):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.TimeoutError):  # no connection free in the pool in time
        return True
    return isinstance(exc, (OSError, TimeoutError))
