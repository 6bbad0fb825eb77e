"""A card secret, card number, ID number, phone and payout account given in a sale appear
nowhere in plaintext: not in the database, not in the logs, not in the sandbox state."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.logs import configure_logging
from tests.e2e.conftest import Harness

NUMBER, SECRET = "2326081744155261", "246802"
ID_NUMBER, PHONE, ACCOUNT = "440524198001010013", "13698765432", "6222021234567890128"


@pytest.fixture
def sqlite_only(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{(tmp_path / 'cardbot.db').as_posix()}"


async def test_secrets_and_id_numbers_never_reach_the_database_or_the_logs(
    tmp_path: Path, sqlite_only: str, caplog: pytest.LogCaptureFixture
) -> None:
    log_file = tmp_path / "cardbot.log"
    configure_logging("DEBUG", log_file)
    caplog.set_level(logging.DEBUG)
    h = Harness(tmp_path, sqlite_only)
    await h.start()
    try:
        for line in ["/start", NUMBER, SECRET, "1", "1", "王芳", ID_NUMBER, PHONE]:
            await h.say(line)
        await h.choose("method.bank")
        await h.say(ACCOUNT)
        await h.choose("pay.confirm")
        assert "【电子回单】" in h.text()
    finally:
        await h.close()
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "_cardbot", False):
                logging.getLogger().removeHandler(handler)
                handler.close()

    stored = b""
    for path in [*tmp_path.rglob("*.db*"), *tmp_path.rglob("*.sqlite3*")]:
        stored += path.read_bytes()
    logs = log_file.read_text(encoding="utf-8") + caplog.text
    assert stored and "inbound" in logs  # the files and the logs really were written
    for value in (NUMBER, SECRET, ID_NUMBER, PHONE, ACCOUNT):
        assert value.encode() not in stored, f"{value} in the database"
        assert value not in logs, f"{value} in the logs"
    # Nor in what staff or the user are shown after capture: only masks.
    assert ID_NUMBER not in "\n".join(h.transcript)
    assert ACCOUNT not in "\n".join(h.transcript)
