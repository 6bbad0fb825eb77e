"""``cardbot chat``: the console channel on this terminal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from bot.app import build_app
from bot.console import ConsoleChannel, ConsoleCourier
from bot.logs import configure_logging
from bot.outbox import OutboxWorker
from bot.runtime import poll_unfinished
from bot.settings import Settings
from handlers.desk import run_desk

log = logging.getLogger(__name__)


async def run_chat(settings: Settings, user_id: str, lang: str) -> int:
    """Read lines from stdin until EOF; print the bot's replies."""
    configure_logging(settings.log_level, settings.var_dir / "cardbot.log")
    app = await build_app(settings, database_must_exist=True)
    worker = OutboxWorker(
        app.uow_factory,
        ConsoleCourier(user_id=user_id),
        app.services.sale.clock,
        wake=app.services.outbox_queued,
    )
    channel = ConsoleChannel(app.conversation, user_id=user_id, lang=lang)
    hello = (
        "（控制台：每行是一条消息；/photo 路径 发送照片；/file 路径 发送文件；回复数字选择选项；"
        "Ctrl-D 退出）"
        if lang == "zh"
        else "(console: each line is a message; /photo PATH sends a photo; /file PATH a file; "
        "answer options with their number; Ctrl-D quits)"
    )
    print(hello, flush=True)
    poller = asyncio.create_task(poll_unfinished(app.services))
    stop = asyncio.Event()
    # Outcomes, staff replies and ticket news for this console user (staff work from
    # Telegram/WeChat), from the outbox.
    delivering = asyncio.create_task(worker.run(stop))
    desk = asyncio.create_task(run_desk(app.services, stop))
    try:
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            line = line.rstrip("\n")
            if not line.strip():
                continue
            await channel.send(line)
            sys.stdout.flush()
    finally:
        poller.cancel()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await desk
        await delivering
        await app.close()
    return 0
