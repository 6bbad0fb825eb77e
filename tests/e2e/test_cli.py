"""The stable command-line interfaces, run as a person (or another tool) runs them."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

CARDBOT = [sys.executable, "-m", "bot.cli"]
ROOT = Path(__file__).resolve().parents[2]


def cardbot(*args: str, var_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARDBOT_")}
    env["CARDBOT_VAR_DIR"] = str(var_dir)
    return subprocess.run(
        [*CARDBOT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def sold(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the database of one finished demo sale."""
    folder = tmp_path_factory.mktemp("demo")
    result = cardbot("demo", "--dir", str(folder), var_dir=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "【电子回单】" in result.stdout and "demo done" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    return folder


def test_the_demo_is_english_when_asked(tmp_path: Path) -> None:
    result = cardbot("demo", "--lang", "en", "--dir", str(tmp_path), var_dir=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Electronic receipt" in result.stdout


def test_orders_json_lists_the_settled_order_with_amounts_in_fen(sold: Path) -> None:
    result = cardbot("orders", "--json", var_dir=sold)
    assert result.returncode == 0, result.stderr
    [order] = json.loads(result.stdout)
    assert order["status"] == "settled"
    assert order["brand"] == "walmart"
    assert order["face_value_fen"] == 50000 and order["payout_fen"] == 45900
    assert order["channel"] == "console"
    assert isinstance(order["id"], int)
    assert order["card"].endswith("9136") and "2326081744029136" not in result.stdout


def test_orders_without_json_prints_one_line_per_order(sold: Path) -> None:
    result = cardbot("orders", var_dir=sold)
    assert result.returncode == 0
    assert "CB00000001" in result.stdout and "settled" in result.stdout


def test_db_upgrade_is_idempotent(sold: Path) -> None:
    assert cardbot("db", "upgrade", var_dir=sold).returncode == 0
    assert cardbot("db", "upgrade", var_dir=sold).returncode == 0


def test_audit_verify_passes_on_an_intact_chain_and_names_the_first_tampered_entry(
    sold: Path, tmp_path: Path
) -> None:
    ok = cardbot("audit", "verify", var_dir=sold)
    assert ok.returncode == 0, ok.stderr
    assert "intact" in ok.stdout

    tampered = tmp_path / "tampered"
    tampered.mkdir()
    with (
        sqlite3.connect(sold / "cardbot.db") as source,
        sqlite3.connect(tampered / "cardbot.db") as copy,
    ):
        source.backup(copy)
    (tampered / "data.key").write_bytes((sold / "data.key").read_bytes())
    with sqlite3.connect(tampered / "cardbot.db") as db:
        seq = db.execute("SELECT seq FROM audit_events WHERE action = 'quote.issued'").fetchone()[
            0
        ]
        db.execute(
            "UPDATE audit_events SET details = json_set(details, '$.payout_fen', 1) WHERE seq = ?",
            (seq,),
        )
    broken = cardbot("audit", "verify", var_dir=tampered)
    assert broken.returncode != 0
    assert f"event {seq}" in broken.stderr


def test_a_history_rewritten_with_fresh_hashes_fails_against_its_exported_head(
    sold: Path, tmp_path: Path
) -> None:
    head = cardbot("audit", "head", "--json", var_dir=sold)
    assert head.returncode == 0, head.stderr
    record = json.loads(head.stdout)
    anchor = f"{record['seq']}:{record['hash']}"
    assert cardbot("audit", "verify", "--anchor", anchor, var_dir=sold).returncode == 0

    rewritten = tmp_path / "rewritten"
    rewritten.mkdir()
    with (
        sqlite3.connect(sold / "cardbot.db") as source,
        sqlite3.connect(rewritten / "cardbot.db") as copy,
    ):
        source.backup(copy)
    (rewritten / "data.key").write_bytes((sold / "data.key").read_bytes())
    # Whoever rewrites the log recomputes every hash after the change: the chain is intact.
    _rewrite_with_fresh_hashes(rewritten / "cardbot.db")
    assert cardbot("audit", "verify", var_dir=rewritten).returncode == 0
    result = cardbot("audit", "verify", "--anchor", anchor, var_dir=rewritten)
    assert result.returncode == 1 and "REWRITTEN" in result.stderr
    assert cardbot("audit", "verify", "--anchor", "nonsense", var_dir=sold).returncode == 2


def _rewrite_with_fresh_hashes(path: Path) -> None:
    from datetime import UTC, datetime

    from core.audit import GENESIS_HASH, chain_hash

    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT seq, at, actor, action, subject, details FROM audit_events ORDER BY seq"
        ).fetchall()
        previous = GENESIS_HASH
        db.execute("UPDATE audit_events SET prev_hash = 'x' || seq, hash = 'y' || seq")
        for seq, at, actor, action, subject, details in rows:
            data = json.loads(details)
            if action == "quote.issued":
                data["payout_fen"] = 1
            moment = datetime.fromisoformat(at).replace(tzinfo=UTC)  # stored as naive UTC
            digest = chain_hash(previous, moment, actor, action, subject, data)
            db.execute(
                "UPDATE audit_events SET details = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (json.dumps(data), previous, digest, seq),
            )
            previous = digest


def test_bad_settings_are_reported_without_a_traceback(tmp_path: Path) -> None:
    env_result = subprocess.run(
        [*CARDBOT, "orders"],
        cwd=ROOT,
        env={**os.environ, "CARDBOT_VAR_DIR": str(tmp_path), "CARDBOT_STAFF": "nonsense"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert env_result.returncode == 2
    assert "bad settings" in env_result.stderr and "Traceback" not in env_result.stderr


def test_orders_on_a_fresh_machine_says_there_are_none(tmp_path: Path) -> None:
    result = cardbot("orders", var_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no orders" in result.stdout
    assert json.loads(cardbot("orders", "--json", var_dir=tmp_path).stdout) == []
