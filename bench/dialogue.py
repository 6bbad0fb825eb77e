"""Whole sales through the console channel on SQLite, without the photo step: messages per
second and p50/p95 latency per message and per sale. A benchmark: it prints numbers."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.app import build_app
from bot.console import ConsoleChannel
from bot.settings import Settings
from core.catalog import default_catalog, luhn_check_digit

BRAND, PREFIX = "walmart", "23260817"


def make_cards(path: Path, n: int) -> list[tuple[str, str]]:
    """n fresh, valid sample cards (one per sale: a card can be sold only once)."""
    catalog = default_catalog()
    cards = []
    with path.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(
            ["brand", "number", "secret", "face_value_fen", "balance_fen", "expires", "status"]
        )
        for i in range(n):
            body = f"{PREFIX}{i:07d}"
            number = body + luhn_check_digit(body)
            catalog.match(number)
            secret = f"{(i * 7919) % 1_000_000:06d}"
            out.writerow([BRAND, number, secret, 50000, 50000, "2099-12-31", "active"])
            cards.append((number, secret))
    return cards


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(sales: int) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="cardbot-bench-"))
    cards = make_cards(workdir / "cards.csv", sales)
    settings = Settings(
        var_dir=workdir,
        database_url=f"sqlite+aiosqlite:///{workdir / 'cardbot.db'}",
        data_key=None,
        data_key_file=workdir / "data.key",
        sandbox_cards=workdir / "cards.csv",
    )
    app = await build_app(settings)
    per_message: list[float] = []
    per_sale: list[float] = []
    started = time.perf_counter()
    try:
        for i, (number, secret) in enumerate(cards):
            channel = ConsoleChannel(
                app.conversation, user_id=f"bench-{i % 20}", write=lambda _: None
            )
            first_sale = i < 20
            script = ["/sell", number, secret, "1"]
            script += (
                [
                    "1",
                    "张伟",
                    "11010519491231002X",
                    "13800138000",
                    "1",
                    f"seller{i % 20}@example.com",
                    "1",
                ]
                if first_sale
                else ["1", "1"]
            )
            sale_start = time.perf_counter()
            for line in script:
                t0 = time.perf_counter()
                await channel.send(line)
                per_message.append((time.perf_counter() - t0) * 1000)
            per_sale.append((time.perf_counter() - sale_start) * 1000)
        elapsed = time.perf_counter() - started
        async with app.uow_factory() as uow:
            settled = sum(
                1 for o in await uow.orders.recent(limit=sales * 2) if o.status.value == "settled"
            )
    finally:
        await app.close()
    return {
        "sales": sales,
        "settled": settled,
        "messages": len(per_message),
        "messages_per_s": round(len(per_message) / elapsed, 1),
        "sales_per_s": round(sales / elapsed, 2),
        "message_p50_ms": round(statistics.median(per_message), 2),
        "message_p95_ms": round(percentile(per_message, 0.95), 2),
        "sale_p50_ms": round(statistics.median(per_sale), 1),
        "sale_p95_ms": round(percentile(per_sale, 0.95), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sales", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.sales))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")
    return 0 if result["settled"] == result["sales"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
