"""A dispute across channels, over the channels' own protocols: a user on WeChat disputes a quote,
a staff member on Telegram takes the ticket, talks with the user, re-quotes and resolves; the
user accepts the new quote and is paid. One ``cardbot run all`` process, the WeChat peer and the
fake Bot API — on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.democard import render_card_photo
from core.model import OrderStatus
from storage.db import SqlAlchemyUnitOfWorkFactory
from tests.e2e.telegram_harness import Player, wait_until_ready, watch_queue
from tests.e2e.test_wechat import ALIPAY, ID_NUMBER, NAME, PHONE, WALMART, User
from tests.telegram_api import TOKEN, FakeTelegram
from tests.telegram_api import User as TelegramUser
from tests.wechat_peer import (
    BotProcess,
    WeChatApiPeer,
    WeChatPusher,
    bot_env,
    event_xml,
    image_xml,
    migrate,
)

pytestmark = pytest.mark.slow

STAFF = TelegramUser(900, "zh-hans", "客服小王")
OPENID = "oDisputingUser000000000001"


class Stage:
    """Both test servers and one cardbot serving both channels."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.peer = WeChatApiPeer()
        self.tg = FakeTelegram()
        self.session = aiohttp.ClientSession()
        self.bot: BotProcess | None = None

    async def start(self) -> None:
        await self.peer.start()
        tg_base = await self.tg.start()
        env = bot_env(
            self.tmp_path,
            self.database_url,
            self.peer.base,
            TELEGRAM_BOT_TOKEN=TOKEN,
            TELEGRAM_API_BASE=tg_base,
            CARDBOT_STAFF=f"telegram:{STAFF.id}",
        )
        if not self.database_url.startswith("sqlite"):
            await migrate(env)
        self.bot = BotProcess(env, self.tmp_path / "bot.log", channels=("all",))
        watch_queue(self.tg, self.database_url)
        await self.bot.start(self.session)
        await wait_until_ready(self.tg, polling=True)

    async def close(self) -> None:
        if self.bot is not None:
            await self.bot.stop()
        await self.session.close()
        await self.peer.close()
        await self.tg.close()

    async def staff_says(self, text: str) -> str:
        return "\n".join(await Player(self.tg).say(self.tg.text_update(STAFF, text)))

    async def staff_heard(self, fragment: str) -> str:
        call = await self.tg.wait_for(
            lambda c: (
                c.method == "sendmessage"
                and c.ok
                and c.chat == STAFF.id
                and fragment in str(c.params.get("text"))
            ),
            within=30,
        )
        return str(call.params.get("text"))

    async def user_heard(self, fragment: str) -> str:
        return str(
            await self.peer.wait_for(
                lambda: next((t for t in self.peer.custom_texts(OPENID) if fragment in t), None),
                seconds=30,
                what=f"a customer-service message with {fragment!r}",
            )
        )


@pytest.fixture
async def stage(tmp_path: Path, database_url: str) -> AsyncIterator[Stage]:
    s = Stage(tmp_path, database_url)
    try:
        await s.start()
        yield s
    finally:
        await s.close()


async def test_a_wechat_user_disputes_a_quote_and_telegram_staff_requote_and_it_is_paid(
    stage: Stage,
) -> None:
    user = User(WeChatPusher(stage.session, stage.bot.url if stage.bot else "", "safe"), OPENID)
    await user.send(event_xml(OPENID, "subscribe"))
    await user.choose("menu.sell")
    stage.peer.media["media-dispute"] = render_card_photo("沃尔玛", WALMART[0], "¥500.00")
    await user.send(image_xml(OPENID, "media-dispute", f"{stage.peer.base}/pic/none.jpg"))
    quote = await user.say(WALMART[1])
    assert quote.text is not None and "面值：¥500.00" in quote.text

    # The user asks for a person about the quote; the staff member hears of it on Telegram.
    await user.say("人工")
    opened = await user.choose("desk.reason.quote")
    assert opened.text is not None and "T1" in opened.text
    alert = await stage.staff_heard("新工单 T1")
    assert "wechat" in alert and "/take 1" in alert

    card = await stage.staff_says("/take 1")
    assert "T1" in card and WALMART[0] not in card and "9136" in card
    assert "客服已接入" in await stage.user_heard("客服已接入")

    # They talk: the user's words reach Telegram redacted, the staff member's reach WeChat.
    answer = await user.say(f"这个价格太低了，我的卡号是 {WALMART[0]}")
    assert not answer.text  # the flow is paused: nothing from the bot itself
    heard = await stage.staff_heard("这个价格太低了")
    assert WALMART[0] not in heard and "9136" in heard
    await stage.staff_says("您好，我重新核验一下余额再给您报价")
    await stage.user_heard("我重新核验一下余额")

    # Re-quote and resolve; the user gets the fresh quote with its options, and accepts it.
    assert "T1" in await stage.staff_says("/resolve 1 requote 已按最新价格重新报价")
    resumed = await stage.user_heard("客服已离开")
    assert "已按最新价格重新报价" in resumed and "面值：¥500.00" in resumed
    user.screen = resumed
    await user.choose("quote.accept")
    await user.choose("consent.yes")
    await user.say(NAME)
    await user.say(ID_NUMBER)
    await user.say(PHONE)
    await user.choose("method.alipay")
    await user.say(ALIPAY)
    receipt = await user.choose("pay.confirm")
    texts = [receipt.text or "", *stage.peer.custom_texts(OPENID)]
    if not any("【电子回单】" in t for t in texts):
        await stage.user_heard("【电子回单】")

    factory = SqlAlchemyUnitOfWorkFactory.from_url(stage.database_url)
    try:
        async with factory() as uow:
            orders = list(await uow.orders.recent(limit=10))
            assert sorted(o.status.value for o in orders) == ["cancelled", "settled"]
            settled = next(o for o in orders if o.status is OrderStatus.SETTLED)
            assert settled.channel == "wechat"
            payout = await uow.payouts.for_order(settled.id or 0)
            assert payout is not None and payout.order_id == settled.id
            assert [t.kind for t in await uow.ledger.transactions(settled.id)].count(
                "payout_post"
            ) == 1
            assert list(await uow.tickets.active()) == []
    finally:
        await factory.dispose()
