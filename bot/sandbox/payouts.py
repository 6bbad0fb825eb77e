"""Sandbox payout provider: behaves like Alipay uni.transfer / WeChat 商家转账, moves no money.

State lives in a SQLite file so several bot processes (and restarts) see one provider. Each
``reference`` is one transfer: replaying the same request returns the recorded state and never
executes twice; the same reference with a different payload raises :class:`ReferenceConflict`
(Alipay's ``PAYMENT_INFO_INCONSISTENCY``, WeChat's "单号已存在但信息不一致").

Failure modes are chosen by magic values in the account, the way provider sandboxes do it.
A *word* matches case-insensitively anywhere in the account (for an e-mail address, in the part
before ``@``); an *ending* matches the last four digits of an all-digit account (phone or bank
card; spaces, dashes and a leading ``+`` are ignored). The first matching row wins:

=========================  ==========================================================
account                    behaviour
=========================  ==========================================================
``fail`` / ends ``0000``   FAILED at once, reason ``PAYEE_NOT_EXIST``
``frozen`` / ends ``0001`` FAILED at once, reason ``ACCOUNT_FROZEN``
``lost`` / ends ``8888``   request lost before the provider: raises PayoutOutcomeUnknown,
                           nothing recorded, ``query`` says UNKNOWN; the next ``transfer``
                           with the same reference executes (and succeeds)
``timeout`` / ends ``9999`` executed and recorded SUCCEEDED, then the reply is lost:
                           raises PayoutOutcomeUnknown; ``query`` and replays say SUCCEEDED
``late`` / ends ``7777``   PROCESSING; SUCCEEDED once ``late_seconds`` passed on the clock
anything else              SUCCEEDED at once with a provider transaction id
=========================  ==========================================================

Requests the provider would reject are recorded as FAILED (never an exception), checked before
the magic values: ``INVALID_AMOUNT`` (amount not a positive integer), ``INVALID_METHOD``,
``INVALID_ACCOUNT`` (empty), ``INVALID_BANK_CARD`` (bank account not 12–19 digits),
``USER_NAME_REQUIRED`` (WeChat, amount ≥ 200000 fen without a holder name).

The file keeps the payee as keyed HMACs of the account and the holder's name (``fingerprint``:
the vault's, under the project's fingerprint key) — enough to tell a replay from a conflicting
request, useless for guessing: an unkeyed hash of a bank card falls to brute force from its
masked digits. A file of an older version (``account_sha256``, ``holder_name_sha256``) is
converted when first opened: its hashes cannot be turned into fingerprints, so they are erased
(the file vacuumed) and the first replay of such a transfer records the payee's fingerprints.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.errors import PayoutOutcomeUnknown
from core.model import PayoutMethod, PayoutState
from core.ports import Clock, PayoutRequest, PayoutResult
from core.reconcile import StatementRow

__all__ = ["ReferenceConflict", "SandboxPayoutGateway"]

# WeChat 商家转账 requires the payee's real name from 2,000 CNY up.
WECHAT_NAME_REQUIRED_FEN = 200_000
# Alipay's out_biz_no and WeChat's out_bill_no are both at most 64 characters.
MAX_REFERENCE_LENGTH = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers (
    reference TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    account_fp TEXT,
    holder_name_fp TEXT,
    amount_fen INTEGER NOT NULL,
    state TEXT NOT NULL,
    provider_txn_id TEXT,
    failure_reason TEXT,
    created_at TEXT NOT NULL,
    completes_at TEXT,
    completed_at TEXT
);
CREATE TABLE IF NOT EXISTS lost_requests (
    reference TEXT PRIMARY KEY,
    lost_at TEXT NOT NULL
);
"""

_COLUMNS = (
    "reference, method, account_fp, holder_name_fp, amount_fen, state, "
    "provider_txn_id, failure_reason, created_at, completes_at, completed_at"
)


class ReferenceConflict(ValueError):
    """The reference already names a transfer with a different payload."""


@dataclass(frozen=True)
class _Mode:
    state: PayoutState
    failure_reason: str | None = None
    lost: bool = False
    timeout: bool = False
    late: bool = False


_SUCCEED = _Mode(PayoutState.SUCCEEDED)
_METHODS = frozenset(m.value for m in PayoutMethod)

# Table order is precedence: an account that says both "fail" and "late" fails.
_MAGIC: tuple[tuple[str, str, _Mode], ...] = (
    ("fail", "0000", _Mode(PayoutState.FAILED, failure_reason="PAYEE_NOT_EXIST")),
    ("frozen", "0001", _Mode(PayoutState.FAILED, failure_reason="ACCOUNT_FROZEN")),
    ("lost", "8888", _Mode(PayoutState.UNKNOWN, lost=True)),
    ("timeout", "9999", _Mode(PayoutState.SUCCEEDED, timeout=True)),
    ("late", "7777", _Mode(PayoutState.PROCESSING, late=True)),
)


def _normalise_account(method: str, account: str) -> str:
    """The account as the provider keys it; bank cards are often written in groups of four."""
    account = account.strip()
    if method == PayoutMethod.BANK:
        account = account.replace(" ", "").replace("-", "")
    return account


def _iso(moment: datetime) -> str:
    # Fixed-width UTC text so SQL string comparison orders instants correctly.
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _parse(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text is not None else None


def _rejection(request: PayoutRequest, account: str) -> str | None:
    """The reason code a provider would refuse this request with, or None."""
    amount = request.amount_fen
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return "INVALID_AMOUNT"
    try:
        method = PayoutMethod(request.method)
    except ValueError:
        return "INVALID_METHOD"
    if not account:
        return "INVALID_ACCOUNT"
    if method is PayoutMethod.BANK and not (account.isdigit() and 12 <= len(account) <= 19):
        return "INVALID_BANK_CARD"
    if (
        method is PayoutMethod.WECHAT
        and amount >= WECHAT_NAME_REQUIRED_FEN
        and not request.holder_name.strip()
    ):
        return "USER_NAME_REQUIRED"
    return None


def _mode_for(account: str) -> _Mode:
    """The behaviour the magic values in ``account`` select."""
    lowered = account.lower()
    words = lowered.split("@", 1)[0] if "@" in lowered else lowered
    digits = lowered.replace(" ", "").replace("-", "").removeprefix("+")
    ending = digits[-4:] if digits.isdigit() and len(digits) >= 4 else None
    for word, digit_ending, mode in _MAGIC:
        if word in words or ending == digit_ending:
            return mode
    return _SUCCEED


def _new_txn_id(now: datetime) -> str:
    # 32 digits like an Alipay order_id: timestamp, then randomness for uniqueness.
    return f"{now.astimezone(UTC):%Y%m%d%H%M%S}{secrets.randbelow(10**18):018d}"


class SandboxPayoutGateway:
    """A ``PayoutGateway`` over a local SQLite file, with documented magic-value failures."""

    def __init__(
        self,
        state_path: Path,
        clock: Clock,
        *,
        fingerprint: Callable[[str, str], str],
        late_seconds: float = 30.0,
        delay_seconds: float = 0.0,
    ) -> None:
        """``fingerprint(kind, value)``: a keyed HMAC (the vault's ``fingerprint``)."""
        self._path = Path(state_path)
        self._fingerprint = fingerprint
        self._clock = clock
        self._late = timedelta(seconds=late_seconds)
        # A slow provider: each transfer request takes this long (wall time) before it runs.
        self._delay = max(0.0, delay_seconds)
        self._schema_lock = threading.Lock()
        self._schema_ready = False

    # -- the port ---------------------------------------------------------------------------

    async def transfer(self, request: PayoutRequest) -> PayoutResult:
        """Send money; idempotent per reference; raises PayoutOutcomeUnknown when unsure."""
        if self._delay:
            await asyncio.sleep(self._delay)
        now = self._now()
        try:
            result, reply_lost = await asyncio.to_thread(self._transfer, request, now)
        except sqlite3.OperationalError as exc:
            # A busy or broken provider store is a provider outage: the caller must query.
            raise PayoutOutcomeUnknown(f"sandbox provider unavailable: {exc}") from exc
        if reply_lost:
            raise PayoutOutcomeUnknown(f"no reply for transfer {request.reference!r}")
        return result

    async def query(self, reference: str) -> PayoutResult:
        """The provider's view of a transfer; UNKNOWN when it has no record of the reference."""
        now = self._now()
        try:
            return await asyncio.to_thread(self._query, reference, now)
        except sqlite3.OperationalError as exc:
            raise PayoutOutcomeUnknown(f"sandbox provider unavailable: {exc}") from exc

    # -- inspection -------------------------------------------------------------------------

    def transfers(self) -> list[dict[str, Any]]:
        """Every recorded transfer in the order received (for tests and reconciliation)."""
        now = self._now()
        with self._transaction() as conn:
            self._settle_due(conn, now)
            rows = conn.execute(
                "SELECT reference, amount_fen, method, state, provider_txn_id, failure_reason"
                " FROM transfers ORDER BY rowid"
            ).fetchall()
        return [
            {
                "reference": row[0],
                "amount_fen": row[1],
                "method": row[2],
                "state": PayoutState(row[3]),
                "provider_txn_id": row[4],
                "failure_reason": row[5],
            }
            for row in rows
        ]

    def statement(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[StatementRow]:
        """The provider's statement: every transfer it received in ``[since, until)`` (all of
        them when both are None), in arrival order, as ``cardbot reconcile`` reads it."""
        now = self._now()
        query = f"SELECT {_COLUMNS} FROM transfers"
        bounds: list[str] = []
        if since is not None:
            bounds.append(_iso(since))
            query += " WHERE created_at >= ?"
        if until is not None:
            bounds.append(_iso(until))
            query += (" AND" if since is not None else " WHERE") + " created_at < ?"
        with self._transaction() as conn:
            self._settle_due(conn, now)
            rows = conn.execute(query + " ORDER BY rowid", bounds).fetchall()
        return [
            StatementRow(
                reference=row[0],
                method=PayoutMethod(row[1]),
                amount_fen=row[4],
                state=PayoutState(row[5]),
                provider_txn_id=row[6],
                failure_reason=row[7],
                created_at=_parse(row[8]),
                completed_at=_parse(row[10]),
            )
            for row in rows
            # A request refused as INVALID_METHOD names no method a statement could list.
            if row[1] in _METHODS
        ]

    # -- blocking work, run in a thread -----------------------------------------------------

    def _transfer(self, request: PayoutRequest, now: datetime) -> tuple[PayoutResult, bool]:
        """Record (or replay) one transfer; the bool says whether the reply gets lost."""
        reference = request.reference
        if not isinstance(reference, str) or not 0 < len(reference) <= MAX_REFERENCE_LENGTH:
            raise ValueError(f"reference must be 1–{MAX_REFERENCE_LENGTH} characters")
        method = str(request.method)
        account = _normalise_account(method, request.account)
        account_fp = self._fingerprint("sandbox.payout.account", f"{method}:{account}")
        holder_fp = self._fingerprint("sandbox.payout.holder", request.holder_name.strip())
        # BEGIN IMMEDIATE takes the write lock before reading, so two callers (tasks or
        # processes) with one reference are serialised and only the first one executes.
        with self._transaction() as conn:
            self._settle_due(conn, now)
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM transfers WHERE reference = ?", (reference,)
            ).fetchone()
            if row is not None:
                if row[2] is None:  # converted from an older file: the payee was not kept
                    conn.execute(
                        "UPDATE transfers SET account_fp = ?, holder_name_fp = ?"
                        " WHERE reference = ?",
                        (account_fp, holder_fp, reference),
                    )
                    row = (row[0], row[1], account_fp, holder_fp, *row[4:])
                if (row[1], row[2], row[3], row[4]) != (
                    method,
                    account_fp,
                    holder_fp,
                    request.amount_fen,
                ):
                    raise ReferenceConflict(
                        f"PAYMENT_INFO_INCONSISTENCY: reference {reference!r} was used for a"
                        " different payee, method or amount"
                    )
                return _result(row), False

            reason = _rejection(request, account)
            mode = (
                _Mode(PayoutState.FAILED, failure_reason=reason)
                if reason is not None
                else _mode_for(account)
            )
            if mode.lost:
                # The first attempt never reaches the provider; remembering that it was lost
                # (durably) lets the retry under the same reference go through.
                first_loss = conn.execute(
                    "INSERT OR IGNORE INTO lost_requests (reference, lost_at) VALUES (?, ?)",
                    (reference, _iso(now)),
                ).rowcount
                if first_loss:
                    return PayoutResult(reference=reference, state=PayoutState.UNKNOWN), True
                mode = _SUCCEED

            executed = mode.state is not PayoutState.FAILED
            completes_at = now + self._late if mode.late else None
            completed_at = None if mode.late else now
            conn.execute(
                f"INSERT OR IGNORE INTO transfers ({_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    reference,
                    method,
                    account_fp,
                    holder_fp,
                    request.amount_fen,
                    mode.state.value,
                    _new_txn_id(now) if executed else None,
                    mode.failure_reason,
                    _iso(now),
                    _iso(completes_at) if completes_at is not None else None,
                    _iso(completed_at) if completed_at is not None else None,
                ),
            )
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM transfers WHERE reference = ?", (reference,)
            ).fetchone()
        return _result(row), mode.timeout

    def _query(self, reference: str, now: datetime) -> PayoutResult:
        with self._transaction() as conn:
            self._settle_due(conn, now)
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM transfers WHERE reference = ?", (reference,)
            ).fetchone()
        if row is None:
            # Like WeChat's "not found": the request may never have arrived. Not a failure.
            return PayoutResult(reference=reference, state=PayoutState.UNKNOWN)
        return _result(row)

    @staticmethod
    def _settle_due(conn: sqlite3.Connection, now: datetime) -> None:
        """Finish late transfers whose time has come (the provider's own clock moved on)."""
        conn.execute(
            "UPDATE transfers SET state = ?, completed_at = completes_at"
            " WHERE state = ? AND completes_at <= ?",
            (PayoutState.SUCCEEDED.value, PayoutState.PROCESSING.value, _iso(now)),
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction on a fresh connection (connections are per thread)."""
        self._ensure_schema()
        conn = sqlite3.connect(self._path, timeout=30.0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _ensure_schema(self) -> None:
        with self._schema_lock:
            if self._schema_ready:
                return
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, timeout=30.0, isolation_level=None)
            try:
                # WAL lets readers in other processes proceed while one transfer is written.
                conn.execute("PRAGMA journal_mode=WAL")
                _convert_legacy(conn)
                conn.executescript(_SCHEMA)
            finally:
                conn.close()
            self._schema_ready = True

    def _now(self) -> datetime:
        now = self._clock.now()
        if now.tzinfo is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return now


def _convert_legacy(conn: sqlite3.Connection) -> None:
    """Erase an older file's unkeyed hashes of accounts and names (once)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(transfers)")}
    if "account_sha256" not in columns:
        return
    conn.execute("PRAGMA secure_delete = ON")  # freed pages are zeroed, not left readable
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(transfers)")}
        if "account_sha256" in columns:  # another process may have converted it meanwhile
            kept = (
                "reference, method, amount_fen, state, provider_txn_id, failure_reason,"
                " created_at, completes_at, completed_at"
            )
            conn.execute("ALTER TABLE transfers RENAME TO transfers_v1")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)  # executescript would commit half-way
            conn.execute(
                f"INSERT INTO transfers ({kept}) SELECT {kept} FROM transfers_v1 ORDER BY rowid"
            )
            conn.execute("DROP TABLE transfers_v1")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _result(row: tuple[Any, ...]) -> PayoutResult:
    return PayoutResult(
        reference=row[0],
        state=PayoutState(row[5]),
        provider_txn_id=row[6],
        failure_reason=row[7],
        completed_at=_parse(row[10]),
    )
