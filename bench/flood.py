"""How long another user waits while one user floods the Telegram bot.

One user sends ``--flood`` messages at once (by long polling: all in the fake Bot API's queue;
with ``--webhook``: POSTed over 40 connections, as Telegram does); right after, ``--others``
users each send /start. Prints how long each of them waited for the bot's answer (from the
moment their update was delivered to the moment the bot's sendMessage reached the server), how
many of the flood were handled and dropped, and the time to take the whole flood in. The bot
runs with the real outbound limits (3 at once, then 1 message a second per chat). Bot and fake
server share one process and one event loop. A benchmark: it prints numbers, and exits 1 when
its premise does not hold (someone unanswered, the flooder not told, updates left queued).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dialogue import percentile
from bot.app import build_app
from bot.runtime import RunOptions
from bot.settings import Settings
from bot.telegram import build_runner
from handlers.i18n import Translator
from tests.e2e.telegram_harness import watch_queue
from tests.telegram_api import TOKEN, FakeTelegram, User

SECRET = "bench_flood_secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run(flood: int, others: int, webhook: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="cardbot-bench-flood-"))
    tg = FakeTelegram()
    await tg.start()
    settings = Settings(
        var_dir=workdir,
        database_url=f"sqlite+aiosqlite:///{workdir / 'cardbot.db'}",
        data_key=None,
        data_key_file=workdir / "data.key",
        telegram_bot_token=TOKEN,
        telegram_api_base=tg.base_url,
        telegram_webhook_secret=SECRET,
    )
    app = await build_app(settings)
    watch_queue(tg, settings.resolved_database_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram/hook"
    runner = await build_runner(app, RunOptions(port=port, webhook=url if webhook else None))
    site: Any = None
    if webhook:
        from aiohttp import web

        web_app = web.Application()
        web_app.add_routes(runner.routes())
        site = web.AppRunner(web_app, access_log=None)
        await site.setup()
        await web.TCPSite(site, "127.0.0.1", port).start()
    stop = asyncio.Event()
    serving = asyncio.create_task(runner.serve(stop))
    flooder = User(900_000)
    users = [User(910_000 + n) for n in range(others)]
    zh = Translator("zh")
    try:
        await tg.wait_for(lambda c: c.method == ("setwebhook" if webhook else "getupdates"))
        flood_updates = [tg.text_update(flooder, f"在吗 {n}") for n in range(flood)]
        hellos = [tg.text_update(u, "/start") for u in users]
        started = time.monotonic()
        if webhook:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=40)) as s:

                async def post(update: dict[str, Any]) -> int:
                    async with s.post(
                        url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
                    ) as response:
                        return response.status

                statuses = await asyncio.gather(*(post(u) for u in flood_updates))
                taken_in = time.monotonic() - started
                delivered = time.monotonic()
                await asyncio.gather(*(post(u) for u in hellos))
        else:
            tg.push(*flood_updates)
            delivered = time.monotonic()
            tg.push(*hellos)
            statuses = []
        waits = []
        for user in users:
            call = await tg.wait_for(
                lambda c, u=user: c.method == "sendmessage" and c.chat == u.id, within=120
            )
            waits.append(call.at - delivered)
        assert tg.after_confirm is not None
        for update in flood_updates:
            await asyncio.wait_for(tg.after_confirm(update), 300)
        if not webhook:
            taken_in = time.monotonic() - started
        flooder_texts = [
            str(c.params.get("text", ""))
            for c in tg.calls
            if c.method == "sendmessage" and c.ok and c.chat == flooder.id
        ]
        told = sum(zh("inbound.slow_down") in t for t in flooder_texts)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await serving
        if site is not None:
            await site.cleanup()
        await runner.aclose()
        await app.close()
        await tg.close()
    return {
        "mode": "webhook" if webhook else "polling",
        "flood": flood,
        "others": others,
        "others_answered": len(waits),
        "other_wait_p50_s": round(statistics.median(waits), 3),
        "other_wait_max_s": round(max(waits), 3),
        "other_wait_p95_s": round(percentile(waits, 0.95), 3),
        "flood_handled": len(flooder_texts) - told,
        "flood_dropped": flood - (len(flooder_texts) - told),
        "flooder_told_to_slow_down": told,
        "webhook_non_200": sum(1 for s in statuses if s != 200),
        "flood_taken_in_s": round(taken_in, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flood", type=int, default=500)
    parser.add_argument("--others", type=int, default=5)
    parser.add_argument("--webhook", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.flood, args.others, args.webhook))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value}")
    ok = (
        result["others_answered"] == args.others
        and result["flooder_told_to_slow_down"] == 1
        and result["webhook_non_200"] == 0
    )
    if not ok:
        print("premise failed: someone unanswered, or the flooder told not exactly once")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
