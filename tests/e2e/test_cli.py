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


def cardbot(
    *args: str, var_dir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CARDBOT, *args],
        cwd=ROOT,
        env=_env(var_dir, env),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _env(var_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARDBOT_")}
    env["CARDBOT_VAR_DIR"] = str(var_dir)
    return {**env, **(extra or {})}


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


def test_orders_on_a_fresh_database_says_there_are_none(tmp_path: Path) -> None:
    assert cardbot("db", "upgrade", var_dir=tmp_path).returncode == 0
    result = cardbot("orders", var_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no orders" in result.stdout
    assert json.loads(cardbot("orders", "--json", var_dir=tmp_path).stdout) == []


# --------------------------------------------------------------------------------------------
# Operator traps: each ends in one line on stderr and a non-zero exit, never a traceback.


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cardbot: ")
    return lines[0]


COMMANDS_ON_AN_EXISTING_DATABASE = [
    ("audit", "verify"),
    ("audit", "head"),
    ("orders",),
    ("orders", "--json"),
    ("keys", "status"),
    ("keys", "rotate"),
    ("keys", "prune"),
    ("review", "list"),
    ("review", "approve", "CB00000001"),
    ("prices", "list"),
    ("risk", "blacklist", "list"),
    ("chat",),
]


@pytest.mark.parametrize("command", COMMANDS_ON_AN_EXISTING_DATABASE, ids=" ".join)
def test_a_mistyped_sqlite_path_is_refused_instead_of_becoming_an_empty_database(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """Before: `audit verify` on a typo made a new empty database and said 'intact: 0
    events', exit 0."""
    typo = tmp_path / "cardbto.db"
    result = cardbot(
        *command, var_dir=tmp_path, env={"CARDBOT_DATABASE_URL": f"sqlite+aiosqlite:///{typo}"}
    )
    line = one_line_error(result)
    assert result.returncode == 2
    assert f"no database at {typo}" in line and "cardbot db upgrade" in line
    assert not typo.exists() and not (tmp_path / "data.key").exists()


def test_db_upgrade_creates_the_database_that_other_commands_refuse(tmp_path: Path) -> None:
    env = {"CARDBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'new' / 'cardbot.db'}"}
    assert cardbot("audit", "verify", var_dir=tmp_path, env=env).returncode == 2
    assert cardbot("db", "upgrade", var_dir=tmp_path, env=env).returncode == 0
    verified = cardbot("audit", "verify", var_dir=tmp_path, env=env)
    assert verified.returncode == 0 and "intact: 0 events" in verified.stdout


def test_an_empty_file_is_not_taken_for_a_cardbot_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    env = {"CARDBOT_DATABASE_URL": f"sqlite+aiosqlite:///{empty}"}
    assert "holds no cardbot tables" in one_line_error(
        cardbot("orders", var_dir=tmp_path, env=env)
    )


SECRET = "s3cret-pw"


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        f"postgres://cardbot:{SECRET}@db.internal/cardbot",
        f"postgresql://cardbot:{SECRET}@127.0.0.1/cardbot",
        f"mysql+aiomysql://cardbot:{SECRET}@127.0.0.1/cardbot",
        "sqlite:///var/cardbot.db",
    ],
)
def test_a_malformed_database_url_is_one_line_without_its_password(
    tmp_path: Path, url: str
) -> None:
    line = one_line_error(cardbot("orders", var_dir=tmp_path, env={"CARDBOT_DATABASE_URL": url}))
    assert "database URL" in line and "postgresql+asyncpg://" in line
    assert SECRET not in line


@pytest.mark.parametrize(
    "command",
    [("orders",), ("audit", "verify"), ("db", "upgrade"), ("run", "telegram")],
    ids=" ".join,
)
def test_an_unreachable_postgresql_is_one_line_without_its_password(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    env = {
        "CARDBOT_DATABASE_URL": f"postgresql+asyncpg://cardbot:{SECRET}@127.0.0.1:1/cardbot",
        "TELEGRAM_BOT_TOKEN": "123456:test-token",
    }
    line = one_line_error(cardbot(*command, var_dir=tmp_path, env=env))
    assert "cannot reach the database at postgresql+asyncpg://cardbot:***@127.0.0.1:1" in line
    assert SECRET not in line


@pytest.mark.skipif(not os.environ.get("CARDBOT_TEST_DATABASE_URL"), reason="needs PostgreSQL")
def test_a_postgresql_database_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    server = make_url(os.environ["CARDBOT_TEST_DATABASE_URL"])
    missing = server.set(database="cardbot_no_such_database").render_as_string(hide_password=False)
    line = one_line_error(
        cardbot("orders", var_dir=tmp_path, env={"CARDBOT_DATABASE_URL": missing})
    )
    assert "no database at" in line and "cardbot_no_such_database" in line


@pytest.mark.parametrize("args", [("orders",), ("orders", "--json")], ids=" ".join)
def test_output_closed_early_ends_in_one_line_not_a_traceback(
    sold: Path, args: tuple[str, ...]
) -> None:
    """`cardbot orders | head`: the reader is gone before cardbot writes (closed here before
    it even starts, so the outcome does not depend on timing)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [*CARDBOT, *args],
            cwd=ROOT,
            env=_env(sold),
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert "output was closed" in one_line_error(result)
