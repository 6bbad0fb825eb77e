"""The HTTP edge (issue 12, item 5): slow clients, too many clients, bodies that do not parse,
and ids bigger than any column.

- Slowloris: five connections dribbling a header byte now and then stayed open for the whole
  minute the attack ran; a body sent a few bytes at a time held its handler as long.
- Deeply nested JSON on the Telegram webhook escaped as RecursionError: 500 (Telegram retries
  a 5xx, so it came back again and again).
- A WeChat MsgId of 300 digits or a CreateTime of 40 made PostgreSQL raise (value too long for
  the inbox's id column): 500, where SQLite stored it silently.

The server tests use :class:`bot.http.HttpServer` with small injected deadlines and wait for
the server to act (close, answer) — they never wait to prove that nothing happens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from sqlalchemy import func, select

from bot.http import HttpLimits, HttpServer
from bot.runtime import http_limits
from bot.settings import Settings
from storage.tables import ProcessedInboundRow
from tests.security.conftest import StartBot, StartTelegram, TelegramBot, WeChatBot
from tests.telegram_api import User
from tests.wechat_peer import event_xml, text_xml

pytestmark = pytest.mark.slow

LIVENESS = 20.0  # how long to wait for the server to do what it must (a bound, not a timing)


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


@contextlib.asynccontextmanager
async def serving(limits: HttpLimits) -> AsyncIterator[int]:
    server = HttpServer([web.post("/echo", echo)], limits)
    port = await server.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await server.close()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), LIVENESS)


async def test_the_settings_reach_the_server() -> None:
    settings = Settings(
        http_header_timeout_seconds=3, http_body_timeout_seconds=4, http_max_connections=5
    )
    assert http_limits(settings) == HttpLimits(header_seconds=3, body_seconds=4, max_connections=5)
    assert HttpServer([], http_limits(Settings())).limits.header_seconds == 10


async def test_five_slowloris_connections_are_closed_at_the_header_deadline() -> None:
    async with serving(HttpLimits(header_seconds=0.5, body_seconds=30)) as port:
        connections = [await connect(port) for _ in range(5)]

        async def dribble(writer: asyncio.StreamWriter) -> None:
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\n")
            with contextlib.suppress(ConnectionError):
                for n in range(10_000):
                    writer.write(f"X-{n}: y\r\n".encode())
                    await writer.drain()
                    await asyncio.sleep(0.05)  # a header line now and then, never the end

        dribblers = [asyncio.create_task(dribble(w)) for _, w in connections]
        try:
            for reader, _ in connections:
                assert await closed_by_server(reader) == b""  # closed, never answered
        finally:
            for task in dribblers:
                task.cancel()
            for _, writer in connections:
                writer.close()
        # The server still answers anyone else.
        reader, writer = await connect(port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closed() -> None:
    async with serving(HttpLimits(header_seconds=30, body_seconds=0.5)) as port:
        reader, writer = await connect(port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        answer = await closed_by_server(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408")


async def test_connections_over_the_cap_get_503_until_one_closes() -> None:
    async with serving(HttpLimits(header_seconds=30, max_connections=3)) as port:
        held = [await connect(port) for _ in range(3)]
        for _, writer in held:  # each has begun a request: the server holds a handler for it
            writer.write(b"POST /echo HTTP/1.1\r\n")
            await writer.drain()
        reader, writer = await connect(port)
        assert (await closed_by_server(reader)).startswith(b"HTTP/1.1 503")
        writer.close()
        held.pop()[1].close()

        async def served() -> bytes:
            while True:
                reader, writer = await connect(port)
                writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
                status = await reader.readuntil(b"\r\n")
                writer.close()
                if not status.startswith(b"HTTP/1.1 503"):
                    return status
                await asyncio.sleep(0.05)  # the server has not seen the close yet

        assert (await asyncio.wait_for(served(), LIVENESS)).startswith(b"HTTP/1.1 200")
        for _, writer in held:
            writer.close()


# --------------------------------------------------------------------------------------------
# Bodies that do not parse


async def inbox_rows(bot: WeChatBot | TelegramBot) -> int:
    assert bot.app is not None
    async with bot.app.uow_factory.engine.connect() as connection:
        count = await connection.scalar(select(func.count()).select_from(ProcessedInboundRow))
    return int(count or 0)


@pytest.mark.parametrize(
    "body",
    [
        b'{"update_id": 1, "message": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"[" * 5_000 + b"]" * 5_000,
        b'{"a":' * 900 + b"1" + b"}" * 900,
        b"\xff\xfe not utf-8",
        b'{"update_id": 1' + b"1" * 5000 + b"}",
        b"[]",
        b"",
    ],
    ids=["nested-100k", "nested-5k", "nested-900", "not-utf8", "long-int", "list", "empty"],
)
async def test_a_telegram_webhook_body_that_is_not_an_update_gets_400(
    telegram_bot: StartTelegram, body: bytes
) -> None:
    bot = await telegram_bot()
    status, text = await bot.post(body)
    assert (status, text) == (400, "not a Telegram update")
    assert await inbox_rows(bot) == 0


async def test_telegram_ids_beyond_53_bits_get_400_and_the_largest_ones_are_stored(
    telegram_bot: StartTelegram,
) -> None:
    bot = await telegram_bot()
    huge = bot.tg.text_update(User(5550003), "/start")
    huge["message"]["chat"]["id"] = huge["message"]["from"]["id"] = 10**40
    long_query = bot.tg.text_update(User(5550004), "/start")
    press = bot.tg.callback_update(User(5550004), "menu.sell", long_query["message"])
    press["callback_query"]["id"] = "9" * 300
    long_data = bot.tg.callback_update(User(5550004), "x" * 65, long_query["message"])
    for update in (huge, press, long_data):
        assert (await bot.post(update))[0] == 400, update
    assert await inbox_rows(bot) == 0
    largest = User(2**53 - 1)
    assert (await bot.post(bot.tg.text_update(largest, "/start")))[0] == 200
    assert bot.tg.texts(largest.id)
    assert await inbox_rows(bot) == 1


async def test_deeply_nested_wechat_xml_is_read_without_recursion_never_a_500(
    wechat_bot: StartBot,
) -> None:
    bot = await wechat_bot()
    nested = "<a>" * 4000 + "</a>" * 4000  # 28 KB: within the 64 KB a push may take
    openid = "o_nested_openid_0000000000001"
    inside = text_xml(openid, "价格").replace("</xml>", f"<Extra>{nested}</Extra></xml>")
    answered = await bot.pusher("safe").push(inside)  # a push with an odd extra field
    assert answered.status == 200 and answered.text is not None
    alone = await bot.pusher("safe").push(f"<xml>{nested}</xml>")  # nothing but nesting
    assert alone.status == 400
    assert await inbox_rows(bot) == 1


# --------------------------------------------------------------------------------------------
# Ids bigger than any column: refused at the edge, on every database


async def test_wechat_ids_too_long_for_storage_get_400_and_the_longest_real_ones_are_stored(
    wechat_bot: StartBot,
) -> None:
    bot = await wechat_bot()
    wechat = bot.pusher("safe")
    openid = "o" + "x" * 27
    oversized = [
        text_xml(openid, "价格", msg_id="9" * 300),
        text_xml(openid, "价格", msg_id=str(2**64)),  # MsgId is a 64-bit integer
        event_xml(openid, "subscribe", create_time=int("9" * 40)),
        text_xml("o" * 200, "价格"),
    ]
    for xml in oversized:
        answer = await wechat.push(xml)
        assert answer.status == 400, (answer, xml[:200])
    assert await inbox_rows(bot) == 0
    longest = "o" * 64
    accepted = [
        text_xml(longest, "价格", msg_id=str(2**64 - 1)),
        event_xml(longest, "subscribe", create_time=9_999_999_999),
    ]
    for xml in accepted:
        answer = await wechat.push(xml)
        assert answer.status == 200 and answer.text is not None, answer
    assert await inbox_rows(bot) == 2
