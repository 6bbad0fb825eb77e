"""Updates per second through the whole Telegram path: the fake Bot API on loopback
(tests/telegram_api.py) → getUpdates long polling → aiogram → the adapter → the conversation
(SQLite) → sendMessage/answerCallbackQuery/editMessageReplyMarkup back to the fake server.
Users sell concurrently (typed card numbers, no photos); each waits until the bot has handled
its update (confirmed it to getUpdates, then handled it from its inbound queue) before sending
the next, as a person waits for the answer. A benchmark: it prints numbers.

By default the outbound limits are lifted so the figure is the bot's own throughput; with
``--real-limits`` (3 at once then 1 message/s per chat, 30/s overall) it shows what the limits
allow. Bot and fake server share one process and one event loop (and so one core).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dialogue import SALES_PER_SELLER, make_cards, percentile
from bench.premise import require, require_all_settled, seller_id_number, seller_phone
from bot.app import build_app
from bot.runtime import RunOptions
from bot.settings import Settings
from bot.telegram import build_runner
from tests.e2e.telegram_harness import watch_queue
from tests.telegram_api import TOKEN, FakeTelegram, User


async def run(users: int, sales_per_user: int, real_limits: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="cardbot-bench-tg-"))
    cards = make_cards(workdir / "cards.csv", users * sales_per_user)
    tg = FakeTelegram()
    await tg.start()
    limits: dict[str, Any] = (
        {}
        if real_limits
        else {"telegram_chat_burst": 10**6, "telegram_messages_per_second": 10**6}
    )
    settings = Settings(
        var_dir=workdir,
        database_url=f"sqlite+aiosqlite:///{workdir / 'cardbot.db'}",
        data_key=None,
        data_key_file=workdir / "data.key",
        sandbox_cards=workdir / "cards.csv",
        telegram_bot_token=TOKEN,
        telegram_api_base=tg.base_url,
        **limits,
    )
    app = await build_app(settings)
    watch_queue(tg, settings.database_url)
    runner = await build_runner(app, RunOptions())
    stop = asyncio.Event()
    serving = asyncio.create_task(runner.serve(stop))
    latencies: list[float] = []

    async def say(update: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        tg.push(update)
        await tg.handled(update, within=120)
        latencies.append((time.perf_counter() - t0) * 1000)

    async def seller(n: int) -> None:
        user = User(700_000 + n)
        for k in range(sales_per_user):
            number, secret = cards[n * sales_per_user + k]
            await say(tg.text_update(user, "/sell"))
            await say(tg.text_update(user, number))
            await say(tg.text_update(user, secret))
            await say(tg.press(user, "quote.accept"))
            if k == 0:
                await say(tg.press(user, "consent.yes"))
                for text in ("张伟", seller_id_number(n), seller_phone(n)):
                    await say(tg.text_update(user, text))
                await say(tg.press(user, "method.alipay"))
                await say(tg.text_update(user, f"seller{n}@example.com"))
            else:
                await say(tg.press(user, "account"))
            await say(tg.press(user, "pay.confirm"))

    try:
        await tg.wait_for(lambda c: c.method == "getupdates", within=30)
        started = time.perf_counter()
        await asyncio.gather(*(seller(n) for n in range(users)))
        elapsed = time.perf_counter() - started
        async with app.uow_factory() as uow:
            orders = await uow.orders.recent(limit=users * sales_per_user * 2)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await serving
        await runner.aclose()
        await app.close()
        await tg.close()
    require_all_settled(orders, users * sales_per_user)
    settled = sum(1 for o in orders if o.status.value == "settled")
    sent = len(tg.sends())
    return {
        "users": users,
        "sales": users * sales_per_user,
        "settled": settled,
        "updates": len(latencies),
        "seconds": round(elapsed, 2),
        "updates_per_s": round(len(latencies) / elapsed, 1),
        "messages_sent": sent,
        "messages_per_s": round(sent / elapsed, 1),
        "update_p50_ms": round(statistics.median(latencies), 1),
        "update_p95_ms": round(percentile(latencies, 0.95), 1),
        "limits": "real" if real_limits else "lifted",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--sales-per-user", type=int, default=3)
    parser.add_argument("--real-limits", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    require(
        args.sales_per_user <= SALES_PER_SELLER,
        f"more than {SALES_PER_SELLER} sales per seller would be held by the velocity rule",
    )
    result = asyncio.run(run(args.users, args.sales_per_user, args.real_limits))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")
    return 0 if result["settled"] == result["sales"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
