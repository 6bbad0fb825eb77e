"""``cardbot run``: the long-running bot process.

One process serves one or more channels over one application (storage, ports, conversation):

- each channel is a :class:`ChannelRunner` built by its package (``bot.telegram``,
  ``bot.wechat``) from the app and the command-line options;
- runners that receive pushes over HTTP (WeChat, the Telegram webhook) contribute routes to one
  aiohttp server on ``--host``/``--port``; runners that pull (Telegram long polling) do it in
  :meth:`ChannelRunner.serve`;
- a background task finishes what is unfinished (late payout outcomes, settlements nobody is
  making — a crash left them half-way) and review decisions; what each person is told is written
  to the outbox with its cause;
- one :class:`~bot.outbox.OutboxWorker` per channel served delivers that channel's outbox
  messages, whichever process wrote them (a payout finished by the WeChat process reaches a
  Telegram user through the Telegram process);
- SIGINT/SIGTERM stop everything gracefully: servers stop accepting, runners drain, storage
  closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bot.outbox import Courier, OutboxWorker
from handlers.desk import run_desk
from handlers.engine import Services
from handlers.notify import finish_unfinished

if TYPE_CHECKING:
    from aiohttp import web

    from bot.app import App
    from bot.http import HttpLimits, HttpServer
    from bot.settings import Settings

log = logging.getLogger(__name__)

CHANNELS = ("telegram", "wechat")
UNFINISHED_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class RunOptions:
    """What ``cardbot run`` was told on its command line."""

    host: str = "127.0.0.1"
    port: int = 8080
    webhook: str | None = None  # Telegram: receive updates at this public URL instead of polling


class ChannelRunner(Protocol):
    """A channel inside a running bot process."""

    channel: str
    courier: Courier  # sends this channel's outbox messages

    def routes(self) -> Sequence[web.RouteDef]:
        """HTTP routes this channel serves (pushes, webhooks); empty when it pulls."""
        ...

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (poll for updates, work queues), then return cleanly."""
        ...

    async def aclose(self) -> None:
        """Release what the runner holds (HTTP sessions)."""
        ...


RunnerFactory = Callable[["App", RunOptions], Awaitable[ChannelRunner]]


class ChannelConfigError(RuntimeError):
    """A channel cannot start with these settings; the message names what is missing or wrong.
    ``cardbot run`` prints it and exits with status 2."""


async def poll_unfinished(services: Services, every: float = UNFINISHED_POLL_SECONDS) -> None:
    """Finish unfinished settlements now and then; never dies of one failure."""
    while True:
        try:
            await finish_unfinished(services)
        except Exception:
            log.exception("resuming unfinished payouts failed")
        await asyncio.sleep(every)


def http_limits(settings: Settings) -> HttpLimits:
    """The HTTP server's deadlines and connection cap from the settings."""
    from bot.http import HttpLimits

    return HttpLimits(
        header_seconds=settings.http_header_timeout_seconds,
        body_seconds=settings.http_body_timeout_seconds,
        max_connections=settings.http_max_connections,
    )


def runner_factory(channel: str) -> RunnerFactory:
    """The factory of a channel's runner: ``bot.<channel>.build_runner``."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    module = importlib.import_module(f"bot.{channel}")
    factory: RunnerFactory = module.build_runner
    return factory


async def run(settings: Settings, channels: Sequence[str], options: RunOptions) -> int:
    """Serve ``channels`` until SIGINT/SIGTERM; returns the process exit code."""
    from bot.app import build_app
    from bot.http import HttpServer
    from bot.logs import configure_logging

    configure_logging(settings.log_level, settings.var_dir / "cardbot.log")
    for channel in channels:
        # Fail fast on missing settings, before migrating or loading anything.
        check = getattr(importlib.import_module(f"bot.{channel}"), "check_settings", None)
        try:
            if check is not None:
                check(settings)
        except ChannelConfigError as exc:
            log.error("cannot start %s: %s", channel, exc)
            print(f"cardbot: cannot start {channel}: {exc}", file=sys.stderr)
            return 2
    app = await build_app(settings)
    runners: list[ChannelRunner] = []
    server: HttpServer | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        for channel in channels:
            try:
                runners.append(await runner_factory(channel)(app, options))
            except ChannelConfigError as exc:
                log.error("cannot start %s: %s", channel, exc)
                print(f"cardbot: cannot start {channel}: {exc}", file=sys.stderr)
                return 2
        routes = [route for runner in runners for route in runner.routes()]
        if routes:
            server = HttpServer(routes, http_limits(settings))
            await server.start(options.host, options.port)
            log.info("serving HTTP on %s:%s", options.host, options.port)
        tasks = [asyncio.create_task(r.serve(stop), name=f"serve-{r.channel}") for r in runners]
        clock = app.services.sale.clock
        workers = [
            OutboxWorker(app.uow_factory, r.courier, clock, wake=app.services.outbox_queued)
            for r in runners
        ]
        delivering = [
            asyncio.create_task(w.run(stop), name=f"outbox-{w.channel}") for w in workers
        ]
        poller = asyncio.create_task(
            poll_unfinished(app.services, settings.unfinished_poll_seconds), name="unfinished"
        )
        # --- broadcasts (bot/broadcast.py): the outbox worker, stopped with everything else ---
        from bot.broadcast import run_broadcasts

        broadcaster = asyncio.create_task(run_broadcasts(app, runners, stop), name="broadcasts")
        desk = asyncio.create_task(run_desk(app.services, stop), name="desk")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        log.info("cardbot running: %s", ", ".join(channels))
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not stopper and t.exception() is not None]
        for task in failed:
            log.error("%s stopped: %r", task.get_name(), task.exception())
        stop.set()
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        for result in await asyncio.gather(broadcaster, return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("the broadcast worker stopped: %r", result)
        await desk
        await asyncio.gather(*tasks, return_exceptions=True)
        # What the channels queued while draining still goes out before the process ends.
        await asyncio.gather(*delivering, return_exceptions=True)
        for worker in workers:
            with contextlib.suppress(Exception):
                await worker.deliver_due()
        return 1 if failed else 0
    finally:
        if server is not None:
            await server.close()
        for runner in runners:
            try:
                await runner.aclose()
            except Exception:
                log.exception("closing the %s runner failed", runner.channel)
        await app.close()
        log.info("cardbot stopped")
