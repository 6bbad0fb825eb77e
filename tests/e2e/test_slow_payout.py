"""A whole sale over each channel, ``cardbot run`` as its own process, with a payout provider
that takes 5 s while the resume pass runs every 0.2 s: each receipt reaches the user exactly
once (issue 12, item 11: it used to arrive twice, the provider asked twice under one
reference) — on SQLite and PostgreSQL.

"Exactly once" is read after a graceful stop: stopping drains every outbox worker, so a second
receipt queued by anyone would have been sent by then; no sleeping to prove a negative.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.model import OrderStatus
from tests.e2e.telegram_harness import BotProcess as TelegramBot
from tests.e2e.test_telegram import identity_and_payout, polling, sell_until_quote
from tests.e2e.test_wechat import User as WeChatUser
from tests.e2e.test_wechat import World, orders, sell_walmart_until_confirm
from tests.telegram_api import FakeTelegram
from tests.telegram_api import User as TelegramUser

pytestmark = pytest.mark.slow

SLOW = {
    "CARDBOT_SANDBOX_PAYOUT_DELAY_SECONDS": "5",  # the provider takes 5 s per transfer
    "CARDBOT_UNFINISHED_POLL_SECONDS": "0.2",  # and the resume pass runs ~25 times meanwhile
}
RECEIPT = "【电子回单】"


async def test_over_telegram_a_slow_payout_sends_one_receipt(
    tmp_path: Path, database_url: str, tg: FakeTelegram
) -> None:
    bot = TelegramBot(tmp_path, database_url, tg.base_url, TELEGRAM_CHAT_BURST="100", **SLOW)
    try:
        p = await polling(bot, tg)
        alice = TelegramUser(3001)
        await sell_until_quote(p, tg, alice)
        await identity_and_payout(p, tg, alice)
        # The receipt comes as the answer to the confirm, or — when the background pass took
        # the settlement over between the confirm's commit and its claim — a moment later from
        # the outbox ("under way" first). Either way exactly once.
        await tg.wait_for(
            lambda c: (
                c.method == "sendmessage"
                and c.ok
                and c.chat == alice.id
                and RECEIPT in str(c.params.get("text", ""))
            ),
            within=60,
        )
        [order] = await bot.orders()
        assert order.status is OrderStatus.SETTLED
        assert await bot.stop() == 0
        receipts = [t for t in tg.texts(alice.id) if RECEIPT in t]
        assert len(receipts) == 1, receipts
    finally:
        await bot.close()


async def test_over_wechat_a_slow_payout_sends_one_receipt(
    tmp_path: Path, database_url: str
) -> None:
    world = World(tmp_path, database_url)
    await world.peer.start()
    try:
        bot = await world.bot(WECHAT_REPLY_DEADLINE_SECONDS="4", **SLOW)  # production's
        user = WeChatUser(world.pusher(bot), "o_slow")
        await sell_walmart_until_confirm(user, world.peer)
        answer = await user.choose("pay.confirm")  # past WeChat's 5 s: answered "success"
        await world.peer.wait_for(
            lambda: [t for t in world.peer.custom_texts(user.openid) if RECEIPT in t],
            what="the receipt by customer service",
        )
        await bot.stop()
        passive = [answer.text] if answer.text and RECEIPT in answer.text else []
        sent = [t for t in world.peer.custom_texts(user.openid) if RECEIPT in t]
        templates = world.peer.templates(user.openid)
        assert len(passive + sent) + len(templates) == 1, (passive, sent, templates)
        assert await orders(world) == [(OrderStatus.SETTLED.value, "wechat")]
    finally:
        await world.close()
