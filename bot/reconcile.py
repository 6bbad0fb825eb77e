"""Reconciliation commands: compare a payout provider's statement with our books.

``cardbot reconcile FILE [--json] [--date YYYY-MM-DD] [--grace-minutes N] [--by NAME]`` reads a
statement (CSV, format in ``bot/sandbox/PAYOUTS.md``), compares it with our payouts and ledger
(``core/reconcile.py``) and lists every difference, most dangerous first. Exit 0 when everything
matches, 1 when there are differences, 2 when the file cannot be read (each bad row by line
number). Each run is recorded in the audit log (``reconcile.run``: counts and amounts, and the
file's SHA-256 — never its rows).

``cardbot sandbox statement [--date YYYY-MM-DD] [--out FILE]`` exports the sandbox payout
provider's statement (every transfer it received that Asia/Shanghai day, or all of them).

Operator-facing output is English; nothing printed holds an account number.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bot.settings import Settings

if TYPE_CHECKING:
    from core.ports import Clock
    from core.reconcile import Difference, Reconciliation

DEFAULT_GRACE_MINUTES = 15.0


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _minutes(text: str) -> float:
    try:
        minutes = float(text)
    except ValueError:
        minutes = -1.0
    if not 0 <= minutes <= 60 * 24 * 365:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"not a number of minutes from 0 up: {text!r}")
    return minutes


def add_parsers(sub: Any) -> None:
    """Add ``reconcile`` and ``sandbox`` to the ``cardbot`` command line."""
    recon = sub.add_parser(
        "reconcile", help="compare a payout provider's statement with the books (exit 1: differ)"
    )
    recon.add_argument("file", help="the provider's statement (CSV)")
    recon.add_argument("--json", action="store_true")
    recon.add_argument(
        "--date", type=_day, help="the Asia/Shanghai day the statement covers (default: all)"
    )
    recon.add_argument(
        "--grace-minutes",
        type=_minutes,
        default=DEFAULT_GRACE_MINUTES,
        help="a payout younger than this may be missing from the statement (default 15)",
    )
    recon.add_argument("--by", default="operator", help="who runs it (kept in the audit)")

    sandbox = sub.add_parser("sandbox", help="the sandbox providers")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    statement = sandbox_sub.add_parser(
        "statement", help="export the sandbox payout provider's statement (CSV)"
    )
    statement.add_argument(
        "--date", type=_day, help="only transfers received that Asia/Shanghai day"
    )
    statement.add_argument("--out", help="write to this file (default: standard output)")


def run_parsed(settings: Settings, args: argparse.Namespace) -> int:
    """Run a parsed ``reconcile`` or ``sandbox`` command."""
    if args.command == "sandbox":
        return export_statement(settings, args.date, args.out)
    return asyncio.run(
        reconcile_file(
            settings,
            Path(args.file),
            as_json=bool(args.json),
            day=args.date,
            grace=timedelta(minutes=args.grace_minutes),
            by=f"staff:{args.by}",
        )
    )


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    from core.risk import SHANGHAI, shanghai_day_bounds

    return shanghai_day_bounds(datetime(day.year, day.month, day.day, 12, tzinfo=SHANGHAI))


def _clock(clock: Clock | None) -> Clock:
    if clock is not None:
        return clock
    from bot.app import SystemClock

    return SystemClock()


# --------------------------------------------------------------------------------------------
# cardbot sandbox statement


def export_statement(
    settings: Settings, day: date | None, out: str | None, clock: Clock | None = None
) -> int:
    """Write the sandbox provider's statement (all transfers, or those of one day) as CSV."""
    from bot.sandbox.payouts import SandboxPayoutGateway
    from core.reconcile import format_statement

    state = settings.sandbox_dir / "payouts.sqlite3"
    if not state.exists():
        print(f"cardbot: no sandbox payout provider state at {state}", file=sys.stderr)
        return 2
    from bot.keys import vault_for

    gateway = SandboxPayoutGateway(
        state,
        _clock(clock),
        fingerprint=vault_for(settings).fingerprint,
        late_seconds=settings.sandbox_payout_late_seconds,
    )
    since, until = _day_bounds(day) if day else (None, None)
    text = format_statement(gateway.statement(since, until))
    if out is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(out).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"cardbot: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


# --------------------------------------------------------------------------------------------
# cardbot reconcile


def _read(path: Path) -> tuple[str | None, str]:
    """The file's text and a problem (empty when it reads)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return None, f"{path}: line {line}: not UTF-8 text"


async def reconcile_file(
    settings: Settings,
    path: Path,
    *,
    as_json: bool = False,
    day: date | None = None,
    grace: timedelta = timedelta(minutes=DEFAULT_GRACE_MINUTES),
    by: str = "staff:operator",
    clock: Clock | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Reconcile one statement file with the books: print the result, audit the run, and
    return the exit status (0 matched, 1 differences, 2 bad file)."""
    from core.reconcile import book, parse_statement, reconcile, summary

    out = out or sys.stdout
    err = err or sys.stderr
    text, problem = _read(path)
    if text is None:
        return _bad_file(as_json, [{"line": None, "message": problem}], out, err)
    statement = parse_statement(text)
    if statement.errors:
        errors = [{"line": e.line, "message": e.message} for e in statement.errors]
        return _bad_file(as_json, errors, out, err, path)

    from bot.keys import storage_for

    now = _clock(clock).now()
    period = _day_bounds(day) if day else None
    factory = await storage_for(settings)
    try:
        # One snapshot of payouts and ledger, read in a transaction of its own (on SQLite a
        # unit of work holds the write lock: the comparison must not keep the bot waiting).
        async with factory() as uow:
            if uow.session.get_bind().dialect.name == "postgresql":
                # Payouts and ledger from the same instant, or a payout settling between the
                # two reads would look like books that disagree.
                await uow.session.connection(
                    execution_options={"isolation_level": "REPEATABLE READ"}
                )
            found = await uow.payouts.for_reconciliation(
                period[0] if period else None,
                period[1] if period else None,
                [row.reference for row in statement.rows],
            )
            payouts = [payout for payout, _ in found]
            transactions = await uow.ledger.for_orders(sorted({p.order_id for p in payouts}))
        booked = book(payouts, transactions, {o.id: o.status for _, o in found if o.id})
        result = reconcile(statement.rows, booked, now=now, grace=grace, period=period)
        record = summary(result)
        async with factory() as uow:
            await uow.audit.append(
                now,
                by,
                "reconcile.run",
                f"reconcile:{day.isoformat() if day else 'all'}",
                {
                    **record,
                    "date": day.isoformat() if day else None,
                    "grace_minutes": grace.total_seconds() / 60,
                    "statement_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                },
            )
            await uow.commit()
    finally:
        await factory.dispose()
    if as_json:
        document = {
            "ok": result.clean,
            "date": day.isoformat() if day else None,
            "summary": record,
            "differences": [_difference_json(d) for d in result.differences],
            "in_flight": list(result.in_flight),
        }
        out.write(json.dumps(document, ensure_ascii=False, indent=1) + "\n")
    else:
        _print_text(result, day, out)
    return 0 if result.clean else 1


def _bad_file(
    as_json: bool,
    errors: list[dict[str, Any]],
    out: TextIO,
    err: TextIO,
    path: Path | None = None,
) -> int:
    if as_json:
        out.write(json.dumps({"ok": False, "errors": errors}, ensure_ascii=False) + "\n")
    for error in errors:
        where = f"{path}: line {error['line']}: " if path is not None else ""
        err.write(f"cardbot reconcile: {where}{error['message']}\n")
    err.write("cardbot reconcile: the statement was not reconciled (fix the file first)\n")
    return 2


def _difference_json(d: Difference) -> dict[str, Any]:
    return {
        "kind": d.kind.value,
        "reference": d.reference,
        "order": f"CB{d.order_id:08d}" if d.order_id is not None else None,
        "amount_fen": d.amount_fen,
        "note": d.note,
        "ours": list(d.ours),
        "theirs": list(d.theirs),
    }


def _side(record: dict[str, Any], ours: bool) -> str:
    from core.money import yuan

    parts = [record["method"], f"¥{yuan(record['amount_fen'])}", record["state"]]
    if ours:
        parts.append(f"ledger {record['ledger']}")
        if record.get("order_status"):
            parts.append(f"order {record['order_status']}")
    else:
        parts.insert(0, f"line {record['line']}")
        if record.get("failure_reason"):
            parts.append(str(record["failure_reason"]))
    if record.get("provider_txn_id"):
        parts.append(f"txn {record['provider_txn_id']}")
    return ", ".join(parts)


def _print_text(result: Reconciliation, day: date | None, out: TextIO) -> None:
    from core.money import yuan

    scope = f"{day.isoformat()} (Asia/Shanghai)" if day else "all payouts"
    out.write(
        f"reconciled {scope}: {result.statement_rows} statement rows, "
        f"{result.payouts_checked} of our payouts checked\n"
    )
    out.write(f"matched: {result.matched_count} (¥{yuan(result.matched_fen)} paid)\n")
    out.write(
        f"provider paid ¥{yuan(result.provider_paid_fen)}; "
        f"our ledger posted ¥{yuan(result.books_posted_fen)}\n"
    )
    if result.in_flight:
        out.write(f"in flight (not a difference yet): {len(result.in_flight)}\n")
        for record in result.in_flight:
            out.write(f"  {record['reference']}  {record['order']}  {_side(record, True)}\n")
    if result.clean:
        out.write("everything matches\n")
        return
    out.write(f"DIFFERENCES: {len(result.differences)}\n")
    for d in result.differences:
        order = f"  order CB{d.order_id:08d}" if d.order_id is not None else ""
        out.write(f"- {d.kind.value}  {d.reference}{order}  ¥{yuan(d.amount_fen)}\n")
        out.write(f"    {d.note}\n")
        for record in d.ours:
            out.write(f"    ours:   {record['reference']}  {_side(record, True)}\n")
        for record in d.theirs:
            out.write(f"    theirs: {record['reference']}  {_side(record, False)}\n")
    out.write("by kind:\n")
    for kind, total in result.by_kind.items():
        out.write(f"  {kind}: {total.count} (¥{yuan(total.amount_fen)})\n")
