"""Whole sales through the console channel on SQLite, without the photo step: messages per
second and p50/p95 latency per message and per sale. A benchmark: it prints numbers.

Its premise: every sale is a whole sale, settled. Each simulated seller is a person of their
own (own resident ID, phone and Alipay account) selling at most ``SALES_PER_SELLER`` cards of
¥500, so no risk rule (shared identity, velocity, new account, daily amount) holds one for
review. When a sale does not settle anyway, the run stops with ``PREMISE FAILED``, how the
sales ended and the risk reasons (exit 2), and prints no figures.

    .venv/bin/python bench/dialogue.py [--sales 200] [--json]
"""

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

from bench.premise import require_all_settled, seller_id_number, seller_phone
from bot.app import build_app
from bot.console import ConsoleChannel
from bot.settings import Settings
from core.catalog import default_catalog, luhn_check_digit

BRAND, PREFIX = "walmart", "23260817"
# Below the velocity rule (more than 10 cards in 30 minutes) and the level-1 daily amount.
SALES_PER_SELLER = 5


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
            seller, first_sale = i // SALES_PER_SELLER, i % SALES_PER_SELLER == 0
            channel = ConsoleChannel(
                app.conversation, user_id=f"bench-{seller}", write=lambda _: None
            )
            script = ["/sell", number, secret, "1"]
            script += (
                [
                    "1",
                    "张伟",
                    seller_id_number(seller),
                    seller_phone(seller),
                    "1",
                    f"seller{seller}@example.com",
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
            orders = await uow.orders.recent(limit=sales * 2)
    finally:
        await app.close()
    require_all_settled(orders, sales)
    settled = sum(1 for o in orders if o.status.value == "settled")
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
