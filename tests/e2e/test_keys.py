"""Data-key rotation as an operator runs it: after ``cardbot keys rotate``, a restart and
``cardbot keys prune`` (the old key gone), every record still opens and every fingerprint
still matches — on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from bot.cli import main
from core.sealing import user_context
from storage.crypto import load_vault
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
