"""Data-key rotation as an operator runs it: after ``cardbot keys rotate`` and ``cardbot keys
prune`` (the old key gone), every record still opens and every fingerprint still matches — on
SQLite and PostgreSQL; and while bots run (app instances on the same database and key file,
as separate processes would be), rotation and pruning wait for them instead of stranding what
they read or seal.

Running bots here refresh their key generation only when a test says so, on clocks the test
holds (``FROZEN``): nothing depends on how fast the machine is."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from bot import keys
from bot.app import build_app
from bot.cli import main
from bot.settings import Settings
from core.sealing import card_context, user_context
from storage.crypto import AesGcmVault, load_vault
from storage.keyring import KeyGenerationStale, KeyGenerationUnknown, LeasePolicy
from storage.tables import CardRow
from tests.e2e.conftest import Harness
from tests.e2e.test_console_sale import (
    ID_NUMBER,
    NAME,
    WALMART,
    card_photo,
    identity_and_payout,
    sell_until_quote,
)


def _key_ids(key_file: Path) -> list[str]:
    return json.loads(key_file.read_text())["keys"]


@pytest.fixture
def operator(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment `cardbot` commands run with; returns the key file."""
    for name in list(os.environ):
        if name.startswith("CARDBOT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CARDBOT_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CARDBOT_DATABASE_URL", database_url)
    monkeypatch.setenv("CARDBOT_DATA_KEY_FILE", str(tmp_path / "data.key"))
    return tmp_path / "data.key"


async def _sell_and_leave_one_half_way(tmp_path: Path, database_url: str) -> Harness:
    """One settled sale, and a second person stopped after typing their name (a sealed value
    in conversation state)."""
    h = Harness(tmp_path, database_url)
    await h.start()
    await sell_until_quote(h, card_photo(tmp_path, WALMART[0]), WALMART[1])
    await identity_and_payout(h)
    await h.close()
    h.user = "bob"
    await h.start()
    await sell_until_quote(h, card_photo(tmp_path, "2326081744155261"), "246802")
    await h.choose("quote.accept")
    await h.choose("consent.yes")
    await h.say(NAME)
    await h.close()
    return h


async def test_rotate_restart_prune_keeps_every_record_readable(
    tmp_path: Path, database_url: str, operator: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = await _sell_and_leave_one_half_way(tmp_path, database_url)
    [original] = _key_ids(operator)
    assert await _run("keys", "status") == 0

    assert await _run("keys", "rotate") == 0
    keys = _key_ids(operator)
    assert len(keys) == 2 and keys[1] == original
    out = capsys.readouterr().out
    assert "re-encrypted cards.number_enc" in out and "re-encrypted conversations" in out

    # The bots restart with the new key; then the old key goes.
    assert await _run("keys", "prune") == 0
    [new] = _key_ids(operator)
    assert new != original

    # Everything still opens with the new key alone, and fingerprints did not move.
    vault = load_vault(None, operator)
    assert len(vault.key_ids) == 1
    await h.start()
    assert h.app is not None
    async with h.app.uow_factory() as uow:
        [order] = [o for o in await uow.orders.recent() if o.status.value == "settled"]
        user = await uow.users.get(order.user_id)
        assert user.id_number_enc is not None
        assert vault.decrypt(user.id_number_enc, user_context(user.id, "id_number")) == ID_NUMBER
        assert user.id_number_fp == vault.fingerprint("id_number", ID_NUMBER)
    # Bob carries on where he stopped: his sealed name opens under the new key.
    await h.close()
    h.user = "bob"
    await h.start()
    await h.say(ID_NUMBER)
    assert "手机" in h.text()
    await h.close()
    assert await _run("keys", "status") == 0


async def test_a_value_sealed_with_a_key_that_is_gone_is_reported(
    tmp_path: Path, database_url: str, operator: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _sell_and_leave_one_half_way(tmp_path, database_url)
    # Throw the key away without rotating: status must say the records no longer open.
    content = json.loads(operator.read_text())
    content["keys"] = [base64.b64encode(os.urandom(32)).decode()]
    operator.write_text(json.dumps(content))
    assert await _run("keys", "status") == 1
    assert "do NOT open" in capsys.readouterr().out
    assert await _run("keys", "prune") == 0  # a single key: nothing to prune, nothing touched


async def test_rotating_env_keys_refuses_while_fingerprints_hang_on_the_old_key(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("CARDBOT_"):
            monkeypatch.delenv(name)
    old = base64.b64encode(os.urandom(32)).decode()
    new = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("CARDBOT_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CARDBOT_DATABASE_URL", database_url)
    monkeypatch.setenv("CARDBOT_DATA_KEY", new)
    monkeypatch.setenv("CARDBOT_DATA_KEYS_OLD", old)
    assert await _run("db", "upgrade") == 0
    assert await _run("keys", "rotate") == 2
    pinned = load_vault(old, tmp_path / "unused.key").export_fingerprint_key()
    monkeypatch.setenv("CARDBOT_FINGERPRINT_KEY", pinned)
    assert await _run("keys", "rotate") == 0


async def _run(*argv: str) -> int:
    """Run a `cardbot` command in a worker thread (it runs its own event loop)."""
    import asyncio

    return await asyncio.to_thread(main, list(argv))


# --------------------------------------------------------------------------------------------
# Rotation and pruning while bots run

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
FROZEN = LeasePolicy(refresh_seconds=None, now=lambda: NOW, monotonic=lambda: 0.0)


def _at(moment: datetime) -> keys.Now:
    return lambda: moment


async def _rotate(wait: float = 0) -> int:
    return await keys.rotate(Settings(), wait_seconds=wait, now=_at(NOW))


async def _prune(at: datetime = NOW) -> int:
    return await keys.prune(Settings(), now=_at(at))


def _bot(tmp_path: Path, database_url: str, user: str) -> Harness:
    h = Harness(tmp_path, database_url, key_lease=FROZEN)
    h.user = user
    return h


async def _sealed_keys(h: Harness) -> set[str]:
    """The ids of the keys the sealed card numbers and secrets in the database are under."""
    assert h.app is not None
    async with h.app.uow_factory.engine.connect() as conn:
        rows = (await conn.execute(select(CardRow.number_enc, CardRow.secret_enc))).all()
    return {AesGcmVault.key_of(bytes(blob)) for row in rows for blob in row if blob is not None}


async def _pay_to_the_remembered_account(h: Harness) -> None:
    await h.choose("quote.accept")
    [saved] = [o.id for r in h.last for o in r.options if o.id.startswith("account.")]
    await h.choose(saved)
    await h.choose("pay.confirm")


async def test_rotating_while_a_bot_runs_leaves_its_sale_readable(
    tmp_path: Path,
    database_url: str,
    operator: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: rotate re-encrypted the card under a key the running bot did not have, and the
    sale failed at the payout on every try (DecryptionError)."""
    bot = _bot(tmp_path, database_url, "alice")
    await bot.start()
    try:
        await sell_until_quote(bot, card_photo(tmp_path, WALMART[0]), WALMART[1])
        [original] = _key_ids(operator)

        # The bot has not picked up the new key: nothing is re-encrypted under it yet.
        assert await _rotate() == 1
        err = capsys.readouterr().err
        assert "1 running process(es) have not picked up key" in err
        assert len(_key_ids(operator)) == 2
        assert await _sealed_keys(bot) == {load_vault(None, operator).key_ids[1]}

        # The sale goes on and settles: the bot opens everything it needs.
        await identity_and_payout(bot)
        assert "【电子回单】" in bot.text()

        # Its next refresh picks up the new key; prune then re-encrypts and drops the old one.
        assert bot.app is not None and bot.app.keyring is not None
        await bot.app.keyring.refresh()
        new_key = load_vault(None, operator).primary_key_id
        assert bot.app.keyring.sealing_key_id == new_key
        assert await _prune() == 0
        assert _key_ids(operator) != [original] and len(_key_ids(operator)) == 1
        assert await _sealed_keys(bot) == {new_key}

        # A second sale on the same running bot seals and pays with the new key alone.
        await sell_until_quote(bot, card_photo(tmp_path, "2326081744155261"), "246802")
        await _pay_to_the_remembered_account(bot)
        assert "【电子回单】" in bot.text()
        assert await _sealed_keys(bot) == {new_key}
    finally:
        await bot.close()
    assert await _run("keys", "status") == 0


async def test_prune_is_refused_while_a_bot_still_seals_with_the_old_key(
    tmp_path: Path,
    database_url: str,
    operator: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: prune removed the old key while a bot that had not been restarted went on
    sealing with it — values nobody could open any more."""
    alice, bob = _bot(tmp_path, database_url, "alice"), _bot(tmp_path, database_url, "bob")
    await alice.start()
    await bob.start()
    try:
        assert await _rotate() == 1
        assert alice.app is not None and alice.app.keyring is not None
        assert bob.app is not None and bob.app.keyring is not None
        file_keys = load_vault(None, operator)
        old_key, new_key = file_keys.key_ids[1], file_keys.primary_key_id
        # Alice's process re-reads the key file, but seals with the new key only once bob's
        # can open it too.
        await alice.app.keyring.refresh()
        assert new_key in alice.app.keyring.key_ids
        assert alice.app.keyring.sealing_key_id == old_key

        assert await _prune() == 1
        assert "2 running process(es) still hold an older key generation" in (
            capsys.readouterr().err
        )
        assert len(_key_ids(operator)) == 2  # nothing removed

        # Bob's process seals with the old key meanwhile; it still opens with the file's keys.
        await sell_until_quote(bob, card_photo(tmp_path, WALMART[0]), WALMART[1])
        assert await _sealed_keys(bob) == {old_key}
        assert await _run("keys", "status") == 0

        # Once both have caught up, prune re-encrypts what bob's sealed and removes the old key.
        await bob.app.keyring.refresh()
        assert bob.app.keyring.sealing_key_id == load_vault(None, operator).primary_key_id
        assert await _prune() == 1  # alice's process has not switched yet
        await alice.app.keyring.refresh()
        assert await _prune() == 0
        [kept] = _key_ids(operator)
        assert await _sealed_keys(bob) == {load_vault(None, operator).primary_key_id}
        await identity_and_payout(bob)
        assert "【电子回单】" in bob.text()
        # The other process seals with the kept key too.
        await sell_until_quote(alice, card_photo(tmp_path, "2326081744155261"), "246802")
        assert old_key not in await _sealed_keys(alice)
    finally:
        await alice.close()
        await bob.close()
    assert await _run("keys", "status") == 0
    assert _key_ids(operator) == [kept]


async def test_a_bot_silent_past_its_lease_stops_sealing_and_no_longer_holds_prune_back(
    tmp_path: Path, database_url: str, operator: Path
) -> None:
    """A process that could not confirm its generation for a whole lease (a database outage,
    a frozen process) seals nothing until it has; prune then no longer waits for it."""
    monotonic = [0.0]
    lease = LeasePolicy(refresh_seconds=None, now=lambda: NOW, monotonic=lambda: monotonic[0])
    bot = Harness(tmp_path, database_url, key_lease=lease)
    await bot.start()
    try:
        assert await _rotate() == 1
        assert bot.app is not None and bot.app.keyring is not None
        vault = bot.app.keyring
        vault.encrypt("6222020200112233445", card_context(1, "number"))  # within its lease

        monotonic[0] += lease.lease_seconds
        with pytest.raises(KeyGenerationStale):
            vault.encrypt("6222020200112233445", card_context(1, "number"))
        # Seen from another host a little later (clock skew allowed for), it no longer counts.
        assert await _prune(NOW + timedelta(seconds=lease.lease_seconds)) == 1
        assert await _prune(NOW + timedelta(seconds=lease.lease_seconds + 61)) == 0

        # Its next successful refresh moves it to the newest generation before it seals again.
        await vault.refresh()
        sealed = vault.encrypt("6222020200112233445", card_context(1, "number"))
        assert load_vault(None, operator).decrypt(sealed, card_context(1, "number"))
    finally:
        await bot.close()


async def test_a_bot_with_environment_keys_holds_rotation_back_until_it_restarts_with_them(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process cannot re-read CARDBOT_DATA_KEY: rotate waits for it to be restarted with the
    new key instead of re-encrypting what it must still open."""
    for name in list(os.environ):
        if name.startswith("CARDBOT_"):
            monkeypatch.delenv(name)
    old, new = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    pinned = load_vault(old, tmp_path / "unused.key").export_fingerprint_key()

    def settings(data_key: str, old_keys: str | None = None) -> Settings:
        return Settings(
            var_dir=tmp_path / "var",
            database_url=database_url,
            data_key=data_key,
            data_keys_old=old_keys,
            fingerprint_key=pinned,
        )

    running = await build_app(settings(old), key_lease=FROZEN, migrate=True)
    try:
        assert running.keyring is not None
        monkeypatch.setenv("CARDBOT_VAR_DIR", str(tmp_path / "var"))
        monkeypatch.setenv("CARDBOT_DATABASE_URL", database_url)
        monkeypatch.setenv("CARDBOT_DATA_KEY", new)
        monkeypatch.setenv("CARDBOT_DATA_KEYS_OLD", old)
        monkeypatch.setenv("CARDBOT_FINGERPRINT_KEY", pinned)
        assert await _rotate() == 1
        await running.keyring.refresh()  # it cannot pick the new key up from its environment
        assert running.keyring.sealing_key_id == load_vault(old, tmp_path / "x").primary_key_id
        assert await _rotate() == 1

        # A process started with only the old key now would not open what the others seal.
        with pytest.raises(KeyGenerationUnknown, match="cardbot keys rotate"):
            await build_app(settings(old), key_lease=FROZEN)
    finally:
        await running.close()
    restarted = await build_app(settings(new, old), key_lease=FROZEN)
    try:
        assert await _rotate() == 0
    finally:
        await restarted.close()
