"""Reconciliation speed: reading a statement, comparing it with the books (core, in memory),
and loading payouts with their orders and ledger from SQLite. A benchmark: it prints numbers.

    .venv/bin/python bench/reconcile.py [--payouts 100000] [--db-orders 2000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.premise import require
from core import ledger
from core.model import (
    Card,
    LedgerTransaction,
    Order,
    OrderStatus,
    Payout,
    PayoutAccount,
    PayoutMethod,
    PayoutState,
    Quote,
)
from core.reconcile import StatementRow, book, format_statement, parse_statement, reconcile

T0 = datetime(2026, 11, 21, 4, 0, tzinfo=UTC)
STATES = (PayoutState.SUCCEEDED, PayoutState.SUCCEEDED, PayoutState.SUCCEEDED, PayoutState.FAILED)


def world(n: int) -> tuple[list[Payout], list[LedgerTransaction], list[StatementRow]]:
    """n payouts (one per order), their ledger, and the statement a faithful provider sends."""
    payouts, txns, rows = [], [], []
    for i in range(1, n + 1):
        state, method, amount = STATES[i % 4], list(PayoutMethod)[i % 3], 1000 + i % 90_000
        at = T0 + timedelta(seconds=i)
        ref = f"CBP{i:010d}N01"
        txn_id = None if state is PayoutState.FAILED else f"T{i:031d}"
        payouts.append(
            Payout(i, ref, method, 1, amount, state, at, at, provider_txn_id=txn_id, id=i)
        )
        txns.append(ledger.payout_reserve(i, 1, method, amount, at))
        close = ledger.payout_post if state is PayoutState.SUCCEEDED else ledger.payout_void
        txns.append(close(i, 1, method, amount, at))
        rows.append(StatementRow(ref, method, amount, state, txn_id, at, at))
    return payouts, txns, rows


def timed(work: object) -> float:
    start = time.perf_counter()
    work()  # type: ignore[operator]
    return (time.perf_counter() - start) * 1000


def bench_core(n: int) -> dict[str, float]:
    payouts, txns, rows = world(n)
    text = format_statement(rows)
    now = T0 + timedelta(days=1)
    results: dict[str, float] = {}
    results["parse_ms"] = timed(lambda: parse_statement(text))
    booked: list[object] = []
    results["ledger_views_ms"] = timed(lambda: booked.extend(book(payouts, txns)))
    outcome: list[object] = []
    results["reconcile_ms"] = timed(
        lambda: outcome.append(
            reconcile(rows[1:], booked, now=now, grace=timedelta(minutes=15))  # type: ignore[arg-type]
        )
    )
    differences = outcome[0].differences  # type: ignore[attr-defined]
    # The premise: the statement lacks exactly its first row, and reconcile finds that alone.
    require(len(differences) == 1, f"expected the one dropped row, found {differences}")
    return results


async def bench_storage(n: int) -> dict[str, float]:
    from storage.db import SqlAlchemyUnitOfWorkFactory
    from storage.migrate import upgrade_async

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}"
        await upgrade_async(url)
        factory = SqlAlchemyUnitOfWorkFactory.from_url(url)
        try:
            start = time.perf_counter()
            async with factory() as uow:
                user, _ = await uow.users.for_channel("console", "bench", "bench", "zh", T0)
                account = await uow.payout_accounts.add(
                    PayoutAccount(
                        user.id, PayoutMethod.ALIPAY, b"x", "fp", "b***", b"x", "张*", T0
                    )
                )
                for i in range(1, n + 1):
                    card = await uow.cards.add(Card(user.id, "walmart", b"x", f"fp{i}", "m", T0))
                    quote = await uow.quotes.add(
                        Quote(
                            user.id,
                            card.id or 0,
                            "walmart",
                            5000,
                            5000,
                            9000,
                            4500,
                            0,
                            4500,
                            (),
                            T0,
                            T0,
                            "v1",
                        )
                    )
                    order = await uow.orders.add(
                        Order(
                            user.id,
                            "console",
                            card.id or 0,
                            quote.id or 0,
                            "walmart",
                            f"fp{i}",
                            "m",
                            5000,
                            5000,
                            4500,
                            0,
                            OrderStatus.SETTLED,
                            T0,
                            T0,
                        )
                    )
                    oid = order.id or 0
                    await uow.payouts.add(
                        Payout(
                            oid,
                            f"CBP{oid:010d}N01",
                            PayoutMethod.ALIPAY,
                            account.id or 0,
                            4500,
                            PayoutState.SUCCEEDED,
                            T0,
                            T0,
                        )
                    )
                    await uow.ledger.post(ledger.payout_reserve(oid, user.id, "alipay", 4500, T0))
                    await uow.ledger.post(ledger.payout_post(oid, user.id, "alipay", 4500, T0))
                await uow.commit()
            setup_ms = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            async with factory() as uow:
                found = await uow.payouts.for_reconciliation(None, None, [])
                txns = await uow.ledger.for_orders([p.order_id for p, _ in found])
            load_all_ms = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            async with factory() as uow:
                found = await uow.payouts.for_reconciliation(
                    T0, T0 + timedelta(days=1), [p.reference for p, _ in found]
                )
                txns = await uow.ledger.for_orders([p.order_id for p, _ in found])
            load_day_ms = (time.perf_counter() - start) * 1000
            require(
                len(found) == n and len(txns) == 2 * n,
                f"loaded {len(found)} payouts and {len(txns)} ledger transactions of {n} orders",
            )
        finally:
            await factory.dispose()
    return {"setup_ms": setup_ms, "load_all_ms": load_all_ms, "load_day_by_ref_ms": load_day_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payouts", type=int, default=100_000)
    parser.add_argument("--db-orders", type=int, default=2_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    core = bench_core(args.payouts)
    storage = asyncio.run(bench_storage(args.db_orders)) if args.db_orders else {}
    report = {"payouts": args.payouts, **core, "db_orders": args.db_orders, **storage}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"core, {args.payouts} payouts (one row dropped from the statement):")
    for key in ("parse_ms", "ledger_views_ms", "reconcile_ms"):
        print(f"  {key:<18} {core[key]:9.1f} ms   ({core[key] * 1000 / args.payouts:.1f} µs/row)")
    if storage:
        print(f"SQLite, {args.db_orders} settled orders:")
        for key, value in storage.items():
            print(f"  {key:<18} {value:9.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
