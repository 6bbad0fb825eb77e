"""Button presses that point at someone else's chat (issue 12, item 6).

A callback query names the presser (``from``) and the message the button is on (``message``,
with its chat). Before the fix the bot answered into ``message.chat.id`` and stripped that
message's keyboard, whoever pressed: a forged press from Alice on a message of Bob's sent
Alice's replies into Bob's chat and removed Bob's buttons. In a private chat with the bot the
chat is the user, so a press whose message is in another private chat is refused.
"""

from __future__ import annotations

import pytest

from tests.security.conftest import StartTelegram
from tests.telegram_api import User

pytestmark = pytest.mark.slow

ALICE, BOB = User(5550001), User(5550002)


async def test_a_press_from_alice_on_bobs_message_touches_neither_chat(
    telegram_bot: StartTelegram,
) -> None:
    bot = await telegram_bot()
    tg = bot.tg
    for user in (ALICE, BOB):
        assert (await bot.post(tg.text_update(user, "/start")))[0] == 200
    bobs_menu = tg.bot_messages(BOB.id)[-1]
    assert bobs_menu.get("reply_markup"), "Bob has buttons on screen"
    mark = len(tg.calls)
    data = next(
        b["callback_data"]
        for row in bobs_menu["reply_markup"]["inline_keyboard"]
        for b in row
        if b["callback_data"].startswith("menu.sell")
    )
    forged = tg.callback_update(ALICE, data, bobs_menu)
    assert (await bot.post(forged))[0] == 200
    after = tg.calls[mark:]
    assert [c.method for c in after] == ["answercallbackquery"]  # answered, nothing else
    # Bob's own press on the same message still works, in Bob's chat.
    mark = len(tg.calls)
    assert (await bot.post(tg.callback_update(BOB, data, bobs_menu)))[0] == 200
    assert tg.texts(BOB.id, since=mark)
    assert not tg.texts(ALICE.id, since=mark)
