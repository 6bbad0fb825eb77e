"""The Telegram channel end to end: ``cardbot run telegram`` as its own process against a
Bot-API-compatible server on 127.0.0.1 (``tests/telegram_api.py``), on SQLite and PostgreSQL.
Users are played by feeding updates; what the bot does is read from the server's records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.democard import render_card_photo
from core.model import OrderStatus
from handlers.i18n import Translator
from tests.e2e.telegram_harness import (
    WEBHOOK_SECRET,
    BotProcess,
    Player,
    wait_until_ready,
    watch_queue,
)
from tests.telegram_api import FakeTelegram, User

WALMART = ("2326081744029136", "135790")  # ¥500, active (bot/sandbox/cards.csv)
NAME, ID_NUMBER, PHONE = "李雷", "11010519491231002X", "13912345678"
ALIPAY = "lilei.pays@example.com"
ZH, EN = Translator("zh"), Translator("en")


@pytest.fixture
async def bot(tmp_path: Path, database_url: str, tg: FakeTelegram) -> AsyncIterator[BotProcess]:
    # The sale tests answer instantly, as no person does: lift the per-chat pacing so they do
    # not wait a second a message. The limits themselves are tested in test_telegram_flow.py.
    process = BotProcess(tmp_path, database_url, tg.base_url, TELEGRAM_CHAT_BURST="100")
    watch_queue(tg, database_url)
    try:
        yield process
    finally:
        await process.close()


async def polling(bot: BotProcess, tg: FakeTelegram) -> Player:
    watch_queue(tg, bot.database_url)  # a Player waits until each update is handled
    await bot.start()
    await wait_until_ready(tg, polling=True)
    return Player(tg)


def card_photo() -> bytes:
    return render_card_photo("沃尔玛", WALMART[0], "¥500.00")


async def sell_until_quote(p: Player, tg: FakeTelegram, alice: User) -> list[str]:
    """/start → sell → photo → secret; returns what the bot said to the secret."""
    said = await p.say(tg.text_update(alice, "/start"))
    assert ZH("menu.prompt") in said[-1]
    said = await p.say(tg.press(alice, "menu.sell"))
    assert ZH("sell.ask_card") in said[-1]
    said = await p.say(tg.photo_update(alice, card_photo()))
    assert "沃尔玛" in said[-1] and "9136" in said[-1], said
    return await p.say(tg.text_update(alice, WALMART[1]))


async def identity_and_payout(p: Player, tg: FakeTelegram, alice: User) -> list[str]:
    await p.say(tg.press(alice, "quote.accept"))
    await p.say(tg.press(alice, "consent.yes"))
    await p.say(tg.text_update(alice, NAME))
    await p.say(tg.text_update(alice, ID_NUMBER))
    await p.say(tg.text_update(alice, PHONE))
    await p.say(tg.press(alice, "method.alipay"))
    await p.say(tg.text_update(alice, ALIPAY))
    return await p.say(tg.press(alice, "pay.confirm"))


def deleted_ids(tg: FakeTelegram, chat: int) -> set[int]:
    return {m for c, m in tg.deleted if c == chat}


# --------------------------------------------------------------------------------------------
# A whole sale


async def test_a_whole_sale_over_long_polling_from_photo_to_receipt(
    bot: BotProcess, tg: FakeTelegram
) -> None:
    p = await polling(bot, tg)
    alice = User(1001)

    said = await sell_until_quote(p, tg, alice)
    secret_update = next(
        m
        for (c, _), m in sorted(tg.messages.items())
        if c == alice.id and m.get("text") == WALMART[1]
    )
    # The card secret is captured, its message deleted, and the user told so.
    assert secret_update["message_id"] in deleted_ids(tg, alice.id)
    assert any(ZH("telegram.deleted_inbound") in s for s in said)
    quote = "\n".join(said)
    assert "面值：¥500.00" in quote and "锁定 10 分钟" in quote

    said = await identity_and_payout(p, tg, alice)
    receipt = "\n".join(said)
    assert "【电子回单】" in receipt
    [order] = await bot.orders()
    assert order.status is OrderStatus.SETTLED and order.channel == "telegram"
    assert order.number in receipt

    # ID number, phone and account messages were deleted too; nothing sensitive was echoed.
    sensitive = {ID_NUMBER, PHONE, ALIPAY, WALMART[1]}
    user_msgs = {m.get("text"): mid for (c, mid), m in tg.messages.items() if c == alice.id}
    assert {user_msgs[s] for s in sensitive} <= deleted_ids(tg, alice.id)
    bot_text = "\n".join(tg.texts(alice.id))
    assert not any(s in bot_text for s in (WALMART[0], WALMART[1], ID_NUMBER, ALIPAY))

    # Every button press was answered, and each pressed keyboard taken away.
    presses = [c for c in tg.calls if c.method == "answercallbackquery"]
    assert len(presses) == 5
    assert sum(1 for c in tg.calls if c.method == "editmessagereplymarkup" and c.ok) == 5
    # Commands registered in both languages (and the default, Chinese).
    assert set(tg.commands) == {"", "zh", "en"}
    assert [c["command"] for c in tg.commands["en"]] == [
        "start",
        "sell",
        "prices",
        "orders",
        "help",
        "human",
        "cancel",
    ]
    assert tg.commands["zh"][1]["description"] == ZH("telegram.command.sell")

    assert await bot.stop() == 0
    log = bot.log_file.read_text()
    assert WALMART[1] not in log and ID_NUMBER not in log and "Traceback" not in bot.output()


# --------------------------------------------------------------------------------------------
# At most once


async def test_an_update_delivered_twice_or_under_another_update_id_takes_effect_once(
    bot: BotProcess, tg: FakeTelegram
) -> None:
    p = await polling(bot, tg)
    alice = User(1002)
    await sell_until_quote(p, tg, alice)

    accept = tg.press(alice, "quote.accept")
    mark = len(tg.calls)
    tg.push(accept, dict(accept))  # the same update twice in one batch
    await tg.handled(accept)
    assert sum(ZH("identity.consent") in s for s in tg.texts(alice.id, mark)) == 1
    # The same press redelivered under another update_id: still nothing.
    assert await p.say({**accept, "update_id": tg.next_update_id()}) == []

    await p.say(tg.press(alice, "consent.yes"))
    for text in (NAME, ID_NUMBER, PHONE):
        await p.say(tg.text_update(alice, text))
    await p.say(tg.press(alice, "method.alipay"))
    await p.say(tg.text_update(alice, ALIPAY))
    confirm = tg.press(alice, "pay.confirm")
    mark = len(tg.calls)
    tg.push(confirm, dict(confirm))
    await tg.handled(confirm)
    assert sum("【电子回单】" in s for s in tg.texts(alice.id, mark)) == 1
    [order] = await bot.orders()
    assert order.status is OrderStatus.SETTLED
    assert await bot.stop() == 0


async def test_a_bot_killed_mid_sale_and_restarted_ends_with_exactly_one_order(
    bot: BotProcess, tg: FakeTelegram
) -> None:
    p = await polling(bot, tg)
    alice = User(1003)
    await sell_until_quote(p, tg, alice)

    # The acceptance is committed, then the process dies while sending the answer: the
    # update was never confirmed to getUpdates.
    accept = tg.press(alice, "quote.accept")
    mark = len(tg.calls)
    tg.stall = lambda c: c.method == "sendmessage" and c.chat == alice.id
    tg.push(accept)
    await tg.wait_for(lambda c: c.method == "sendmessage" and c.chat == alice.id, since=mark)
    await bot.kill()
    tg.stall = None

    mark = len(tg.calls)
    await bot.start()
    await tg.handled(accept)  # delivered again to the new process
    assert tg.texts(alice.id, mark) == []  # …and it did nothing the second time
    said = await p.say(tg.text_update(alice, "/start"))
    assert ZH("menu.sale_in_progress") in said[-1] and ZH("identity.consent") in said[-1]

    await p.say(tg.press(alice, "consent.yes"))
    for text in (NAME, ID_NUMBER, PHONE):
        await p.say(tg.text_update(alice, text))
    await p.say(tg.press(alice, "method.alipay"))
    await p.say(tg.text_update(alice, ALIPAY))
    said = await p.say(tg.press(alice, "pay.confirm"))
    assert "【电子回单】" in said[-1]
    [order] = await bot.orders()
    assert order.status is OrderStatus.SETTLED
    assert await bot.stop() == 0


# --------------------------------------------------------------------------------------------
# Webhook mode


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_whole_sale_over_the_webhook_and_requests_without_the_secret_are_refused(
    bot: BotProcess, tg: FakeTelegram
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram/hook"
    bot.env["TELEGRAM_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    await bot.start("--webhook", url, "--port", str(port))
    await wait_until_ready(tg, polling=False)
    assert tg.webhook is not None
    assert tg.webhook["url"] == url and tg.webhook["secret_token"] == WEBHOOK_SECRET
    p = Player(tg, webhook_url=url)
    alice = User(1004, language_code="en")

    # Wrong secret, or none: 401 and nothing happens.
    start = tg.text_update(alice, "/start")
    assert await p.deliver(start, secret="not-the-secret") == [401]
    assert await p.deliver(start, secret="") == [401]
    assert tg.texts(alice.id) == []
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=b"{not json", headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
        ) as response,
    ):
        assert response.status == 400

    said = await p.say(start)
    assert EN("menu.prompt") in said[-1]  # English: the user's language_code
    assert await p.say(start) == []  # Telegram retrying the same update: no second effect
    await p.say(tg.press(alice, "menu.sell"))
    await p.say(tg.photo_update(alice, card_photo()))
    said = await p.say(tg.text_update(alice, WALMART[1]))
    assert "Face value: ¥500.00" in said[-1]
    assert EN("telegram.deleted_inbound") in said[0]
    said = await identity_and_payout(p, tg, alice)
    assert "Electronic receipt" in said[-1] or "receipt" in said[-1].lower()
    [order] = await bot.orders()
    assert order.status is OrderStatus.SETTLED

    # After a week of silence update ids restart at random: a new message that happens to
    # reuse an old update_id is a new message, not a redelivery.
    tg.restart_update_ids(start["update_id"])
    said = await p.say(tg.text_update(alice, "/orders"))
    assert order.number in said[-1]
    assert await bot.stop() == 0


# --------------------------------------------------------------------------------------------
# Bad updates: a clear reply, or ignored on purpose; the process carries on


async def test_bad_updates_get_a_clear_reply_or_are_ignored_and_nothing_crashes(
    bot: BotProcess, tg: FakeTelegram
) -> None:
    p = await polling(bot, tg)
    alice = User(1005)
    await p.say(tg.text_update(alice, "/start"))
    first_menu = tg.bot_messages(alice.id)[-1]

    # Unknown update types, and a malformed update among good ones: skipped.
    unknown = {"update_id": tg.next_update_id(), "some_future_update": {"x": 1}}
    malformed = {"update_id": tg.next_update_id(), "message": {"message_id": "not a number"}}
    assert await p.say(unknown) == []
    tg.push(malformed)
    await tg.handled(malformed)
    # Stickers and voice: we cannot use them, and say so.
    sticker = {
        "file_id": "s1",
        "file_unique_id": "s1u",
        "type": "regular",
        "width": 512,
        "height": 512,
        "is_animated": False,
        "is_video": False,
    }
    assert await p.say(tg.message_update(alice, sticker=sticker)) == [ZH("telegram.unsupported")]
    voice = {"file_id": "v1", "file_unique_id": "v1u", "duration": 3}
    assert await p.say(tg.message_update(alice, voice=voice)) == [ZH("telegram.unsupported")]
    # An edited message is not read again.
    edited = tg.text_update(alice, "hello")
    edited = {
        "update_id": tg.next_update_id(),
        "edited_message": {**edited["message"], "edit_date": 1},
    }
    assert await p.say(edited) == [ZH("telegram.edit_ignored")]
    # Files: over 20 MB refused without downloading; not a picture refused.
    mark = len(tg.calls)
    huge = tg.document_update(alice, b"x", "card.jpg", "image/jpeg", claimed_size=25 * 2**20)
    assert ZH("error.file_too_large") in (await p.say(huge))[0]
    pdf = tg.document_update(alice, b"%PDF-1.4", "card.pdf", "application/pdf")
    assert await p.say(pdf) == [ZH("telegram.not_an_image_file")]
    assert not [c for c in tg.calls[mark:] if c.method == "getfile"]

    # Buttons: garbage data, a hash that maps to nothing, and a keyboard already used.
    await p.say(tg.press(alice, "menu.sell"))
    for data in ("garbage", "#AAAAAAAAAAAAAAAAAAAAAAAA", "menu.sell"):
        mark = len(tg.calls)
        said = await p.say(tg.callback_update(alice, data, first_menu))
        assert ZH("error.option_gone") in said[0], (data, said)
        answers = [c for c in tg.calls[mark:] if c.method == "answercallbackquery"]
        assert [a.params.get("text") for a in answers] == [ZH("error.option_gone")]
    # A press without data (a game button) is answered and otherwise ignored.
    no_data = tg.callback_update(alice, "x", first_menu)
    del no_data["callback_query"]["data"]
    mark = len(tg.calls)
    assert await p.say(no_data) == []
    assert [c.method for c in tg.calls[mark:] if c.method != "getupdates"] == [
        "answercallbackquery"
    ]
    # A group chat is not where cards are sold: ignored.
    group = tg.text_update(alice, "/start")
    group["message"]["chat"] = {"id": -100200, "type": "group", "title": "friends"}
    mark = len(tg.calls)
    tg.push(group)
    await tg.handled(group)
    assert not [c for c in tg.calls[mark:] if c.method == "sendmessage"]

    # Still alive and well.
    assert ZH("sell.ask_card") in (await p.say(tg.text_update(alice, "/sell")))[-1]
    assert await bot.stop() == 0
    assert "Traceback" not in bot.output() and "Traceback" not in bot.log_file.read_text()
