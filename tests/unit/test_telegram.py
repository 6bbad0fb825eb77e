"""The Telegram adapter's pure parts: flow control on a fake clock, update translation rules,
reply rendering, roles."""

from __future__ import annotations

import asyncio

import pytest
from aiogram.types import Document, PhotoSize

from bot.telegram.inbound import (
    MAX_CALLBACK_BYTES,
    callback_key,
    decode_option,
    encode_option,
    is_image_document,
    message_key,
    parse_command,
    pick_photo,
)
from bot.telegram.limiter import CallKind, FlowControl
from bot.telegram.outbound import keyboard, merge_replies, split_text
from bot.telegram.roles import Role, Roles
from core.messages import Option, Reply


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.log: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def flow(time: FakeTime, **kw: object) -> FlowControl:
    return FlowControl(clock=time.clock, sleep=time.sleep, margin=0.0, **kw)  # type: ignore[arg-type]


async def test_a_chat_gets_its_burst_at_once_then_one_message_a_second() -> None:
    time = FakeTime()
    limiter = flow(time, chat_burst=3)
    for _ in range(6):
        async with limiter.slot("chat", CallKind.MESSAGE):
            time.log.append(time.now)
    assert [round(t - 100.0, 6) for t in time.log] == [0, 0, 0, 1, 2, 3]


async def test_other_chats_are_not_held_up_by_a_busy_one() -> None:
    time = FakeTime()
    limiter = flow(time, chat_burst=1)
    async with limiter.slot("a", CallKind.MESSAGE), limiter.slot("b", CallKind.MESSAGE):
        pass
    assert time.now == 100.0


async def test_no_more_than_the_global_limit_in_any_second() -> None:
    time = FakeTime()
    limiter = flow(time, chat_burst=100, global_per_second=30)
    for n in range(90):
        async with limiter.slot(f"chat{n}", CallKind.MESSAGE):
            time.log.append(time.now)
    for i in range(len(time.log) - 30):
        assert time.log[i + 30] - time.log[i] >= 1.0


async def test_a_429_pauses_every_kind_of_call_including_answers() -> None:
    time = FakeTime()
    limiter = flow(time)
    limiter.pause(5)
    async with limiter.slot(None, CallKind.OTHER):
        assert time.now == 105.0
    limiter.pause(2)
    async with limiter.slot("x", CallKind.CHAT_ACTION):
        assert time.now == 107.0


async def test_deletes_and_edits_do_not_use_the_chats_message_tokens() -> None:
    time = FakeTime()
    limiter = flow(time, chat_burst=1)
    for _ in range(5):
        async with limiter.slot("c", CallKind.CHAT_ACTION):
            pass
    async with limiter.slot("c", CallKind.MESSAGE):
        assert time.now == 100.0


async def test_a_send_is_dated_by_when_its_answer_came_back() -> None:
    """A request that took long to reach Telegram must not let the next one in early."""
    time = FakeTime()
    limiter = flow(time, chat_burst=1, global_per_second=1)
    async with limiter.slot("c", CallKind.MESSAGE):
        time.now += 0.4  # in flight for 0.4 s
    async with limiter.slot("c", CallKind.MESSAGE):
        assert time.now >= 101.4 - 1e-9


async def test_calls_in_flight_count_against_the_global_limit() -> None:
    time = FakeTime()
    limiter = flow(time, chat_burst=5, global_per_second=2)
    await limiter.acquire("a", CallKind.MESSAGE)
    await limiter.acquire("b", CallKind.MESSAGE)
    waiting = asyncio.ensure_future(limiter.acquire("c", CallKind.MESSAGE))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()  # both slots are in flight, however long that takes
    limiter.release("a", CallKind.MESSAGE, 100.0)
    await asyncio.wait_for(waiting, 1)


def test_the_dedupe_key_is_the_message_in_its_chat_or_the_press_never_the_update_id() -> None:
    assert message_key(42, 7) == "m:42:7"
    assert message_key(43, 7) != message_key(42, 7)
    assert callback_key("88123") == "cb:88123"


@pytest.mark.parametrize(
    ("option_id", "hashed"),
    [
        ("menu.sell", False),
        ("pay.confirm:12:3", False),
        ("x" * 64, False),
        ("长" * 30, True),
        ("#menu", True),
    ],
)
def test_callback_data_fits_64_bytes_and_maps_back(option_id: str, hashed: bool) -> None:
    data = encode_option(option_id)
    assert len(data.encode()) <= MAX_CALLBACK_BYTES
    assert data.startswith("#") is hashed
    assert decode_option(data, ["menu.help", option_id]) == option_id


def test_a_hash_from_an_old_keyboard_maps_to_nothing_and_is_refused_downstream() -> None:
    old = encode_option("长" * 30)
    assert decode_option(old, ["menu.sell"]) == old


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/start", ("start", "")),
        ("/Sell@CardBot now", ("sell", "now")),
        ("/", None),
        ("/@bot", None),
        ("hello", None),
    ],
)
def test_commands_are_parsed_with_or_without_the_bots_name(
    text: str, expected: tuple[str, str] | None
) -> None:
    assert parse_command(text) == expected


def size(file_id: str, side: int, file_size: int | None) -> PhotoSize:
    return PhotoSize(
        file_id=file_id, file_unique_id=file_id, width=side, height=side, file_size=file_size
    )


def test_the_largest_photo_within_20_mb_is_chosen() -> None:
    sizes = [size("s", 90, 1_000), size("m", 800, 90_000), size("l", 2560, 30 * 2**20)]
    chosen = pick_photo(sizes)
    assert chosen is not None and chosen.file_id == "m"
    assert pick_photo([size("l", 2560, 30 * 2**20)]) is None
    unknown = pick_photo([size("s", 90, 1_000), size("x", 1280, None)])
    assert unknown is not None and unknown.file_id == "x"


@pytest.mark.parametrize(
    ("mime", "name", "is_image"),
    [
        ("image/jpeg", "a.bin", True),
        (None, "card.PNG", True),
        ("application/pdf", "card.pdf", False),
        (None, None, False),
    ],
)
def test_an_image_sent_as_a_file_counts_as_a_photo(
    mime: str | None, name: str | None, is_image: bool
) -> None:
    doc = Document(file_id="d", file_unique_id="d", mime_type=mime, file_name=name)
    assert is_image_document(doc) is is_image


def test_long_texts_are_split_under_4096_characters_at_line_breaks() -> None:
    lines = [f"第{n}行 " + "字" * 50 for n in range(300)]
    text = "\n".join(lines)
    pieces = split_text(text)
    assert len(pieces) > 1 and all(len(p) <= 4096 for p in pieces)
    assert "\n".join(pieces) == text
    unbroken = "x" * 9000
    assert "".join(split_text(unbroken)) == unbroken


def test_replies_to_one_message_become_one_message_under_the_last_keyboard() -> None:
    first = Reply("卡密已收到", (Option("old", "Old"),))
    second = Reply("报价", (Option("quote.accept:1", "接受"), Option("quote.decline:1", "不")))
    [merged] = merge_replies([first, second])
    assert merged.text == "卡密已收到\n\n报价"
    assert merged.options == second.options
    markup = keyboard(merged)
    assert markup is not None
    assert [row[0].callback_data for row in markup.inline_keyboard] == [
        "quote.accept:1",
        "quote.decline:1",
    ]
    with_image = merge_replies([Reply("看图", image=b"jpg"), Reply("然后")])
    assert [r.image for r in with_image] == [b"jpg", None]
    assert with_image[1].text == "看图\n\n然后"


def test_staff_and_admins_are_recognised_from_settings_for_telegram_only() -> None:
    roles = Roles.parse("telegram:11, wechat:oAbc,telegram:12", "telegram:12")
    assert roles.role_of("11") is Role.STAFF
    assert roles.role_of("12") is Role.ADMIN
    assert roles.role_of("oAbc") is Role.CUSTOMER
    assert roles.role_of("99") is Role.CUSTOMER
