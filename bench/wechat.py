"""Whole sales through the full WeChat path: ``cardbot run wechat`` as its own process on SQLite,
pushed to over loopback HTTP exactly as WeChat pushes (signed, AES safe mode by default), with a
WeChat-API test server (tests/wechat_peer.py) for the access token and customer service.
Several users sell at once, each one sale after another (the card number is typed; photos are
measured by bench/vision.py). Prints pushes per second and the p50/p95 time from push to HTTP
answer; a benchmark: it prints numbers.

Its premise: every push got its passive reply and every sale settled — each user is a person of
their own (resident ID, phone, Alipay account), so no risk rule holds a sale. Otherwise the run
stops with ``PREMISE FAILED`` and the reason (exit 2), and prints no figures."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.dialogue import SALES_PER_SELLER, make_cards, percentile
from bench.premise import require, require_all_settled, seller_id_number, seller_phone
from storage.db import SqlAlchemyUnitOfWorkFactory
from tests.wechat_peer import BotProcess, WeChatApiPeer, WeChatPusher, bot_env, text_xml


async def sell(
    pusher: WeChatPusher,
    seller: int,
    openid: str,
    cards: list[tuple[str, str]],
    timings: list[float],
    answers: dict[str, int],
) -> None:
    for n, (number, secret) in enumerate(cards):
        script = ["/sell", number, secret, "1"]
        if n == 0:  # first sale: consent and identity; later ones reuse the saved account
            script += ["1", "张伟", seller_id_number(seller), seller_phone(seller), "1"]
            script += [f"{openid}@example.com", "1"]
        else:
            script += ["1", "1"]
        for line in script:
            started = time.perf_counter()
            answer = await pusher.push(text_xml(openid, line))
            timings.append((time.perf_counter() - started) * 1000)
            kind = "passive" if answer.text is not None else str(answer.status)
            answers[kind] = answers.get(kind, 0) + 1


async def run(users: int, sales_per_user: int, mode: str) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="cardbot-bench-wechat-"))
    cards = make_cards(workdir / "cards.csv", users * sales_per_user)
    peer = WeChatApiPeer()
    await peer.start()
    database_url = f"sqlite+aiosqlite:///{workdir / 'cardbot.db'}"
    env = bot_env(
        workdir,
        database_url,
        peer.base,
        CARDBOT_SANDBOX_CARDS=str(workdir / "cards.csv"),
        CARDBOT_LOG_LEVEL="WARNING",
        WECHAT_REPLY_DEADLINE_SECONDS="4",  # the production deadline (tests lift it)
    )
    if mode == "plaintext":
        env.update(WECHAT_MODE="plaintext", WECHAT_AES_KEY="")
    bot = BotProcess(env, workdir / "bot.log")
    timings: list[float] = []
    answers: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=users * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        await bot.start(session)
        try:
            pusher = WeChatPusher(session, bot.url, mode)
            started = time.perf_counter()
            await asyncio.gather(
                *(
                    sell(
                        pusher,
                        u,
                        f"o_bench_{u:04d}",
                        cards[u * sales_per_user : (u + 1) * sales_per_user],
                        timings,
                        answers,
                    )
                    for u in range(users)
                )
            )
            elapsed = time.perf_counter() - started
        finally:
            await bot.stop()
            await peer.close()
    require(
        answers == {"passive": len(timings)}, f"not every push got its passive reply: {answers}"
    )
    factory = SqlAlchemyUnitOfWorkFactory.from_url(database_url)
    try:
        async with factory() as uow:
            orders = await uow.orders.recent(limit=users * sales_per_user * 2)
    finally:
        await factory.dispose()
    require_all_settled(orders, users * sales_per_user)
    return {
        "mode": mode,
        "users": users,
        "sales": users * sales_per_user,
        "pushes": len(timings),
        "answers": answers,
        "customer_service_messages": len(peer.custom_texts()),
        "pushes_per_s": round(len(timings) / elapsed, 1),
        "reply_p50_ms": round(statistics.median(timings), 1),
        "reply_p95_ms": round(percentile(timings, 0.95), 1),
        "reply_max_ms": round(max(timings), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10, help="users selling at the same time")
    parser.add_argument("--sales", type=int, default=3, help="sales per user")
    parser.add_argument("--mode", choices=("safe", "plaintext"), default="safe")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    require(
        args.sales <= SALES_PER_SELLER,
        f"more than {SALES_PER_SELLER} sales per user would be held by the velocity rule",
    )
    result = asyncio.run(run(args.users, args.sales, args.mode))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
