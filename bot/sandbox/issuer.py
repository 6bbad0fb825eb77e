"""Sandbox card issuer: a ``CardIssuer`` over a CSV card file, with durable redemptions.

The card file (``CARDBOT_SANDBOX_CARDS``; the shipped one is ``cards.csv`` beside this module,
documented row by row in ``README.md``) is a stable interface::

    brand,number,secret,face_value_fen,balance_fen,expires,status

``brand`` is a catalog code, ``number`` must fit that brand's rules, ``secret`` is empty exactly
for brands without one, ``expires`` is ``YYYY-MM-DD``, ``status`` is ``active``, ``used`` or
``frozen``. A malformed row stops loading with a ``ValueError`` naming the file and line.

What the issuer answers, in order of precedence:

* a number not in the file, or filed under another brand → ``CardNotFound``;
* a brand with a secret and a missing or different secret → ``WrongSecret``;
* ``used`` in the file → USED, balance 0 (used_at unknown);
* ``frozen`` → FROZEN;
* fully redeemed here → USED, balance 0, used_at = the last redemption;
* ``expires`` before today (Asia/Shanghai) → EXPIRED;
* otherwise ACTIVE, with the file's balance minus what was redeemed here.

Redemptions live in a small SQLite file, so every process and every restart sees the same
cards. A card is keyed there by a keyed HMAC of its number (``fingerprint``: the vault's, under
the project's fingerprint key), never by the number or a plain hash of it: a card number has
too few unknown digits behind its mask for an unkeyed hash to hide it. A file of an older
version (``card_sha256``) is converted when first opened: each hash is matched against the card
file and replaced by the keyed fingerprint, the rest dropped, and the file vacuumed.
``redeem`` is idempotent per reference: the same reference returns the same ``Redemption``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import MappingProxyType

from core.catalog import Brand, Catalog, normalize_card_number, secrets_equal
from core.errors import (
    CardNotFound,
    CardNotRecognised,
    CardUnusable,
    IssuerUnavailable,
    WrongSecret,
)
from core.model import CardStatus
from core.ports import CardVerification, Clock, Redemption
from core.risk import shanghai_date

__all__ = ["HEADER", "SandboxCard", "SandboxCardIssuer", "load_cards"]

HEADER = ("brand", "number", "secret", "face_value_fen", "balance_fen", "expires", "status")
FILE_STATUSES = ("active", "used", "frozen")

_FEN = re.compile(r"[0-9]+")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS redemptions (
    reference TEXT PRIMARY KEY,
    card_fp TEXT NOT NULL,
    amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
    redeemed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS redemptions_by_card_fp ON redemptions (card_fp);
"""
FINGERPRINT_KIND = "sandbox.issuer.card"


@dataclass(frozen=True)
class SandboxCard:
    """One row of the card file, validated."""

    brand: str
    number: str
    secret: str  # normalised; empty for brands without a secret
    face_value_fen: int
    balance_fen: int
    expires: date
    status: str  # active | used | frozen
    line: int


def _row_error(path: Path, line: int, problem: str) -> ValueError:
    return ValueError(f"{path}, line {line}: {problem}")


def _parse_row(path: Path, line: int, row: list[str], catalog: Catalog) -> SandboxCard:
    if len(row) != len(HEADER):
        raise _row_error(path, line, f"expected {len(HEADER)} fields, found {len(row)}")
    brand_code, raw_number, raw_secret, face, balance, expires, status = (f.strip() for f in row)
    try:
        brand = catalog.get(brand_code)
    except KeyError:
        raise _row_error(path, line, f"unknown brand {brand_code!r}") from None
    number = normalize_card_number(raw_number)
    try:
        matched = catalog.match(number)
    except CardNotRecognised:
        matched = None
    if matched is not brand:
        raise _row_error(
            path, line, f"number does not fit {brand.code}'s rules (prefix, length, check digit)"
        )
    secret = _parse_secret(path, line, brand, raw_secret, catalog)
    if not _FEN.fullmatch(face) or int(face) <= 0:
        raise _row_error(path, line, f"face_value_fen must be a positive integer, not {face!r}")
    if not _FEN.fullmatch(balance) or int(balance) > int(face):
        raise _row_error(
            path, line, f"balance_fen must be an integer from 0 to face_value_fen, not {balance!r}"
        )
    expiry = _parse_date(expires)
    if expiry is None:
        raise _row_error(path, line, f"expires must be a date YYYY-MM-DD, not {expires!r}")
    if status not in FILE_STATUSES:
        raise _row_error(path, line, f"status must be one of {', '.join(FILE_STATUSES)}")
    return SandboxCard(brand.code, number, secret, int(face), int(balance), expiry, status, line)


def _parse_date(text: str) -> date | None:
    if not _ISO_DATE.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _parse_secret(path: Path, line: int, brand: Brand, raw: str, catalog: Catalog) -> str:
    if not brand.has_secret:
        if raw:
            raise _row_error(path, line, f"{brand.code} cards have no secret; leave it empty")
        return ""
    if not raw:
        raise _row_error(path, line, f"{brand.code} cards need a secret")
    try:
        return catalog.validate_secret(brand, raw)
    except WrongSecret:
        raise _row_error(
            path, line, f"secret does not match {brand.code}'s pattern {brand.secret_pattern}"
        ) from None


def load_cards(path: Path, catalog: Catalog) -> dict[str, SandboxCard]:
    """Read and validate a card file; cards by normalised number. ValueError names the line."""
    path = Path(path)
    cards: dict[str, SandboxCard] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != HEADER:
            raise _row_error(path, 1, f"the header must be {','.join(HEADER)}")
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            card = _parse_row(path, reader.line_num, row, catalog)
            if card.number in cards:
                first = cards[card.number].line
                raise _row_error(path, card.line, f"number already listed on line {first}")
            cards[card.number] = card
    return cards


def _legacy_sha256(number: str) -> str:
    return hashlib.sha256(number.encode("ascii")).hexdigest()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


class SandboxCardIssuer:
    """A ``CardIssuer`` over a CSV card file; redemptions kept in SQLite at ``state_path``."""

    def __init__(
        self,
        cards_csv: Path,
        state_path: Path,
        catalog: Catalog,
        clock: Clock,
        *,
        fingerprint: Callable[[str, str], str],
    ) -> None:
        """``fingerprint(kind, value)``: a keyed HMAC (the vault's ``fingerprint``)."""
        self._cards = load_cards(cards_csv, catalog)
        self._catalog = catalog
        self._state_path = Path(state_path)
        self._clock = clock
        self._fingerprint = fingerprint

    @property
    def cards(self) -> Mapping[str, SandboxCard]:
        """The cards of the file, by number (read-only)."""
        return MappingProxyType(self._cards)

    # -- the port ---------------------------------------------------------------------------

    async def verify(self, brand: str, number: str, secret: str | None) -> CardVerification:
        """Status, balance and expiry; raises CardNotFound, WrongSecret, IssuerUnavailable."""
        card = self._authenticate(brand, number, secret)
        today = shanghai_date(self._clock.now())
        try:
            return await asyncio.to_thread(self._verify, card, today)
        except sqlite3.Error as exc:
            raise IssuerUnavailable(f"sandbox issuer store: {exc}") from exc

    async def redeem(
        self, brand: str, number: str, secret: str | None, amount_fen: int, reference: str
    ) -> Redemption:
        """Take the balance off the card; idempotent per ``reference``."""
        card = self._authenticate(brand, number, secret)
        if amount_fen <= 0:
            raise ValueError("a redemption takes a positive amount")
        if not reference:
            raise ValueError("a redemption needs a reference")
        now = self._clock.now()
        try:
            return await asyncio.to_thread(self._redeem, card, amount_fen, reference, now)
        except sqlite3.Error as exc:
            raise IssuerUnavailable(f"sandbox issuer store: {exc}") from exc

    # -- internals --------------------------------------------------------------------------

    def _authenticate(self, brand: str, number: str, secret: str | None) -> SandboxCard:
        card = self._cards.get(normalize_card_number(number))
        if card is None or card.brand != brand:
            raise CardNotFound()
        if card.secret and not secrets_equal(card.secret, secret):
            raise WrongSecret()
        return card

    def _card_key(self, card: SandboxCard) -> str:
        return self._fingerprint(FINGERPRINT_KIND, card.number)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(
            sqlite3.connect(self._state_path, timeout=10.0, isolation_level=None)
        ) as conn:
            self._convert_legacy(conn)
            conn.executescript(_SCHEMA)
            yield conn

    def _convert_legacy(self, conn: sqlite3.Connection) -> None:
        """Replace an older file's unkeyed hashes by keyed fingerprints (once)."""
        columns = {row[1] for row in conn.execute("PRAGMA table_info(redemptions)")}
        if "card_sha256" not in columns:
            return
        by_hash = {_legacy_sha256(n): self._card_key(c) for n, c in self._cards.items()}
        conn.execute("PRAGMA secure_delete = ON")  # freed pages are zeroed, not left readable
        conn.execute("BEGIN IMMEDIATE")
        try:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(redemptions)")}
            if "card_sha256" in columns:  # another process may have converted it meanwhile
                rows = conn.execute(
                    "SELECT reference, card_sha256, amount_fen, redeemed_at FROM redemptions"
                ).fetchall()
                conn.execute("DROP TABLE redemptions")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)  # executescript would commit half-way
                conn.executemany(
                    "INSERT INTO redemptions (reference, card_fp, amount_fen, redeemed_at)"
                    " VALUES (?, ?, ?, ?)",
                    [(r[0], by_hash[r[1]], r[2], r[3]) for r in rows if r[1] in by_hash],
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _redeemed(
        self, conn: sqlite3.Connection, card: SandboxCard
    ) -> tuple[int, datetime | None]:
        total, last = conn.execute(
            "SELECT COALESCE(SUM(amount_fen), 0), MAX(redeemed_at) FROM redemptions"
            " WHERE card_fp = ?",
            (self._card_key(card),),
        ).fetchone()
        return int(total), datetime.fromisoformat(last) if last else None

    @staticmethod
    def _status(
        card: SandboxCard, redeemed_fen: int, last_at: datetime | None, today: date
    ) -> CardVerification:
        remaining = max(card.balance_fen - redeemed_fen, 0)
        used_at: datetime | None = None
        if card.status == "used":
            status, remaining = CardStatus.USED, 0
        elif card.status == "frozen":
            status = CardStatus.FROZEN
        elif redeemed_fen > 0 and remaining == 0:
            status, used_at = CardStatus.USED, last_at
        elif card.expires < today:
            status = CardStatus.EXPIRED
        else:
            status = CardStatus.ACTIVE
        return CardVerification(status, card.face_value_fen, remaining, card.expires, used_at)

    def _verify(self, card: SandboxCard, today: date) -> CardVerification:
        with self._connect() as conn:
            redeemed, last_at = self._redeemed(conn, card)
        return self._status(card, redeemed, last_at, today)

    def _redeem(
        self, card: SandboxCard, amount_fen: int, reference: str, now: datetime
    ) -> Redemption:
        with self._connect() as conn:
            # One writer at a time across processes: the check and the insert are atomic.
            conn.execute("BEGIN IMMEDIATE")
            try:
                redemption = self._redeem_locked(conn, card, amount_fen, reference, now)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return redemption

    def _redeem_locked(
        self,
        conn: sqlite3.Connection,
        card: SandboxCard,
        amount_fen: int,
        reference: str,
        now: datetime,
    ) -> Redemption:
        card_key = self._card_key(card)
        done = conn.execute(
            "SELECT card_fp, amount_fen, redeemed_at FROM redemptions WHERE reference = ?",
            (reference,),
        ).fetchone()
        if done is not None:
            if done[0] != card_key or done[1] != amount_fen:
                raise ValueError(f"reference {reference!r} was used for another redemption")
            return Redemption(reference, amount_fen, datetime.fromisoformat(done[2]))
        redeemed, last_at = self._redeemed(conn, card)
        verification = self._status(card, redeemed, last_at, shanghai_date(now))
        if verification.status is CardStatus.USED:
            used_on = verification.used_at.date().isoformat() if verification.used_at else ""
            raise CardUnusable("error.card_used", used_on=used_on)
        if verification.status is CardStatus.FROZEN:
            raise CardUnusable("error.card_frozen")
        if verification.status is CardStatus.EXPIRED:
            raise CardUnusable("error.card_expired", expires=card.expires.isoformat())
        if amount_fen > verification.balance_fen:
            raise CardUnusable("error.card_balance_changed", balance_fen=verification.balance_fen)
        conn.execute(
            "INSERT INTO redemptions (reference, card_fp, amount_fen, redeemed_at)"
            " VALUES (?, ?, ?, ?)",
            (reference, card_key, amount_fen, _iso(now)),
        )
        return Redemption(reference, amount_fen, now.astimezone(UTC))
