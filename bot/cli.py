"""The ``cardbot`` command line."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bot.settings import Settings

if TYPE_CHECKING:
    from storage.db import SqlAlchemyUnitOfWorkFactory


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cardbot`` console script. What an operator can get wrong (bad
    settings or keys, a database that is missing, malformed or unreachable, output closed
    early as in ``cardbot orders | head``) ends in one line on stderr and a non-zero exit."""
    from bot.app import ConfigError
    from bot.files import private_umask
    from storage.crypto import KeyConfigError
    from storage.db import DatabaseUnavailable
    from storage.migrate import MigrationNeedsKey

    private_umask()  # before anything is written: the database, logs, keys are the owner's
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except (ConfigError, KeyConfigError, DatabaseUnavailable, MigrationNeedsKey) as exc:
        print(f"cardbot: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _discard_stdout()
        print("cardbot: the output was closed before it was all written", file=sys.stderr)
        return 1


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="cardbot", description="Buy back gift cards by chat.")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="talk to cardbot in this terminal (the console channel)")
    chat.add_argument("--user", default="console-user", help="console user id")
    chat.add_argument("--lang", choices=("zh", "en"), default="zh")

    demo = sub.add_parser("demo", help="play a whole scripted sale and print its receipt")
    demo.add_argument("--lang", choices=("zh", "en"), default="zh")
    demo.add_argument("--dir", help="keep the demo's database and files here")

    scan = sub.add_parser("scan", help="what vision reads in each photo")
    scan.add_argument("images", nargs="+")
    scan.add_argument("--json", action="store_true")

    run_cmd = sub.add_parser("run", help="run the bots (Telegram, WeChat, or both)")
    run_cmd.add_argument("channel", choices=("telegram", "wechat", "all"))
    run_cmd.add_argument("--host", default="127.0.0.1", help="address of the HTTP server")
    run_cmd.add_argument("--port", type=int, default=8080, help="port of the HTTP server")
    run_cmd.add_argument(
        "--webhook", metavar="URL", help="Telegram: receive updates at this URL (default: poll)"
    )

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply migrations up to the newest")

    audit = sub.add_parser("audit", help="the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain; exit 0 when intact")
    verify.add_argument("--anchor", help="SEQ:HASH from an earlier `audit head`")
    head = audit_sub.add_parser("head", help="the newest event's hash, to anchor outside")
    head.add_argument("--json", action="store_true")

    keys = sub.add_parser("keys", help="data keys: status, rotation (see bot/keys.py)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_sub.add_parser("status", help="open every sealed value; which key each needs")
    rotate = keys_sub.add_parser("rotate", help="new primary key; re-encrypt every sealed value")
    rotate.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long to wait for the running bots to pick up the new key (default: 50)",
    )
    keys_sub.add_parser("prune", help="after rotate and a restart: remove the old keys")
    keys_sub.add_parser("fingerprint-key", help="print the fingerprint key (operator secret)")

    review_cmd = sub.add_parser("review", help="the manual-review queue (see bot/ops.py)")
    review_sub = review_cmd.add_subparsers(dest="review_command", required=True)
    review_list = review_sub.add_parser("list", help="orders waiting for review, oldest first")
    review_list.add_argument("--json", action="store_true")
    for verb in ("approve", "reject"):
        decide = review_sub.add_parser(verb, help=f"{verb} an order under review")
        decide.add_argument("order", help="order number (CB00000012) or id")
        decide.add_argument("--note", default="", help="shown to the user (required to reject)")
        decide.add_argument("--by", default="operator", help="who decides (kept in the audit)")

    prices = sub.add_parser("prices", help="versioned rate tables (see bot/rates.toml)")
    prices_sub = prices.add_subparsers(dest="prices_command", required=True)
    imp = prices_sub.add_parser("import", help="import a rate table (TOML or CSV)")
    imp.add_argument("file")
    imp.add_argument("--from", dest="effective", help="ISO time with zone; default: now")
    imp.add_argument("--version", help="the table's version (required for CSV)")
    imp.add_argument("--by", default="operator")
    imp.add_argument(
        "--replace",
        action="store_true",
        help="the file is the whole table: brands it leaves out are no longer bought "
        "(default: they keep their current rates)",
    )
    prices_sub.add_parser("list", help="imported tables, newest first")

    risk_cmd = sub.add_parser("risk", help="risk controls")
    risk_sub = risk_cmd.add_subparsers(dest="risk_command", required=True)
    black = risk_sub.add_parser("blacklist", help="IDs, payout accounts, cards refused")
    black.add_argument("action", choices=("add", "remove", "list"))
    what = black.add_mutually_exclusive_group()
    what.add_argument("--id", dest="id_number", help="a resident ID number")
    what.add_argument("--account", help="METHOD:ACCOUNT, e.g. alipay:name@example.com")
    what.add_argument("--card", help="a card number")
    black.add_argument("--reason", default="")
    black.add_argument("--by", default="operator")

    orders = sub.add_parser("orders", help="orders, newest first")
    orders.add_argument("--json", action="store_true")
    orders.add_argument("--limit", type=int, default=100)

    from bot.reconcile import add_parsers as add_reconcile_parsers

    add_reconcile_parsers(sub)  # reconcile FILE, sandbox statement

    args = parser.parse_args(argv)
    if args.command == "scan":
        from vision.cli import scan_main

        return scan_main(list(args.images), as_json=bool(args.json))
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"cardbot: bad settings: {exc}", file=sys.stderr)
        return 2
    if args.command == "db":
        from bot.keys import migration_vault
        from storage.db import probe_database
        from storage.migrate import upgrade

        asyncio.run(probe_database(settings.resolved_database_url, must_exist=False))
        upgrade(settings.resolved_database_url, vault=migration_vault(settings))
        print("database is up to date")
        return 0
    if args.command == "run":
        from bot.runtime import CHANNELS, RunOptions, run

        channels = CHANNELS if args.channel == "all" else (args.channel,)
        options = RunOptions(host=args.host, port=args.port, webhook=args.webhook)
        return asyncio.run(run(settings, channels, options))
    if args.command == "chat":
        from bot.chat import run_chat

        return asyncio.run(run_chat(settings, args.user, args.lang))
    if args.command == "demo":
        from bot.demo import run_demo

        return asyncio.run(run_demo(args.lang, args.dir))
    if args.command == "audit":
        if args.audit_command == "head":
            return asyncio.run(_audit_head(settings, bool(args.json)))
        return asyncio.run(_audit_verify(settings, args.anchor))
    if args.command == "keys":
        from bot import keys as key_commands

        if args.keys_command == "fingerprint-key":
            return key_commands.fingerprint_key(settings)
        if args.keys_command == "rotate":
            wait = key_commands.DEFAULT_WAIT_SECONDS if args.wait is None else args.wait
            return asyncio.run(key_commands.rotate(settings, wait_seconds=max(0.0, wait)))
        command = {"status": key_commands.status, "prune": key_commands.prune}
        return asyncio.run(command[args.keys_command](settings))
    if args.command == "review":
        from bot import ops

        if args.review_command == "list":
            return asyncio.run(ops.review_list(settings, bool(args.json)))
        approve = args.review_command == "approve"
        return asyncio.run(
            ops.review_decide(settings, args.order, approve, args.note, f"staff:{args.by}")
        )
    if args.command == "prices":
        from bot import ops

        if args.prices_command == "list":
            return asyncio.run(ops.prices_list(settings))
        return asyncio.run(
            ops.prices_import(
                settings,
                args.file,
                args.effective,
                args.version,
                f"staff:{args.by}",
                replace_all=args.replace,
            )
        )
    if args.command == "risk":
        from bot import ops

        kind, value = next(
            (
                (k, v)
                for k, v in (
                    ("id_number", args.id_number),
                    ("payout_account", args.account),
                    ("card", args.card),
                )
                if v
            ),
            (None, None),
        )
        return asyncio.run(
            ops.blacklist(settings, args.action, kind, value, args.reason, f"staff:{args.by}")
        )
    if args.command == "orders":
        return asyncio.run(_orders(settings, bool(args.json), int(args.limit)))
    if args.command in ("reconcile", "sandbox"):
        from bot.reconcile import run_parsed

        return run_parsed(settings, args)
    parser.error(f"unknown command {args.command}")
    return 2


async def _open(settings: Settings) -> SqlAlchemyUnitOfWorkFactory:
    """Storage for a one-off command: the database must exist (``bot.keys.storage_for``)."""
    from bot.keys import storage_for

    return await storage_for(settings)


async def _audit_verify(settings: Settings, anchor: str | None) -> int:
    """Check every link; with ``anchor`` (``SEQ:HASH`` from an earlier ``audit head``), also
    that history up to it was not rewritten wholesale (a chain recomputed after tampering is
    intact in itself, but no longer holds the anchored hash)."""
    from core.audit import verify_chain

    anchored: tuple[int, str] | None = None
    if anchor is not None:
        seq_text, _, hash_text = anchor.partition(":")
        if not seq_text.isdigit() or len(hash_text) != 64:
            print("cardbot: --anchor takes SEQ:HASH as `audit head` prints it", file=sys.stderr)
            return 2
        anchored = (int(seq_text), hash_text.lower())
    factory = await _open(settings)
    try:
        async with factory() as uow:
            events = list(await uow.audit.all())
    finally:
        await factory.dispose()
    broken = verify_chain(events)
    if broken is not None:
        print(f"audit chain BROKEN at event {broken}", file=sys.stderr)
        return 1
    if anchored is not None:
        seq, expected = anchored
        found = next((e for e in events if e.seq == seq), None)
        if found is None or found.hash != expected:
            print(
                f"audit chain REWRITTEN: event {seq} no longer has the anchored hash",
                file=sys.stderr,
            )
            return 1
    print(f"audit chain intact: {len(events)} events" + (" (anchor holds)" if anchored else ""))
    return 0


async def _audit_head(settings: Settings, as_json: bool) -> int:
    """Print the chain's newest link: publish or store it elsewhere (a notary, another
    system's log, a dated email) and any later rewrite of history shows."""
    factory = await _open(settings)
    try:
        async with factory() as uow:
            head = await uow.audit.head()
    finally:
        await factory.dispose()
    if head is None:
        print("the audit log is empty", file=sys.stderr)
        return 1
    record = {"seq": head.seq, "hash": head.hash, "at": head.at.isoformat()}
    if as_json:
        print(json.dumps(record))
    else:
        print(f"audit head: event {head.seq} at {record['at']} hash {head.hash}")
        print(f"anchor: {head.seq}:{head.hash}")
    return 0


async def _orders(settings: Settings, as_json: bool, limit: int) -> int:
    from core.money import yuan

    factory = await _open(settings)
    try:
        async with factory() as uow:
            rows = list(await uow.orders.recent(limit=limit))
    finally:
        await factory.dispose()
    records = [
        {
            "id": o.id,
            "number": o.number,
            "status": o.status.value,
            "brand": o.brand,
            "card": o.card_masked,
            "face_value_fen": o.face_value_fen,
            "balance_fen": o.balance_fen,
            "fee_fen": o.fee_fen,
            "payout_fen": o.payout_fen,
            "channel": o.channel,
            "created_at": o.created_at.isoformat(),
            "settled_at": o.settled_at.isoformat() if o.settled_at else None,
        }
        for o in rows
    ]
    if as_json:
        print(json.dumps(records, ensure_ascii=False))
        return 0
    if not rows:
        print("no orders")
    for o in rows:
        print(
            f"{o.number}  {o.status.value:<13} {o.brand:<11} {o.card_masked:<22} "
            f"face {yuan(o.face_value_fen):>10}  payout {yuan(o.payout_fen):>10}  "
            f"{o.channel}  {o.created_at.isoformat()[:16]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
