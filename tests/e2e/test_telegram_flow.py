"""Outbound flow control, end to end: ``cardbot run telegram`` with its real limits (a burst of
3 then 1 message/s per chat, 30 messages/s overall) against the fake Bot API, which measures
with its own clock. Also 429 ``retry_after``, 403 for one user, ``my_chat_member`` and 5xx."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from handlers.i18n import Translator
from tests.e2e.telegram_harness import BotProcess, Player, wait_until_ready, watch_queue
from tests.telegram_api import FakeTelegram, User

ZH = Translator("zh")
CHAT_BURST, PER_SECOND = 3, 30


@pytest.fixture
async def bot(tmp_path: Path, database_url: str, tg: FakeTelegram) -> AsyncIterator[BotProcess]:
    process = BotProcess(tmp_path, database_url, tg.base_url)  # the default, real limits
    watch_queue(tg, database_url)
    await process.start()
    await wait_until_ready(tg, polling=True)
    try:
        yield process
    finally:
        await process.close()


def over_the_chat_limit(times: list[float]) -> list[tuple[int, int]]:
    """Pairs (i, j) where more messages reached one chat in [t_i, t_j] than its burst plus one a
    second allows."""
    return [
        (i, j)
        for i in range(len(times))
        for j in range(i + 1, len(times))
        if j - i + 1 > CHAT_BURST + (times[j] - times[i]) * 1.0
    ]


def over_the_global_limit(times: list[float]) -> list[int]:
    """Indexes i where message i and the 30th after it fall within one second."""
    times = sorted(times)
    return [i for i in range(len(times) - PER_SECOND) if times[i + PER_SECOND] - times[i] < 1.0]


async def test_a_burst_of_200_messages_to_20_chats_stays_within_telegrams_limits(
    bot: BotProcess, tg: FakeTelegram
) -> None:
    users = [User(2000 + n) for n in range(20)]
    updates = [tg.text_update(u, "/start") for _ in range(10) for u in users]
    mark = len(tg.calls)
    tg.push(*updates)
    await tg.wait_for(lambda c: len(tg.sends()) >= 200, since=mark, within=60)

    sends = [c for c in tg.calls[mark:] if c.method == "sendmessage"]
    assert len(sends) == 200 and all(c.ok for c in sends)
    by_chat: defaultdict[int | None, list[float]] = defaultdict(list)
    for call in sends:
        by_chat[call.chat].append(call.at)
    assert {len(t) for t in by_chat.values()} == {10}
    for chat, times in by_chat.items():
        assert over_the_chat_limit(times) == [], chat
    assert over_the_global_limit([c.at for c in sends]) == []
    # Each user got ten menus, in order.
    assert all(ZH("menu.prompt") in t for u in users for t in tg.texts(u.id, mark))
    assert await bot.stop() == 0


async def test_a_429_pauses_every_send_for_retry_after_and_nothing_is_lost(
    bot: BotProcess, tg: FakeTelegram
) -> None:
    users = [User(3000 + n) for n in range(10)]
    mark = len(tg.calls)
    tg.flood(2)
    tg.push(*[tg.text_update(u, "/start") for u in users])
    await tg.wait_for(
        lambda c: len([s for s in tg.sends() if s.chat in {u.id for u in users}]) >= 10,
        since=mark,
        within=30,
    )

    window = tg.flood_window
    assert window is not None
    began, ended = window
    sends = [c for c in tg.calls[mark:] if c.method == "sendmessage"]
    refused = [c for c in sends if c.status == 429]
    # Only the sends already on their way when the first 429 came back were refused: the bot
    # did not keep knocking (at 30/s it would have tried ~60 times in the window)…
    assert 1 <= len(refused) <= len(users)
    # …nothing got through while paused, and every message arrived afterwards.
    assert [c for c in sends if c.ok and began <= c.at < ended] == []
    delivered = {c.chat for c in sends if c.ok}
    assert delivered == {u.id for u in users}
    assert await bot.stop() == 0


async def test_a_user_who_blocked_the_bot_is_marked_unreachable_and_back_when_unblocked(
    bot: BotProcess, tg: FakeTelegram
) -> None:
    p = Player(tg)
    bob, carol = User(4001), User(4002)
    await p.say(tg.text_update(bob, "/start"))
    assert await bot.reachable(bob) is True

    tg.blocked.add(bob.id)
    mark = len(tg.calls)
    await p.say(tg.text_update(bob, "/help"))  # the answer gets 403
    assert [c.status for c in tg.calls[mark:] if c.method == "sendmessage"] == [403]
    assert await bot.reachable(bob) is False
    # Others are unaffected.
    assert ZH("menu.prompt") in (await p.say(tg.text_update(carol, "/start")))[-1]

    def member(user: User, status: str) -> dict[str, object]:
        return {
            "update_id": tg.next_update_id(),
            "my_chat_member": {
                "chat": {"id": user.id, "type": "private", "first_name": user.first_name},
                "from": user.as_dict(),
                "date": 1,
                "old_chat_member": {
                    "status": "member",
                    "user": {"id": 1, "is_bot": True, "first_name": "CardBot"},
                },
                "new_chat_member": {
                    "status": status,
                    "user": {"id": 1, "is_bot": True, "first_name": "CardBot"},
                }
                | ({"until_date": 0} if status == "kicked" else {}),
            },
        }

    tg.blocked.discard(bob.id)
    await p.deliver(member(bob, "member"))
    assert await bot.reachable(bob) is True
    await p.deliver(member(carol, "kicked"))
    assert await bot.reachable(carol) is False
    assert await bot.stop() == 0


async def test_server_errors_are_retried_with_backoff_until_the_message_is_sent(
    bot: BotProcess, tg: FakeTelegram
) -> None:
    p = Player(tg)
    dave = User(5001)
    tg.fail_next["sendmessage"] = [500, 502]
    mark = len(tg.calls)
    said = await p.say(tg.text_update(dave, "/start"))
    assert len(said) == 1 and ZH("menu.prompt") in said[0]
    statuses = [c.status for c in tg.calls[mark:] if c.method == "sendmessage"]
    assert statuses == [500, 502, 200]
    assert await bot.stop() == 0
