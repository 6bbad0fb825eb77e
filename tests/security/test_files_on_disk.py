"""Attack: read cardbot's files as another local user, and brute-force the sandbox state.

The database, its WAL, the logs and ``var/`` were world-readable (0644/0755); the sandbox
issuer and payout files kept unsalted SHA-256 of card numbers, bank accounts and names, so
with the mask from the database (first and last four) a card number fell to brute force in
seconds. Now every file is its owner's only, and the sandbox keeps keyed HMACs."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.sandbox.issuer import SandboxCardIssuer
from bot.sandbox.payouts import SandboxPayoutGateway
from bot.settings import DEFAULT_CARDS
from core.catalog import default_catalog, luhn_check_digit
from core.model import PayoutMethod
from core.ports import PayoutRequest
from storage.crypto import AesGcmVault
from tests.e2e.conftest import Harness
from tests.e2e.test_console_sale import SCRIPT, play
from tests.fakes import FakeClock

NUMBER, SECRET = "2326081744029136", "135790"  # the shipped Walmart card, ¥500
BANK, HOLDER = "6222021234567890128", "王芳"


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual default umask while the test runs; the process's own afterwards."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def readable_by_others(root: Path) -> list[str]:
    return [
        f"{path} {stat.S_IMODE(path.lstat().st_mode):o}"
        for path in [root, *root.rglob("*")]
        if not path.is_symlink() and stat.S_IMODE(path.lstat().st_mode) & 0o077
    ]


async def test_another_local_user_can_read_nothing_cardbot_keeps_on_disk(
    tmp_path: Path, umask_022: None
) -> None:
    var = tmp_path / "var"
    url = f"sqlite+aiosqlite:///{(var / 'cardbot.db').as_posix()}"
    h = Harness(tmp_path, url)
    h.settings.var_dir = var
    await h.start()
    await play(h, SCRIPT[:4])
    await h.close()
    # What an older version left behind: world-readable files and directories.
    os.umask(0o022)
    for path in [var, *var.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (var / "cardbot.db-wal").touch()
    (var / "cardbot.db-wal").chmod(0o644)
    assert readable_by_others(var)

    await h.start()  # the next start tightens what is there and creates only private files
    try:
        await play(h, SCRIPT[4:])
        assert "【电子回单】" in h.text()
        assert (var / "sandbox" / "payouts.sqlite3").exists()
        assert list(var.glob("cardbot.db*"))
        assert readable_by_others(var) == []
        assert stat.S_IMODE(os.umask(0o077)) == 0o077  # the process keeps the private umask
    finally:
        await h.close()


def test_a_database_outside_var_is_made_private_but_not_its_directory(
    tmp_path: Path, umask_022: None
) -> None:
    from bot.files import keep_private

    db = tmp_path / "elsewhere" / "cardbot.db"
    db.parent.mkdir(mode=0o755)
    for suffix in ("", "-wal", "-shm"):
        path = db.with_name(db.name + suffix)
        path.touch()
        path.chmod(0o644)
    keep_private(tmp_path / "var", f"sqlite+aiosqlite:///{db.as_posix()}")
    for suffix in ("", "-wal", "-shm"):
        assert stat.S_IMODE(db.with_name(db.name + suffix).stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o755  # the operator's directory


# --------------------------------------------------------------------------------------------
# The sandbox files


def candidates_for_mask(first4: str, last4: str, body_digits: int, true_number: str) -> list[str]:
    """Numbers an attacker would try for ``first4 **** **** last4``: here a slice of the space
    around the true number (the whole space is 10^7 Luhn-valid numbers; SHA-256 took seconds)."""
    middle = int(true_number[4:-4])
    out = []
    for m in range(max(middle - 500, 0), middle + 500):
        body = f"{first4}{m:0{body_digits}d}{last4[:-1]}"
        number = body + luhn_check_digit(body)
        if number.endswith(last4):
            out.append(number)
    assert true_number in out
    return out


def file_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).hexdigest().encode()


async def test_brute_forcing_a_card_number_from_the_sandbox_issuer_file_finds_nothing(
    tmp_path: Path,
) -> None:
    vault = AesGcmVault([os.urandom(32)])
    state = tmp_path / "issuer.sqlite3"
    clock = FakeClock(datetime(2026, 11, 22, 6, 0, tzinfo=UTC))
    issuer = SandboxCardIssuer(
        DEFAULT_CARDS, state, default_catalog(), clock, fingerprint=vault.fingerprint
    )
    await issuer.redeem("walmart", NUMBER, SECRET, 10_000, "CB00000001")
    stored = file_bytes(state)
    assert NUMBER.encode() not in stored
    for guess in candidates_for_mask(NUMBER[:4], NUMBER[-4:], 8, NUMBER):
        assert sha(guess) not in stored, "the card number falls to an unkeyed hash"
    # The redemption still counts: the same card is known again by its keyed fingerprint.
    assert (await issuer.verify("walmart", NUMBER, SECRET)).balance_fen == 40_000


async def test_brute_forcing_a_bank_account_or_a_name_from_the_sandbox_payout_file_finds_nothing(
    tmp_path: Path,
) -> None:
    vault = AesGcmVault([os.urandom(32)])
    state = tmp_path / "payouts.sqlite3"
    clock = FakeClock(datetime(2026, 11, 22, 6, 0, tzinfo=UTC))
    gateway = SandboxPayoutGateway(state, clock, fingerprint=vault.fingerprint)
    request = PayoutRequest("CB00000001-P1", PayoutMethod.BANK, BANK, HOLDER, 9_250)
    await gateway.transfer(request)
    stored = file_bytes(state)
    assert BANK.encode() not in stored and HOLDER.encode() not in stored
    for guess in candidates_for_mask(BANK[:4], BANK[-4:], 11, BANK):
        assert sha(guess) not in stored
    assert sha(HOLDER) not in stored
    # Replaying the same request is still recognised as the same payee.
    assert (await gateway.transfer(request)).reference == request.reference


async def test_a_sandbox_issuer_file_of_an_older_version_loses_its_unkeyed_hashes(
    tmp_path: Path,
) -> None:
    state = tmp_path / "issuer.sqlite3"
    with sqlite3.connect(state) as conn:  # the old schema, with one redemption of ¥100
        conn.executescript(
            "CREATE TABLE redemptions (reference TEXT PRIMARY KEY, card_sha256 TEXT NOT NULL,"
            " amount_fen INTEGER NOT NULL CHECK (amount_fen > 0), redeemed_at TEXT NOT NULL);"
            "CREATE INDEX redemptions_by_card ON redemptions (card_sha256);"
        )
        conn.execute(
            "INSERT INTO redemptions VALUES (?, ?, ?, ?)",
            (
                "CB00000001",
                hashlib.sha256(NUMBER.encode()).hexdigest(),
                10_000,
                "2026-11-21T06:00:00.000000+00:00",
            ),
        )
    conn.close()
    vault = AesGcmVault([os.urandom(32)])
    issuer = SandboxCardIssuer(
        DEFAULT_CARDS, state, default_catalog(), FakeClock(), fingerprint=vault.fingerprint
    )
    assert (await issuer.verify("walmart", NUMBER, SECRET)).balance_fen == 40_000
    assert sha(NUMBER) not in file_bytes(state)


async def test_a_sandbox_payout_file_of_an_older_version_loses_its_unkeyed_hashes(
    tmp_path: Path,
) -> None:
    state = tmp_path / "payouts.sqlite3"
    with sqlite3.connect(state) as conn:
        conn.executescript(
            "CREATE TABLE transfers (reference TEXT PRIMARY KEY, method TEXT NOT NULL,"
            " account_sha256 TEXT NOT NULL, holder_name_sha256 TEXT NOT NULL,"
            " amount_fen INTEGER NOT NULL, state TEXT NOT NULL, provider_txn_id TEXT,"
            " failure_reason TEXT, created_at TEXT NOT NULL, completes_at TEXT,"
            " completed_at TEXT);"
            "CREATE TABLE lost_requests (reference TEXT PRIMARY KEY, lost_at TEXT NOT NULL);"
        )
        conn.execute(
            "INSERT INTO transfers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "CB00000001-P1",
                "bank",
                hashlib.sha256(BANK.encode()).hexdigest(),
                hashlib.sha256(HOLDER.encode()).hexdigest(),
                9_250,
                "succeeded",
                "T1",
                None,
                "2026-11-21T06:00:00.000000+00:00",
                None,
                "2026-11-21T06:00:00.000000+00:00",
            ),
        )
    conn.close()
    vault = AesGcmVault([os.urandom(32)])
    gateway = SandboxPayoutGateway(state, FakeClock(), fingerprint=vault.fingerprint)
    request = PayoutRequest("CB00000001-P1", PayoutMethod.BANK, BANK, HOLDER, 9_250)
    replay = await gateway.transfer(request)  # the recorded transfer, not a second one
    assert replay.provider_txn_id == "T1"
    assert len(gateway.transfers()) == 1
    stored = file_bytes(state)
    assert sha(BANK) not in stored and sha(HOLDER) not in stored
