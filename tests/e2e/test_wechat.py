"""The WeChat channel end to end: ``cardbot run wechat`` as its own process, pushed to over HTTP
the way WeChat pushes (signed; AES in safe and compatible mode), talking to a WeChat-API test
server — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select

from bot.democard import render_card_photo
from core.model import OrderStatus
from handlers.i18n import Translator
from storage.db import SqlAlchemyUnitOfWorkFactory
from storage.tables import ChannelIdentityRow, OrderRow, OutboxRow, ProcessedInboundRow
from tests.wechat_peer import (
    AES_KEY,
    AES_KEY_OLD,
    TOKEN,
    Answer,
    BotProcess,
    WeChatApiPeer,
    WeChatPusher,
    bot_env,
    event_xml,
    image_xml,
    migrate,
    next_msg_id,
    sha1_signature,
    text_xml,
    wechat_encrypt,
)

pytestmark = pytest.mark.slow

WALMART = ("2326081744029136", "135790")  # ¥500, active (bot/sandbox/README.md, W1)
RTMART = "2801527364099"  # no secret, ¥500 (R1)
NAME, ID_NUMBER, PHONE = "李雷", "11010519491231002X", "13912345678"
ALIPAY = "lilei.pays@example.com"
ZH = Translator("zh")
# The production deadline (4 s), and a payout step that takes longer than it on any machine.
PAST_THE_DEADLINE = {
    "WECHAT_REPLY_DEADLINE_SECONDS": "4",
    "CARDBOT_SANDBOX_PAYOUT_DELAY_SECONDS": "6",
}
OPTION = re.compile(r"^(\d+)\. (.+)$", re.MULTILINE)


class World:
    """The peer, an HTTP session, and cardbot processes over one database."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.peer = WeChatApiPeer()
        self.session = aiohttp.ClientSession()
        self.bots: list[BotProcess] = []
        self.migrated = database_url.startswith("sqlite")

    async def bot(self, **env: str) -> BotProcess:
        environment = bot_env(self.tmp_path, self.database_url, self.peer.base, **env)
        if not self.migrated:
            await migrate(environment)
            self.migrated = True
        bot = BotProcess(environment, self.tmp_path / f"bot{len(self.bots)}.log")
        self.bots.append(bot)
        await bot.start(self.session)
        return bot

    def pusher(self, bot: BotProcess, mode: str = "safe") -> WeChatPusher:
        return WeChatPusher(self.session, bot.url, mode)

    async def count(self, row: type, **where: object) -> int:
        factory = SqlAlchemyUnitOfWorkFactory.from_url(self.database_url)
        try:
            async with factory.engine.connect() as connection:
                query = select(func.count()).select_from(row)  # type: ignore[arg-type]
                for name, value in where.items():
                    query = query.where(getattr(row, name) == value)
                return int((await connection.execute(query)).scalar_one())
        finally:
            await factory.dispose()

    async def close(self) -> None:
        for bot in self.bots:
            await bot.stop()
        await self.session.close()
        await self.peer.close()


async def outbox_settled(world: World, within: float = 60.0) -> None:
    """Wait until no message is left pending in the WeChat outbox (sent or held, each one)."""
    deadline = time.monotonic() + within
    while await world.count(OutboxRow, channel="wechat", state="pending"):
        assert time.monotonic() < deadline, "the WeChat outbox never settled"
        await asyncio.sleep(0.05)


async def receipts_queued(world: World) -> int:
    factory = SqlAlchemyUnitOfWorkFactory.from_url(world.database_url)
    try:
        async with factory.engine.connect() as connection:
            query = select(func.count()).where(
                OutboxRow.channel == "wechat", OutboxRow.text.contains("【电子回单】")
            )
            return int((await connection.execute(query)).scalar_one())
    finally:
        await factory.dispose()


@pytest.fixture
async def world(tmp_path: Path, database_url: str) -> AsyncIterator[World]:
    w = World(tmp_path, database_url)
    await w.peer.start()
    try:
        yield w
    finally:
        await w.close()


class User:
    """One WeChat user talking to cardbot, remembering the last reply on their screen."""

    def __init__(self, pusher: WeChatPusher, openid: str) -> None:
        self.pusher = pusher
        self.openid = openid
        self.screen = ""

    async def send(self, xml: str) -> Answer:
        answer = await self.pusher.push(xml)
        assert answer.status == 200, answer.body
        if answer.text is not None:
            self.screen = answer.text
        return answer

    async def say(self, text: str, msg_id: str | None = None) -> Answer:
        return await self.send(text_xml(self.openid, text, msg_id))

    def number_of(self, key: str) -> str:
        label = ZH(key)
        for number, text in OPTION.findall(self.screen):
            if text.startswith(label):
                return number
        raise AssertionError(f"{label!r} not offered; screen:\n{self.screen}")

    async def choose(self, key: str) -> Answer:
        return await self.say(self.number_of(key))


async def sell_walmart_until_confirm(user: User, peer: WeChatApiPeer) -> None:
    welcome = await user.send(event_xml(user.openid, "subscribe"))
    assert welcome.text is not None and ZH("menu.welcome") in welcome.text
    await user.choose("menu.sell")
    peer.media[f"media-{user.openid}"] = render_card_photo("沃尔玛", WALMART[0], "¥500.00")
    photo = await user.send(
        image_xml(user.openid, f"media-{user.openid}", f"{peer.base}/pic/none.jpg")
    )
    assert photo.text is not None and "卡密" in photo.text, photo.text
    quote = await user.say(WALMART[1])
    assert quote.text is not None and "面值：¥500.00" in quote.text
    await user.choose("quote.accept")
    await user.choose("consent.yes")
    await user.say(NAME)
    await user.say(ID_NUMBER)
    await user.say(PHONE)
    await user.choose("method.alipay")
    await user.say(ALIPAY)


async def orders(world: World) -> list[tuple[str, str]]:
    factory = SqlAlchemyUnitOfWorkFactory.from_url(world.database_url)
    try:
        async with factory.engine.connect() as connection:
            rows = await connection.execute(select(OrderRow.status, OrderRow.channel))
            return [(str(r[0]), str(r[1])) for r in rows]
    finally:
        await factory.dispose()


# --------------------------------------------------------------------------------------------
# A whole sale


@pytest.mark.parametrize("mode", ["safe", "plaintext"])
async def test_a_whole_sale_from_photo_to_receipt_over_wechat(world: World, mode: str) -> None:
    env = {"WECHAT_MODE": mode} if mode == "plaintext" else {}
    if mode == "plaintext":
        env["WECHAT_AES_KEY"] = ""
    bot = await world.bot(**env)
    user = User(world.pusher(bot, mode), f"o_{mode}_alice")
    await sell_walmart_until_confirm(user, world.peer)
    receipt = await user.choose("pay.confirm")
    assert receipt.text is not None and "【电子回单】" in receipt.text
    assert await orders(world) == [(OrderStatus.SETTLED.value, "wechat")]
    # The photo came through the media API with the shared token; nothing went by customer
    # service: every answer was passive.
    [download] = world.peer.sent("media/get")
    assert download.query["media_id"] == f"media-{user.openid}"
    assert world.peer.custom_texts() == []
    assert len(world.peer.sent("stable_token")) == 1


async def test_compatible_mode_and_the_previous_aes_key_during_a_key_change(world: World) -> None:
    bot = await world.bot(
        WECHAT_MODE="compatible", WECHAT_AES_KEY=AES_KEY, WECHAT_AES_KEY_PREVIOUS=AES_KEY_OLD
    )
    compatible = User(world.pusher(bot, "compatible"), "o_compat")
    answer = await compatible.say("价格")
    assert answer.text is not None and "沃尔玛" in answer.text
    old_key = User(WeChatPusher(world.session, bot.url, "safe", aes_key=AES_KEY_OLD), "o_old")
    answer = await old_key.say("价格")
    assert answer.text is not None and "沃尔玛" in answer.text  # replies use the new key


async def test_a_photo_whose_media_is_gone_is_fetched_by_its_picurl(world: World) -> None:
    bot = await world.bot()
    user = User(world.pusher(bot), "o_picurl")
    await user.say("卖卡")
    world.peer.pictures["card.jpg"] = render_card_photo("沃尔玛", WALMART[0], "¥500.00")
    answer = await user.send(image_xml(user.openid, "expired", f"{world.peer.base}/pic/card.jpg"))
    assert answer.text is not None and "卡密" in answer.text
    lost = await user.send(image_xml(user.openid, "expired", f"{world.peer.base}/pic/gone.jpg"))
    assert lost.text == ZH("wechat.photo_unavailable")


# --------------------------------------------------------------------------------------------
# Retries and the 5-second rule


async def test_the_same_push_three_times_makes_one_order_and_one_reply(world: World) -> None:
    bot = await world.bot()
    user = User(world.pusher(bot), "o_retry")
    await user.say("卖卡")
    msg_id = next_msg_id()
    xml = text_xml(user.openid, RTMART, msg_id)  # no secret: this message makes the order
    queued_before = await world.count(OutboxRow, channel="wechat")
    answers = await asyncio.gather(*(user.pusher.push(xml) for _ in range(3)))
    answers.append(await user.pusher.push(xml))  # and once more after it was answered
    assert all(a.status == 200 for a in answers)
    replies = [a.text for a in answers if a.text is not None]
    assert len(replies) == 1 and "大润发" in (replies[0] or "")
    assert await orders(world) == [(OrderStatus.QUOTED.value, "wechat")]
    # Nothing was queued for customer service, so no stray copy can follow (no sleeping on it).
    assert await world.count(OutboxRow, channel="wechat") == queued_before
    assert world.peer.custom_texts() == []


async def test_a_step_longer_than_five_seconds_reaches_the_user_once_by_customer_service(
    world: World,
) -> None:
    bot = await world.bot(**PAST_THE_DEADLINE)
    user = User(world.pusher(bot), "o_slow")
    await sell_walmart_until_confirm(user, world.peer)
    confirm = text_xml(user.openid, user.number_of("pay.confirm"), next_msg_id())
    first = await user.pusher.push(confirm)
    assert first.success  # WeChat heard back before the step ended (the deadline is a setting)
    await world.peer.wait_for(
        lambda: [t for t in world.peer.custom_texts(user.openid) if "【电子回单】" in t],
        what="the receipt by customer service",
    )
    queued = await receipts_queued(world)
    late_retry = await user.pusher.push(confirm)
    assert late_retry.success
    assert await receipts_queued(world) == queued  # the retry queued no second one
    assert len([t for t in world.peer.custom_texts(user.openid) if "【电子回单】" in t]) == 1
    assert await orders(world) == [(OrderStatus.SETTLED.value, "wechat")]


async def test_a_retry_during_a_slow_step_gets_the_one_reply(world: World) -> None:
    bot = await world.bot(**PAST_THE_DEADLINE)
    user = User(world.pusher(bot), "o_slow_retry")
    await sell_walmart_until_confirm(user, world.peer)
    confirm = text_xml(user.openid, user.number_of("pay.confirm"), next_msg_id())
    first = await user.pusher.push(confirm)  # "success" after 4 s
    retry = await user.pusher.push(confirm)  # WeChat's retry: the payout ends while it waits
    third = await user.pusher.push(confirm)
    # Not "after 1.5 s": the receipt has gone one way or the other, and the outbox is empty.
    await world.peer.wait_for(
        lambda: (
            any(a.text for a in (first, retry, third))
            or [t for t in world.peer.custom_texts(user.openid) if "【电子回单】" in t]
        ),
        what="the receipt, passively or by customer service",
    )
    await outbox_settled(world)
    passive = [a.text for a in (first, retry, third) if a.text is not None]
    by_service = [t for t in world.peer.custom_texts(user.openid) if "【电子回单】" in t]
    assert len(passive) + len(by_service) == 1
    assert first.success and third.success
    assert await orders(world) == [(OrderStatus.SETTLED.value, "wechat")]


# --------------------------------------------------------------------------------------------
# Bad input changes nothing


async def test_bad_pushes_get_4xx_or_success_and_store_nothing(world: World) -> None:
    bot = await world.bot()
    pusher = world.pusher(bot)
    xml = text_xml("o_attacker", "价格")
    query, body = pusher.signed_query(xml)

    async def post(q: dict[str, str], b: bytes) -> int:
        answer = await pusher.raw(q, b)
        assert answer.text is None
        return answer.status

    assert await post({**query, "signature": "0" * 40}, body.encode()) == 403
    assert await post({**query, "msg_signature": "0" * 40}, body.encode()) == 403
    assert await post({k: v for k, v in query.items() if k != "signature"}, body.encode()) == 403
    # A correctly signed push whose ciphertext is not from our key.
    garbage = wechat_encrypt(xml, "A" * 43)
    bad_aes = f"<xml><Encrypt><![CDATA[{garbage}]]></Encrypt></xml>"
    signed = {
        **query,
        "msg_signature": sha1_signature(TOKEN, query["timestamp"], query["nonce"], garbage),
    }
    assert await post(signed, bad_aes.encode()) == 400
    for broken in ("<xml><Encrypt>", "not xml at all", "<xml></xml>"):
        q, b = pusher.signed_query(broken)
        assert await post(q, b.encode()) == 400
    q, b = pusher.signed_query(
        xml.replace("<MsgType><![CDATA[text]]>", "<MsgType><![CDATA[hologram]]>")
    )
    assert (await pusher.raw(q, b.encode())).success  # unknown type: acknowledged, ignored
    q, b = pusher.signed_query("<xml><FromUserName>o</FromUserName></xml>")
    assert await post(q, b.encode()) == 400
    q, _ = pusher.signed_query(xml)
    assert await post(q, b"x" * (65 * 1024)) == 413
    plain = WeChatPusher(world.session, bot.url, "plaintext")
    q, b = plain.signed_query(xml)
    assert await post(q, b.encode()) == 400  # safe mode takes no plaintext push

    async with world.session.get(
        bot.url, params={**query, "echostr": "x", "signature": "bad"}
    ) as r:
        assert r.status == 403

    for row in (ProcessedInboundRow, ChannelIdentityRow, OutboxRow):
        assert await world.count(row) == 0
    assert world.peer.calls == []


# --------------------------------------------------------------------------------------------
# Events, notifications, the customer-service quota


async def test_unsubscribing_marks_the_user_unreachable_and_a_message_brings_them_back(
    world: World,
) -> None:
    bot = await world.bot()
    user = User(world.pusher(bot), "o_leaver")
    await user.send(event_xml(user.openid, "subscribe"))
    gone = await user.send(event_xml(user.openid, "unsubscribe"))
    assert gone.success
    assert await world.count(ChannelIdentityRow, external_id=user.openid, reachable=False) == 1
    back = await user.say("菜单")
    assert back.text is not None
    assert await world.count(ChannelIdentityRow, external_id=user.openid, reachable=True) == 1


async def test_a_menu_click_runs_its_command(world: World) -> None:
    bot = await world.bot()
    user = User(world.pusher(bot), "o_clicker")
    answer = await user.send(event_xml(user.openid, "CLICK", key="prices"))
    assert answer.text is not None and "沃尔玛" in answer.text
    again = await user.pusher.push(event_xml(user.openid, "CLICK", key="prices", create_time=1))
    assert again.text is not None
    same = await user.pusher.push(event_xml(user.openid, "CLICK", key="prices", create_time=1))
    assert same.success  # FromUserName + CreateTime: the same event


LatePayout = Callable[[World, dict[str, str]], Awaitable[tuple[User, BotProcess]]]


async def late_payout(world: World, env: dict[str, str]) -> tuple[User, BotProcess]:
    bot = await world.bot(CARDBOT_SANDBOX_PAYOUT_LATE_SECONDS="1", **env)
    user = User(world.pusher(bot), "o_late")
    await user.send(event_xml(user.openid, "subscribe"))
    await user.choose("menu.sell")
    world.peer.media["m1"] = render_card_photo("沃尔玛", WALMART[0], "¥500.00")
    await user.send(image_xml(user.openid, "m1", ""))
    await user.say(WALMART[1])
    await user.choose("quote.accept")
    await user.choose("consent.yes")
    for line in (NAME, ID_NUMBER, PHONE):
        await user.say(line)
    await user.choose("method.alipay")
    await user.say("late@example.com")  # the sandbox provider pays this account later
    answer = await user.choose("pay.confirm")
    assert answer.text is not None and "【电子回单】" not in answer.text
    return user, bot


async def test_a_payout_that_lands_later_is_notified_by_template_message(world: World) -> None:
    user, _ = await late_payout(world, {"WECHAT_TEMPLATE_ID": "TPL-ORDER"})
    [template, *_] = await world.peer.wait_for(
        lambda: world.peer.templates(user.openid), what="the template message"
    )
    assert template["template_id"] == "TPL-ORDER"
    assert "【电子回单】" in template["data"]["content"]["value"]  # the receipt comes first
    assert world.peer.custom_texts() == []


async def test_without_a_template_a_notice_goes_by_customer_service(world: World) -> None:
    user, _ = await late_payout(world, {})
    await world.peer.wait_for(
        lambda: [t for t in world.peer.custom_texts(user.openid) if "【电子回单】" in t],
        what="the receipt by customer service",
    )
    assert world.peer.templates() == []


async def test_beyond_the_quota_a_message_is_held_for_the_next_message(world: World) -> None:
    user, _ = await late_payout(world, {})
    world.peer.custom_errors = [45047]  # WeChat: out of response count limit
    await world.peer.wait_for(
        lambda: world.peer.sent("message/custom/send"), what="the refused send"
    )
    await outbox_settled(world)  # every queued message tried: none left pending
    assert world.peer.custom_texts() == []
    assert await world.count(OutboxRow, state="held") > 0  # the receipt (and menu)
    answer = await user.say("订单")
    assert answer.text is not None
    assert answer.text.startswith(ZH("wechat.held_header")) and "【电子回单】" in answer.text
    assert await world.count(OutboxRow, state="held") == 0


async def test_an_expired_token_is_refreshed_and_the_message_still_goes(world: World) -> None:
    user, _ = await late_payout(world, {})
    world.peer.expire_token()
    await world.peer.wait_for(
        lambda: [t for t in world.peer.custom_texts(user.openid) if "【电子回单】" in t],
        what="the receipt after a token refresh",
    )
    assert len(world.peer.tokens_issued) == 2


# --------------------------------------------------------------------------------------------
# Two processes, one database


async def test_two_processes_share_one_token_and_never_act_twice(world: World) -> None:
    if world.database_url.startswith("sqlite"):
        pytest.skip("several server processes share PostgreSQL")
    first = await world.bot()
    user_a = User(world.pusher(first), "o_two")
    await user_a.send(event_xml(user_a.openid, "subscribe"))  # no token needed yet
    world.peer.media["m2"] = render_card_photo("沃尔玛", WALMART[0], "¥500.00")
    await user_a.choose("menu.sell")
    await user_a.send(image_xml(user_a.openid, "m2", ""))  # fetches the token
    second = await world.bot()
    user_b = User(world.pusher(second), user_a.openid)
    user_b.screen = user_a.screen
    xml = text_xml(user_a.openid, WALMART[1], next_msg_id())
    answers = await asyncio.gather(user_a.pusher.push(xml), user_b.pusher.push(xml))
    assert sum(a.text is not None for a in answers) == 1
    assert len(await orders(world)) == 1
    user_b.screen = next(a.text for a in answers if a.text is not None) or ""
    world.peer.media["m3"] = render_card_photo("沃尔玛", WALMART[0], "¥500.00")
    await user_b.send(image_xml(user_b.openid, "m3", ""))  # the second process's first call
    tokens = {c.query.get("access_token") for c in world.peer.sent("media/get")}
    assert len(world.peer.sent("stable_token")) == 1 and len(tokens) == 1


# --------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    ("missing", "says"),
    [
        ({"WECHAT_TOKEN": ""}, "WECHAT_TOKEN"),
        ({"WECHAT_APP_SECRET": "", "WECHAT_APP_ID": ""}, "WECHAT_APP_ID, WECHAT_APP_SECRET"),
        ({"WECHAT_MODE": "safe", "WECHAT_AES_KEY": ""}, "WECHAT_AES_KEY"),
        ({"WECHAT_AES_KEY": "not-a-key"}, "EncodingAESKey"),
        ({"WECHAT_ACCOUNT_ID": ""}, "WECHAT_ACCOUNT_ID"),
        (
            {"WECHAT_MODE": "plaintext", "WECHAT_AES_KEY": "", "CARDBOT_ADMINS": "wechat:oAdm"},
            "plaintext mode cannot authenticate WeChat staff or admins",
        ),
    ],
)
async def test_missing_or_bad_settings_stop_with_a_clear_message(
    tmp_path: Path, missing: dict[str, str], says: str
) -> None:
    env = bot_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", "http://127.0.0.1:9")
    env.update(missing)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "run", "wechat", "--port", "0",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert says in stderr.decode() and "Traceback" not in stderr.decode()
