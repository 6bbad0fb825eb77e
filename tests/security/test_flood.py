"""The attack: one Telegram user floods the bot with 500 messages, and another user says hello
right after. Before, the second user waited for the whole flood — 97 s by polling (the next
getUpdates waited for the batch, replies left at 1/s in it) and 120 s by webhook (the flood held
all of Telegram's 40 connections). Now updates are queued and confirmed at once, each chat is
handled on its own, and the flooder is told once to slow down while the rest of the flood is
dropped on purpose.

``cardbot run telegram`` runs as its own process with the real outbound limits (3 messages at
once, then 1 a second per chat) against the fake Bot API, on SQLite and PostgreSQL, in both
modes. "Answered at once" is shown by the bot's own pacing rather than a stopwatch: the other
user's answer goes out before the flooder's admitted messages are half answered, which at one
reply a second is within a couple of seconds; bench/flood.py measures the seconds.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from handlers.i18n import Translator
from tests.e2e.telegram_harness import (
    WEBHOOK_SECRET,
    BotProcess,
    wait_until_ready,
    watch_queue,
)
from tests.telegram_api import FakeTelegram, User

pytestmark = pytest.mark.slow

ZH = Translator("zh")
FLOOD = 500
BURST = 10  # the flooder's inbound allowance in this test (TELEGRAM_INBOUND_BURST)
ALICE, BOB = User(5001), User(5002)


@pytest.fixture
async def bot(tmp_path: Path, database_url: str, tg: FakeTelegram) -> AsyncIterator[BotProcess]:
    process = BotProcess(
        tmp_path,
        database_url,
        tg.base_url,
        TELEGRAM_INBOUND_BURST=str(BURST),
        TELEGRAM_INBOUND_PER_MINUTE="1",
        TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    watch_queue(tg, database_url)
    try:
        yield process
    finally:
        await process.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def post_all(url: str, updates: list[dict[str, object]]) -> list[int]:
    """POST updates the way Telegram does: up to 40 connections at once."""
    connector = aiohttp.TCPConnector(limit=40)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(update: dict[str, object]) -> int:
            async with session.post(
                url,
                json=update,
                headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET},
                timeout=aiohttp.ClientTimeout(total=60),
            ) as response:
                return response.status

        return list(await asyncio.gather(*(post(u) for u in updates)))


def bot_texts(tg: FakeTelegram, user: User) -> list[tuple[int, str]]:
    """(call index, text) of every message the bot sent to ``user``."""
    return [
        (n, str(c.params.get("text", "")))
        for n, c in enumerate(tg.calls)
        if c.method == "sendmessage" and c.ok and c.chat == user.id
    ]


async def flood_then_hello(bot: BotProcess, tg: FakeTelegram, *, webhook: bool) -> None:
    flood = [tg.text_update(ALICE, f"在吗 {n}") for n in range(FLOOD)]
    hello = tg.text_update(BOB, "/start")
    if webhook:
        port = free_port()
        url = f"http://127.0.0.1:{port}/telegram/hook"
        await bot.start("--webhook", url, "--port", str(port))
        await wait_until_ready(tg, polling=False)
        assert set(await post_all(url, flood)) == {200}  # taken in at once, none held open
        assert await post_all(url, [hello]) == [200]
    else:
        await bot.start()
        await wait_until_ready(tg, polling=True)
        tg.push(*flood, hello)

    async def handled(update: dict[str, object], within: float) -> None:
        if webhook:  # the POST's 200 was the confirmation: wait for the handling
            assert tg.after_confirm is not None
            await asyncio.wait_for(tg.after_confirm(update), within)
        else:
            await tg.handled(update, within=within)

    await handled(hello, within=60)

    # Bob was answered while the flooder's admitted messages were still being answered.
    (bob_answer, text), *_ = bot_texts(tg, BOB)
    assert ZH("menu.prompt") in text
    alice_before_bob = [n for n, _ in bot_texts(tg, ALICE) if n < bob_answer]
    assert len(alice_before_bob) <= BURST // 2, (len(alice_before_bob), bob_answer)

    # The flood: the first BURST messages to arrive handled, the flooder told once to slow
    # down, the rest dropped on purpose — nothing left queued, no second "slow down".
    for update in flood:
        await handled(update, within=60)
    alice = [t for _, t in bot_texts(tg, ALICE)]
    assert sum(ZH("inbound.slow_down") in t for t in alice) == 1
    assert len([t for t in alice if ZH("inbound.slow_down") not in t]) == BURST


async def test_a_flood_by_polling_does_not_hold_up_another_user(
    bot: BotProcess, tg: FakeTelegram
) -> None:
    await flood_then_hello(bot, tg, webhook=False)
    assert await bot.stop() == 0


async def test_a_flood_over_the_webhook_does_not_hold_up_another_user(
    bot: BotProcess, tg: FakeTelegram
) -> None:
    await flood_then_hello(bot, tg, webhook=True)
    assert await bot.stop() == 0
