"""Attack: read people's real names out of the database (PIPL personal data).

Names were kept in plaintext in ``users.real_name`` and ``payout_accounts.holder_name`` while the
ID number beside them was sealed. Now they are sealed too (a masked ``王*`` for display), key
rotation rewraps them, and migration 0009 seals the names an older version stored — with the
bots' key, or not at all: without a key it refuses and changes nothing."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from core.sealing import account_context, holder_context, user_context
from storage.crypto import AesGcmVault
from storage.db import SqlAlchemyUnitOfWorkFactory
from storage.migrate import MigrationNeedsKey, downgrade_async, upgrade_async
from storage.rekey import census
from tests.conftest import Database

NAME, HOLDER = "欧阳娜娜", "欧阳娜娜"
T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)


async def old_database_with_a_name(database: Database, vault: AesGcmVault) -> None:
    """A database as version 0007 left it: a verified person and a payout account, named."""
    await upgrade_async(database.engine, "0007")
    async with database.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (id, created_at, language, real_name, kyc_level)"
                " VALUES (1, :t, 'zh', :name, 1)"
            ),
            {"t": T0, "name": NAME},
        )
        await conn.execute(
            text(
                "INSERT INTO payout_accounts (id, user_id, method, account_enc, account_fp,"
                " account_masked, holder_name, created_at)"
                " VALUES (7, 1, 'alipay', :enc, 'fp', 'l***@example.com', :name, :t)"
            ),
            {
                "t": T0,
                "name": HOLDER,
                "enc": vault.encrypt("lilei@example.com", account_context(7)),
            },
        )


async def everything_stored(database: Database) -> bytes:
    """Every value of every table (and, on SQLite, the raw file with its WAL)."""
    async with database.engine.connect() as conn:
        names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        rows = []
        for name in names:
            rows += [repr(tuple(r)) for r in await conn.execute(text(f'SELECT * FROM "{name}"'))]
    out = "\n".join(rows).encode()
    if database.sqlite_path is not None:
        await database.engine.dispose()
        for path in database.sqlite_path.parent.glob(database.sqlite_path.name + "*"):
            out += path.read_bytes()
    return out


async def test_names_an_older_version_stored_are_sealed_by_the_upgrade(
    database: Database,
) -> None:
    old_key = os.urandom(32)
    vault = AesGcmVault([old_key])
    await old_database_with_a_name(database, vault)
    await upgrade_async(database.engine, vault=vault)
    stored = await everything_stored(database)
    assert NAME.encode() not in stored and HOLDER.encode() not in stored
    async with database.engine.connect() as conn:
        user = (
            await conn.execute(text("SELECT real_name_enc, real_name_masked FROM users"))
        ).one()
        account = (
            await conn.execute(
                text("SELECT holder_name_enc, holder_name_masked FROM payout_accounts")
            )
        ).one()
    assert vault.decrypt(bytes(user[0]), user_context(1, "real_name")) == NAME
    assert vault.decrypt(bytes(account[0]), holder_context(7)) == HOLDER
    assert user[1] == "欧***" and account[1] == "欧***"
    # Key rotation covers them: a census opens both, a rotation rewraps both.
    rotated = AesGcmVault([os.urandom(32), old_key])
    result = await census(SqlAlchemyUnitOfWorkFactory(database.engine), rotated, rewrap=True)
    assert result.broken == []
    assert result.rewrapped["users.real_name_enc"] == 1
    assert result.rewrapped["payout_accounts.holder_name_enc"] == 1
    # And the downgrade gives them back, with the key.
    await downgrade_async(database.engine, "0007", vault=rotated)
    async with database.engine.connect() as conn:
        assert (await conn.execute(text("SELECT real_name FROM users"))).scalar_one() == NAME


async def test_an_upgrade_that_must_seal_names_without_a_key_refuses_and_changes_nothing(
    database: Database,
) -> None:
    await old_database_with_a_name(database, AesGcmVault([os.urandom(32)]))
    with pytest.raises(MigrationNeedsKey):
        await upgrade_async(database.engine)
    async with database.engine.connect() as conn:
        assert (await conn.execute(text("SELECT real_name FROM users"))).scalar_one() == NAME
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    assert version == "0007"


async def test_an_empty_database_upgrades_without_a_key(database: Database) -> None:
    await upgrade_async(database.engine)


async def test_cardbot_db_upgrade_seals_with_the_bots_key_and_never_makes_up_a_new_one(
    tmp_path: Path,
) -> None:
    from storage.crypto import load_vault
    from storage.db import make_engine
    from tests.e2e.test_cli import cardbot

    var = tmp_path / "var"
    path = var / "cardbot.db"
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    try:
        vault = load_vault(None, var / "elsewhere.key")  # the bots' key, kept elsewhere
        await old_database_with_a_name(Database("sqlite", "", engine, path), vault)
    finally:
        await engine.dispose()

    refused = cardbot("db", "upgrade", var_dir=var)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr and "data key" in refused.stderr
    assert not (var / "data.key").exists()  # no new key was made up to seal with
    assert NAME.encode() in path.read_bytes()  # nothing changed

    (var / "elsewhere.key").rename(var / "data.key")
    done = cardbot("db", "upgrade", var_dir=var)
    assert done.returncode == 0, done.stdout + done.stderr
    stored = b"".join(p.read_bytes() for p in var.glob("cardbot.db*"))
    assert NAME.encode() not in stored
