"""A card secret, card number, real name, ID number, phone and payout account given in a sale
appear nowhere in plaintext: not in the database (SQLite's file and WAL, or every row of every
table on PostgreSQL), not in the logs, not in the sandbox state."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from bot.logs import configure_logging
from tests.e2e.conftest import Harness

NUMBER, SECRET = "2326081744155261", "246802"
NAME, ID_NUMBER, PHONE, ACCOUNT = (
    "欧阳娜娜",
    "440524198001010013",
    "13698765432",
    "6222021234567890128",
)
ALIPAY = "nana.pays@example.com"


async def rows_of_every_table(h: Harness) -> bytes:
    assert h.app is not None
    async with h.app.uow_factory.engine.connect() as conn:
        names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        rows = []
        for name in names:
            for row in await conn.execute(text(f'SELECT * FROM "{name}"')):
                rows += [_readable(value) for value in row]
    return "\n".join(rows).encode()


def _readable(value: object) -> str:
    """A column's value as text, JSON unescaped (SQLite keeps 欧 as \\u6b27 in JSON)."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.dumps(json.loads(value), ensure_ascii=False)
        except ValueError:
            return value
    return value if isinstance(value, str) else repr(value)


async def test_secrets_names_and_accounts_never_reach_the_database_or_the_logs(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    log_file = tmp_path / "cardbot.log"
    configure_logging("DEBUG", log_file)
    caplog.set_level(logging.DEBUG)
    h = Harness(tmp_path, database_url)
    await h.start()
    try:
        for line in ["/start", NUMBER, SECRET, "1", "1", NAME, ID_NUMBER, PHONE]:
            await h.say(line)
        await h.choose("method.bank")
        await h.say(ACCOUNT)
        await h.choose("pay.confirm")
        assert "【电子回单】" in h.text()
        # A payout account typed in free text, at the menu: kept for staff, masked.
        await h.say(f"下次请打到我的支付宝 {ALIPAY}")
        stored = await rows_of_every_table(h)
    finally:
        await h.close()
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "_cardbot", False):
                logging.getLogger().removeHandler(handler)
                handler.close()

    for path in [*tmp_path.rglob("*.db*"), *tmp_path.rglob("*.sqlite3*")]:
        stored += path.read_bytes()  # SQLite's files, and the sandbox state on both
    logs = log_file.read_text(encoding="utf-8") + caplog.text
    assert stored and "inbound" in logs  # the data and the logs really were written
    assert b"n***@example.com" in stored  # the masked e-mail is there: the scan sees the rows
    for value in (NUMBER, SECRET, NAME, ID_NUMBER, PHONE, ACCOUNT, ALIPAY):
        assert value.encode() not in stored, f"{value} in the database"
        assert value not in logs, f"{value} in the logs"
    # Nor in what staff or the user are shown after capture: only masks.
    shown = "\n".join(h.transcript)
    for value in (ID_NUMBER, ACCOUNT, NAME):
        assert value not in shown, value
