"""Data-key generations: key rotation and pruning coordinated with every running process.

What went wrong without it: ``cardbot keys rotate`` re-encrypted every sealed value under a new
key while the bots still held only the old one (an approved order then failed to open its card
number on every retry), and ``cardbot keys prune`` removed the old key while a bot that had not
been restarted went on sealing new values with it (values nobody can open any more).

**The marker.** ``key_generations`` holds one row per announced generation; the newest row is the
marker: the key every process is to seal new values with (``primary_key_id``) and the keys
that open values at that point. ``cardbot keys rotate`` announces a generation when it adds a
key (or, with keys from the environment, when the configured primary differs from the
marker's); ``cardbot keys prune`` announces one when it has removed the old keys; the first
process to find the table empty announces generation 1 with its own key. Key ids are public
one-way names of keys (``storage.crypto.key_id``), never key material.

**The holders.** Every process that seals (each ``build_app``: the bots, the console chat, the
demo) is a :class:`CoordinatedVault`. It registers a row in ``key_holders`` — the keys it can
open, the key it seals with, the generation it has caught up with — and refreshes it every
``refresh_seconds``: one short transaction that reads the generations and the other live
holders' keys and writes the row. When a new generation appears, the process reloads its keys
(the key file is read again; keys from the environment cannot change under a running process).
It seals with the key of the newest generation that *it and every other live process can open*:
a key is used only once it has reached everyone, so no running process is handed a value it
cannot open (with two bots, the first to re-read the key file waits for the second). It
*reports* that generation only once every unit of work it had open at the moment of the switch
has ended (``storage.db.OpenUnits``): a transaction that sealed a value under the old key and
commits late is not taken for "caught up". A process whose keys cannot open the newest
generation's key stays behind (and logs why), which holds rotation back; one that *starts* like
that is refused (:class:`KeyGenerationUnknown`).

**Checked before every seal, without a query.** ``encrypt`` looks only at memory: the key of the
generation the last refresh saw, and whether that refresh is younger than ``lease_seconds`` on
the process's monotonic clock; past that, it refuses to seal (:class:`KeyGenerationStale`) until
a refresh succeeds. A query per seal would add a database round trip to every message carrying a
card number or an ID, and on SQLite a second connection opened inside a unit of work (which holds
the write lock from its first statement) would wait for that very unit of work. Checking per
transaction would need the vault threaded through every unit of work. The lease gives rotate and
prune the same certainty at the cost of one small write per process every ``refresh_seconds``:

- ``keys rotate`` re-encrypts existing values under the new key only when every live holder has
  reported the new generation (so every running process can open the new key); otherwise it
  leaves them under the old key, which every process can still open, and ``keys prune`` finishes.
- ``keys prune`` removes old keys only when every live holder has reported the newest generation:
  no process seals under an old key any more, and none has a transaction open that did.
- A holder whose heartbeat is older than ``lease_seconds`` + ``SKEW_MARGIN_SECONDS`` is not live.
  Ignoring it is safe: its own lease has expired by then, so it cannot seal before it refreshes,
  and that refresh moves it to the newest generation first. This assumes the hosts' clocks agree
  within the margin (NTP keeps them far closer). What it cannot cover: a process frozen in the
  middle of a PostgreSQL transaction for longer than the lease, that commits after it thaws.

A process that stops removes its row; one that crashes leaves a row that stops counting once its
heartbeat is old enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.crypto import AesGcmVault, KeyConfigError
from storage.db import OpenUnits, SqlAlchemyUnitOfWorkFactory
from storage.tables import KeyGenerationRow, KeyHolderRow

log = logging.getLogger(__name__)

REFRESH_SECONDS = 15.0
LEASE_SECONDS = 60.0
SKEW_MARGIN_SECONDS = 60.0
PENDING_REFRESH_SECONDS = 1.0  # while a switch waits for older units of work to end


def _table(model: Any) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


GENERATIONS = _table(KeyGenerationRow)
HOLDERS = _table(KeyHolderRow)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class KeyGenerationStale(RuntimeError):
    """A seal was refused: this process has not confirmed the key generation with the database
    for longer than its lease (the database is unreachable, or the refresh task stopped), so it
    cannot be sure its key has not been removed meanwhile. Retry once the database answers."""


class KeyGenerationUnknown(KeyConfigError):
    """This process's keys cannot open the key of the newest generation: it could not read
    what the other processes seal. A start-up error; the message says what to configure."""


@dataclass(frozen=True)
class KeyGeneration:
    """An announced generation: the key new values are sealed with, and the keys that open
    values at that point."""

    generation: int
    primary_key_id: str
    key_ids: tuple[str, ...]
    reason: str
    created_at: datetime


@dataclass(frozen=True)
class KeyHolder:
    """A process that seals values, as it last reported itself."""

    holder_id: str
    generation: int
    sealing_key_id: str
    key_ids: tuple[str, ...]
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime

    def live(self, now: datetime, lease_seconds: float = LEASE_SECONDS) -> bool:
        """Whether it may still seal without refreshing first (see the module docstring)."""
        silent = now - self.heartbeat_at
        return silent <= timedelta(seconds=lease_seconds + SKEW_MARGIN_SECONDS)

    def describe(self, now: datetime) -> str:
        silent = max(0, int((now - self.heartbeat_at).total_seconds()))
        return (
            f"{self.host} pid {self.pid}: generation {self.generation}, sealing with key "
            f"{self.sealing_key_id}, last seen {silent} s ago"
        )


@dataclass(frozen=True)
class LeasePolicy:
    """How often a process confirms its generation and how long a confirmation lasts.
    ``refresh_seconds`` None: no background refresh (tests call ``refresh`` themselves).
    ``now`` stamps heartbeats (compared across processes); ``monotonic`` times the lease."""

    refresh_seconds: float | None = REFRESH_SECONDS
    lease_seconds: float = LEASE_SECONDS
    now: Callable[[], datetime] = field(default=_utc_now)
    monotonic: Callable[[], float] = field(default=time.monotonic)


# --------------------------------------------------------------------------------------------
# The tables


def _generation(row: Any) -> KeyGeneration:
    return KeyGeneration(
        generation=int(row.generation),
        primary_key_id=str(row.primary_key_id),
        key_ids=tuple(k for k in str(row.key_ids).split(",") if k),
        reason=str(row.reason),
        created_at=_aware(row.created_at),
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def newest_generation(conn: AsyncConnection) -> KeyGeneration | None:
    """The marker: the newest announced generation (None before the first)."""
    row = (
        await conn.execute(select(GENERATIONS).order_by(GENERATIONS.c.generation.desc()).limit(1))
    ).first()
    return None if row is None else _generation(row)


async def _generations(conn: AsyncConnection, limit: int = 20) -> list[KeyGeneration]:
    """The newest generations, newest first (older ones no longer matter)."""
    query = select(GENERATIONS).order_by(GENERATIONS.c.generation.desc()).limit(limit)
    return [_generation(row) for row in (await conn.execute(query)).all()]


async def _live_keys(
    conn: AsyncConnection, now: datetime, lease_seconds: float, exclude: str
) -> list[frozenset[str]]:
    """The keys each other live holder can open."""
    since = now - timedelta(seconds=lease_seconds + SKEW_MARGIN_SECONDS)
    query = select(HOLDERS.c.key_ids).where(
        HOLDERS.c.holder_id != exclude, HOLDERS.c.heartbeat_at >= since
    )
    rows: list[str] = list((await conn.execute(query)).scalars())
    return [frozenset(row.split(",")) for row in rows]


def _insert_ignoring_conflict(conn: AsyncConnection, table: Table, values: dict[str, Any]) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).values(values).on_conflict_do_nothing()
    return sqlite.insert(table).values(values).on_conflict_do_nothing()


async def _insert_generation(
    conn: AsyncConnection, generation: int, vault: AesGcmVault, reason: str, now: datetime
) -> bool:
    """Insert a generation; False when another process inserted that number first."""
    statement = _insert_ignoring_conflict(
        conn,
        GENERATIONS,
        {
            "generation": generation,
            "primary_key_id": vault.primary_key_id,
            "key_ids": ",".join(vault.key_ids),
            "reason": reason,
            "created_at": now,
        },
    )
    result = await conn.execute(statement)
    return bool(result.rowcount)


async def announce(
    engine: AsyncEngine, vault: AesGcmVault, reason: str, now: datetime | None = None
) -> KeyGeneration:
    """Announce a new generation sealing under ``vault``'s primary key (``keys rotate`` and
    ``keys prune``); every running process moves to it at its next refresh."""
    when = now or _utc_now()
    while True:
        async with engine.begin() as conn:
            marker = await newest_generation(conn)
            number = 1 if marker is None else marker.generation + 1
            if await _insert_generation(conn, number, vault, reason, _aware(when)):
                created = await newest_generation(conn)
                assert created is not None
                return created


async def current_generation(engine: AsyncEngine) -> KeyGeneration | None:
    """The marker, read in a transaction of its own."""
    async with engine.connect() as conn:
        return await newest_generation(conn)


async def holders(engine: AsyncEngine) -> list[KeyHolder]:
    """Every registered process, oldest first (live or not: see ``KeyHolder.live``)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(HOLDERS).order_by(HOLDERS.c.started_at))).all()
    return [
        KeyHolder(
            holder_id=str(row.holder_id),
            generation=int(row.generation),
            sealing_key_id=str(row.sealing_key_id),
            key_ids=tuple(k for k in str(row.key_ids).split(",") if k),
            host=str(row.host),
            pid=int(row.pid),
            started_at=_aware(row.started_at),
            heartbeat_at=_aware(row.heartbeat_at),
        )
        for row in rows
    ]


def behind(
    registered: Sequence[KeyHolder],
    generation: int,
    now: datetime,
    lease_seconds: float = LEASE_SECONDS,
) -> list[KeyHolder]:
    """The live holders that have not reported ``generation`` (or a later one)."""
    return [h for h in registered if h.live(now, lease_seconds) and h.generation < generation]


async def wait_for_holders(
    engine: AsyncEngine,
    generation: int,
    *,
    wait_seconds: float,
    now: Callable[[], datetime] = _utc_now,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    poll_seconds: float = 1.0,
) -> list[KeyHolder]:
    """Wait up to ``wait_seconds`` for every live holder to report ``generation``; returns
    those still behind (empty: all caught up). ``wait_seconds`` 0 looks once."""
    waited = 0.0
    while True:
        late = behind(await holders(engine), generation, now())
        if not late or waited >= wait_seconds:
            return late
        await sleep(poll_seconds)
        waited += poll_seconds


# --------------------------------------------------------------------------------------------
# The vault of a running process


class CoordinatedVault:
    """``core.ports.Vault`` for a running process: seals under the key of the newest key
    generation it has seen, refuses to seal on an expired lease, and keeps its ``key_holders``
    row current (see the module docstring). ``load`` builds the vault from the configuration
    (it is called again when the generation moves: the key file is re-read)."""

    def __init__(
        self,
        load: Callable[[], AesGcmVault],
        factory: SqlAlchemyUnitOfWorkFactory,
        policy: LeasePolicy | None = None,
    ) -> None:
        self._load = load
        self._engine = factory.engine
        self._units: OpenUnits = factory.open_units
        self._policy = policy or LeasePolicy()
        self._vault = load()
        self._generation = 0  # the generation whose key this process seals with
        self._reported = 0  # the generation it has told the others it holds
        self._pending: tuple[int, int] | None = None  # (generation, OpenUnits mark) to report
        self._newest: KeyGeneration | None = None  # the newest generation last seen
        self._lease_start: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.holder_id = uuid.uuid4().hex
        self._started_at = self._policy.now()

    # --- the Vault port

    def encrypt(self, plaintext: str, context: str) -> bytes:
        """Seal under the current generation's key; KeyGenerationStale past the lease."""
        self._check_lease()
        return self._vault.encrypt(plaintext, context)

    def decrypt(self, blob: bytes, context: str) -> str:
        return self._vault.decrypt(blob, context)

    def fingerprint(self, kind: str, value: str) -> str:
        return self._vault.fingerprint(kind, value)

    # --- what it holds

    @property
    def generation(self) -> int:
        """The generation whose key this process seals with (0 before the first refresh)."""
        return self._generation

    @property
    def reported_generation(self) -> int:
        """The generation its ``key_holders`` row says it holds."""
        return self._reported

    @property
    def sealing_key_id(self) -> str:
        return self._vault.primary_key_id

    @property
    def key_ids(self) -> list[str]:
        return self._vault.key_ids

    # --- lifecycle

    async def start(self) -> None:
        """Register (announcing generation 1 on an empty table) and start refreshing in the
        background. KeyGenerationUnknown when these keys cannot open the newest generation's
        key, or no key that the running processes seal with.

        It refreshes twice: on PostgreSQL a generation announced while the first refresh ran
        may be missed by it, and a process that cannot open that generation's key must not
        start (the others may already seal with it)."""
        await self.refresh()
        await self.refresh()
        marker = self._newest
        assert marker is not None
        if self._generation == 0 or marker.primary_key_id not in self._vault.key_ids:
            await self.stop()
            raise KeyGenerationUnknown(
                f"the configured data keys cannot open key {marker.primary_key_id} (key "
                f"generation {marker.generation}), which the other processes seal with: "
                "configure it (the key file, or CARDBOT_DATA_KEY / CARDBOT_DATA_KEYS_OLD); if "
                "that key is lost, `cardbot keys rotate` makes the configured key the current one"
            )
        if self._policy.refresh_seconds is not None:
            self._task = asyncio.create_task(self._keep_fresh(), name="key-generation")

    async def stop(self) -> None:
        """Stop refreshing and remove this process's row (best effort: a row left behind
        stops counting once its heartbeat is old)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._lease_start = None
        try:
            async with self._engine.begin() as conn:
                await conn.execute(delete(HOLDERS).where(HOLDERS.c.holder_id == self.holder_id))
        except Exception as exc:  # the database may be what is failing
            log.warning("could not remove this process's key-holder row: %s", type(exc).__name__)

    async def refresh(self) -> None:
        """Read the generations and the other processes' keys; move to the newest generation
        whose key every running process can open; report; renew the lease on success."""
        started, now = self._policy.monotonic(), self._policy.now()
        async with self._engine.begin() as conn:
            generations = await _generations(conn)
            if not generations:
                await _insert_generation(conn, 1, self._vault, "first", now)
                generations = await _generations(conn)
            newest = generations[0]
            if self._newest is None or newest.generation != self._newest.generation:
                self._reload(newest)
                self._newest = newest
            others = await _live_keys(conn, now, self._policy.lease_seconds, self.holder_id)
            self._advance(generations, others)
            if self._pending is not None and self._units.ended_before(self._pending[1]):
                self._reported, self._pending = self._pending[0], None
            await conn.execute(self._upsert(conn, now))
        self._lease_start = started

    def _reload(self, newest: KeyGeneration) -> None:
        """Read the keys again (the key file may have a new one): once per new generation."""
        current = self._vault
        try:
            fresh = self._load()
        except KeyConfigError as exc:
            log.error("cannot reload the data keys: %s", exc)
            return
        if not fresh.same_fingerprints(current):
            log.error("the reloaded data keys compute other fingerprints; keeping the old ones")
            return
        if current.primary_key_id in fresh.key_ids:
            self._vault = fresh.with_primary(current.primary_key_id)
        elif newest.primary_key_id in fresh.key_ids:
            # The sealing key left the configuration: pruned, so every process has moved on.
            self._vault = fresh.with_primary(newest.primary_key_id)
        if newest.primary_key_id not in self._vault.key_ids:
            log.error(
                "key generation %d seals with key %s, which this process does not have: it "
                "keeps sealing with key %s, and holds back `cardbot keys rotate` and `prune`; "
                "restart it with the new keys",
                newest.generation,
                newest.primary_key_id,
                self._vault.primary_key_id,
            )

    def _advance(
        self, generations: Sequence[KeyGeneration], others: Sequence[frozenset[str]]
    ) -> None:
        """Seal with the key of the newest generation that this process and every other live
        one can open — never going back (a process that is about to be refused at start may
        show up for a moment without the newest key)."""
        for candidate in generations:  # newest first
            if candidate.generation <= self._generation:
                return
            key = candidate.primary_key_id
            if key in self._vault.key_ids and all(key in keys for keys in others):
                previous = self._generation
                self._vault = self._vault.with_primary(key)
                self._generation = candidate.generation
                self._pending = (candidate.generation, self._units.mark())
                if previous:
                    log.info("now sealing with key %s (key generation %d)", key, self._generation)
                return

    def _upsert(self, conn: AsyncConnection, now: datetime) -> Any:
        values = {
            "holder_id": self.holder_id,
            "generation": self._reported,
            "sealing_key_id": self._vault.primary_key_id,
            "key_ids": ",".join(self._vault.key_ids),
            "host": socket.gethostname()[:255],
            "pid": os.getpid(),
            "started_at": self._started_at,
            "heartbeat_at": now,
        }
        changing = {k: v for k, v in values.items() if k not in ("holder_id", "started_at")}
        if conn.dialect.name == "postgresql":
            pg = postgresql.insert(HOLDERS).values(values)
            return pg.on_conflict_do_update(index_elements=["holder_id"], set_=changing)
        lite = sqlite.insert(HOLDERS).values(values)
        return lite.on_conflict_do_update(index_elements=["holder_id"], set_=changing)

    def _check_lease(self) -> None:
        if self._lease_start is None:
            raise KeyGenerationStale("the key generation has not been confirmed yet")
        age = self._policy.monotonic() - self._lease_start
        if age >= self._policy.lease_seconds:
            raise KeyGenerationStale(
                f"the key generation was last confirmed with the database {age:.0f} s ago "
                f"(lease {self._policy.lease_seconds:g} s): not sealing until it is again"
            )

    async def _keep_fresh(self) -> None:
        assert self._policy.refresh_seconds is not None
        while True:
            pause = (
                PENDING_REFRESH_SECONDS
                if self._pending is not None
                else self._policy.refresh_seconds
            )
            await asyncio.sleep(pause)
            try:
                await self.refresh()
            except Exception as exc:
                log.warning(
                    "could not confirm the data-key generation with the database (%s); "
                    "sealing stops once the lease runs out",
                    type(exc).__name__,
                )
