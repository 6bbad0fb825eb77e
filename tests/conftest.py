"""Shared fixtures.

Storage (any test that needs a real database):

- ``uow_factory`` — a ``SqlAlchemyUnitOfWorkFactory`` over an empty database with every table
  (no rows; ids start at 1). It is parametrised over the backends, so a test that asks for it
  runs once per backend: ``[sqlite]`` always (a fresh temp file in WAL mode), ``[postgres]``
  when ``CARDBOT_TEST_DATABASE_URL`` is set (tables live in a schema private to this pytest
  run, emptied before each test, dropped at the end), skipped otherwise. Use it as the app does:
  ``async with uow_factory() as uow: ...; await uow.commit()``; ``uow_factory.engine`` is there
  for raw checks. On SQLite a unit of work holds the write lock from its first statement, so
  never keep two open at once in one task (the second waits for the first, then fails).
  SQLite only: ``@pytest.mark.parametrize("uow_factory", ["sqlite"], indirect=True)``.
- ``database`` — the same backends with *no* tables (``.engine``, ``.url``, ``.backend``,
  ``.sqlite_path``), for migration tests; ``indirect`` parametrisation works the same way.

Hypothesis runs one of two profiles, chosen by ``CARDBOT_HYPOTHESIS_PROFILE``:

- ``replay`` (the default: ``make test``, CI, a plain ``pytest``) is derandomized: every run
  tries the same examples, so the suite goes red only for a change that broke something. It
  first replays what the example database under ``.hypothesis/`` holds (read-only: it never
  adds to it), so a failure ``make explore`` found keeps failing here until it is fixed.
- ``explore`` (``make explore``) searches: fresh random examples, more of them, and whatever
  fails is saved to that database. Each failure it finds becomes an ``@example`` on its test.

Neither has a deadline or the too-slow health check: a busy machine is not a failing test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase, ReadOnlyDatabase
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from storage.db import SqlAlchemyUnitOfWorkFactory, make_engine
from storage.tables import metadata
from tests.telegram_api import FakeTelegram

TEST_DATABASE_URL_ENV = "CARDBOT_TEST_DATABASE_URL"

HYPOTHESIS_PROFILE_ENV = "CARDBOT_HYPOTHESIS_PROFILE"
EXAMPLE_DATABASE = Path(__file__).resolve().parents[1] / ".hypothesis" / "examples"
_UNTIMED = settings(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
# derandomize=True alone would switch the database off; set after it, the database is replayed.
settings.register_profile(
    "replay",
    settings(
        settings(_UNTIMED, derandomize=True),
        database=ReadOnlyDatabase(DirectoryBasedExampleDatabase(EXAMPLE_DATABASE)),
    ),
)
settings.register_profile(
    "explore",
    _UNTIMED,
    derandomize=False,
    max_examples=2_000,
    database=DirectoryBasedExampleDatabase(EXAMPLE_DATABASE),
)
settings.load_profile(os.environ.get(HYPOTHESIS_PROFILE_ENV, "replay"))

STORAGE_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]

T = TypeVar("T")


def _postgres_url() -> str:
    url = os.environ.get(TEST_DATABASE_URL_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need {TEST_DATABASE_URL_ENV}")
    return url


def _search_path(schema: str) -> dict[str, Any]:
    return {"connect_args": {"server_settings": {"search_path": schema}}}


def _run_in_thread(main: Callable[[], Awaitable[T]]) -> T:
    """Run async setup from a session-scoped (sync) fixture without touching the test's loop."""

    async def runner() -> T:
        return await main()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, runner()).result()


async def _create_tables(url: str, **engine_kwargs: Any) -> None:
    engine = make_engine(url, poolclass=NullPool, **engine_kwargs)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
    finally:
        await engine.dispose()


async def _execute(url: str, *statements: str) -> None:
    engine = make_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.exec_driver_sql(statement)
    finally:
        await engine.dispose()


def _empty_postgres_tables(connection: Connection) -> None:
    # DELETE is much cheaper than TRUNCATE on tiny tables; then restart every id sequence.
    for table in reversed(metadata.sorted_tables):
        connection.execute(table.delete())
    connection.execute(
        text(
            "SELECT setval(s.seq::regclass, 1, false) FROM ("
            # Schema-qualified: the planner may call this on other schemas' rows before the
            # WHERE drops them, and a table only another schema has must not fail it.
            "  SELECT pg_get_serial_sequence("
            "    quote_ident(c.table_schema) || '.' || quote_ident(c.table_name), c.column_name"
            "  ) AS seq"
            "  FROM information_schema.columns c"
            "  WHERE c.table_schema = current_schema() AND c.column_default LIKE 'nextval(%'"
            ") s WHERE s.seq IS NOT NULL"
        )
    )


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with every table, copied for each test (faster than creating tables)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "cardbot.db"
    _run_in_thread(lambda: _create_tables(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def postgres_schema() -> Iterator[tuple[str, str]]:
    """(server URL, schema) — a schema with every table, private to this pytest run."""
    url = _postgres_url()
    schema = f"cardbot_test_{uuid.uuid4().hex[:16]}"
    _run_in_thread(lambda: _execute(url, f'CREATE SCHEMA "{schema}"'))
    try:
        _run_in_thread(lambda: _create_tables(url, **_search_path(schema)))
        yield url, schema
    finally:
        _run_in_thread(lambda: _execute(url, f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=STORAGE_BACKENDS)
async def uow_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SqlAlchemyUnitOfWorkFactory]:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "cardbot.db"
        shutil.copyfile(template, path)
        engine = make_engine(f"sqlite+aiosqlite:///{path}")
    else:
        url, schema = request.getfixturevalue("postgres_schema")
        engine = make_engine(url, **_search_path(schema))
        async with engine.begin() as connection:
            await connection.run_sync(_empty_postgres_tables)
    try:
        yield SqlAlchemyUnitOfWorkFactory(engine)
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class Database:
    """An empty database (no tables) for one test."""

    backend: str  # "sqlite" | "postgres"
    url: str  # for PostgreSQL, the server's URL: the test's schema is set on ``engine`` only
    engine: AsyncEngine
    sqlite_path: Path | None = None


@pytest.fixture(params=STORAGE_BACKENDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        path = tmp_path / "cardbot.db"
        url = f"sqlite+aiosqlite:///{path}"
        engine = make_engine(url)
        try:
            yield Database("sqlite", url, engine, path)
        finally:
            await engine.dispose()
        return

    url = _postgres_url()
    schema = f"cardbot_test_{uuid.uuid4().hex[:16]}"
    await _execute(url, f'CREATE SCHEMA "{schema}"')
    try:
        engine = make_engine(url, **_search_path(schema))
        try:
            yield Database("postgres", url, engine)
        finally:
            await engine.dispose()
    finally:
        await _execute(url, f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    """A Bot-API-compatible server on 127.0.0.1 (tests/telegram_api.py), closed after the test."""
    server = FakeTelegram()
    await server.start()
    try:
        yield server
    finally:
        await server.close()
