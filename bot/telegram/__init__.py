"""The Telegram channel: ``cardbot run telegram [--webhook URL]``.

:func:`build_runner` wires aiogram's Bot (pointed at ``TELEGRAM_API_BASE``) to the
conversation through :class:`~bot.telegram.adapter.TelegramAdapter`, one
:class:`~bot.telegram.limiter.FlowControl` for every send, and returns a runner that either
long-polls (default) or serves the webhook route on the shared HTTP server.

**Taken in, then handled.** Whichever way updates arrive, :class:`~bot.telegram.intake.
TelegramIntake` keeps them in the durable inbound queue first and only then confirms them to
Telegram (the next getUpdates ``offset``; the webhook's 200): the next poll never waits for a
batch to be handled, and the webhook's connections are never held by one person's backlog. If
they cannot be kept (the database is down), nothing is confirmed — polling asks again from the
same offset, the webhook answers 503 — so Telegram delivers them again. An
:class:`~bot.inflow.InboundWorker` handles the queue: each chat in order, up to
``CONCURRENT_CHATS`` chats at once, so one chat never blocks another.

**At most once.** The conversation records each message's key in the inbox in the same
transaction as its effect (keys: :mod:`bot.telegram.inbound`), so an update queued or handled
twice has its effect once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
from collections.abc import Awaitable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramConflictError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import DeleteWebhook, SetMyCommands, SetWebhook
from aiogram.methods.base import TelegramMethod
from aiogram.types import BotCommand, Update
from aiogram.utils.token import TokenValidationError
from aiohttp import web

from bot.inflow import InboundWorker
from bot.runtime import ChannelConfigError
from bot.telegram.adapter import CONCURRENT_CHATS, TelegramAdapter
from bot.telegram.inbound import out_of_bounds
from bot.telegram.intake import TelegramIntake
from bot.telegram.limiter import CallKind, FlowControl
from bot.telegram.outbound import CHANNEL, TelegramCourier, TelegramSender
from bot.telegram.roles import Roles
from core.inflow import InboundAllowance
from handlers.i18n import DEFAULT_LANGUAGE, LANGUAGES, Translator
from storage.inflow import SqlAlchemyInboundQueue

if TYPE_CHECKING:
    from bot.app import App
    from bot.runtime import RunOptions

log = logging.getLogger(__name__)

T = TypeVar("T")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message", "edited_message", "callback_query", "my_chat_member"]
COMMANDS = ("start", "sell", "prices", "orders", "help", "human", "cancel")
POLL_TIMEOUT_SECONDS = 25
_SECRET_FORMAT = re.compile(r"[A-Za-z0-9_-]{1,256}")


class RawGetUpdates(TelegramMethod[list[dict[str, Any]]]):
    """getUpdates returning plain dicts: one malformed update is skipped on its own instead of
    failing the whole batch (and every batch after it) in validation."""

    __returning__ = list[dict[str, Any]]
    __api_method__ = "getUpdates"

    offset: int | None = None
    limit: int | None = None
    timeout: int | None = None
    allowed_updates: list[str] | None = None


class _Stopped(Exception):
    pass


class TelegramRunner:
    """The Telegram channel inside ``cardbot run``."""

    channel = "telegram"

    def __init__(
        self,
        bot: Bot,
        adapter: TelegramAdapter,
        sender: TelegramSender,
        intake: TelegramIntake,
        worker: InboundWorker,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        poll_timeout: int = POLL_TIMEOUT_SECONDS,
    ) -> None:
        self.bot = bot
        self.adapter = adapter
        self.sender = sender
        self.intake = intake
        self.worker = worker
        self.courier = TelegramCourier(sender)
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.poll_timeout = poll_timeout

    # -- ChannelRunner ------------------------------------------------------------------------

    def routes(self) -> Sequence[web.RouteDef]:
        if self.webhook_url is None:
            return []
        path = urlsplit(self.webhook_url).path or "/"
        return [web.post(path, self.on_webhook)]

    async def serve(self, stop: asyncio.Event) -> None:
        working = asyncio.create_task(self.worker.serve(stop), name="telegram-inbound")
        try:
            await self.set_commands()
            if self.webhook_url is not None:
                await self._set_webhook()
                await stop.wait()
            else:
                await self.poll(stop)
        finally:
            stop.set()
            await working

    async def aclose(self) -> None:
        await self.intake.aclose()
        await self.bot.session.close()

    # -- Receiving ----------------------------------------------------------------------------

    async def on_webhook(self, request: web.Request) -> web.Response:
        """Telegram's POST of one update: 401 without the secret, 400 when it is not an
        update, 200 once it is queued, 503 (Telegram retries) when it could not be kept."""
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), (self.webhook_secret or "").encode()):
            log.warning("telegram webhook: request without the right secret refused")
            return web.Response(status=401, text="unauthorized")
        try:
            body = await request.json()
            update = Update.model_validate(body, context={"bot": self.bot})
        except (ValueError, RecursionError):
            # Not JSON (RecursionError: nested deeper than the parser goes), or not an update
            # (pydantic's ValidationError is a ValueError).
            return web.Response(status=400, text="not a Telegram update")
        too_big = out_of_bounds(update)
        if too_big is not None:
            log.warning("telegram update %s refused: %s out of bounds", update.update_id, too_big)
            return web.Response(status=400, text=f"not a Telegram update ({too_big})")
        try:
            await self.intake.take([body])
        except Exception as exc:
            log.warning("telegram webhook: update not queued (%s)", type(exc).__name__)
            return web.Response(status=503, text="try again")
        return web.Response(text="ok")

    async def poll(self, stop: asyncio.Event) -> None:
        """Long-poll until ``stop``; each batch is confirmed only after it was handled."""
        await self._call_until_done(DeleteWebhook(drop_pending_updates=False), stop)
        offset: int | None = None
        failures = 0
        while not stop.is_set():
            method = RawGetUpdates(
                offset=offset, timeout=self.poll_timeout, allowed_updates=ALLOWED_UPDATES
            )
            try:
                raw = await _unless_stopped(self.bot(method), stop)
            except _Stopped:
                break
            except (
                TelegramNetworkError,
                TelegramServerError,
                TelegramConflictError,
                TelegramRetryAfter,
                ClientDecodeError,
            ) as exc:
                failures += 1
                log.warning("telegram getUpdates failed (%s), retrying", type(exc).__name__)
                with contextlib.suppress(_Stopped):
                    await _unless_stopped(asyncio.sleep(min(30.0, 0.5 * 2**failures)), stop)
                continue
            ids = [item["update_id"] for item in raw if isinstance(item.get("update_id"), int)]
            try:
                await self.intake.take(raw)
            except Exception as exc:
                # Not kept, so not confirmed: the same batch comes again from this offset.
                failures += 1
                log.warning("telegram updates not queued (%s), retrying", type(exc).__name__)
                with contextlib.suppress(_Stopped):
                    await _unless_stopped(asyncio.sleep(min(30.0, 0.5 * 2**failures)), stop)
                continue
            failures = 0
            if ids:
                offset = max(ids) + 1
        if offset is not None:
            # Confirm the last batch now, so a restart does not fetch it again.
            with contextlib.suppress(Exception):
                await self.bot(RawGetUpdates(offset=offset, timeout=0, limit=1))

    # -- Setting up ---------------------------------------------------------------------------

    async def set_commands(self) -> None:
        """Register the commands in Chinese (also the default) and English."""
        for lang in (None, *LANGUAGES):
            t = Translator(lang or DEFAULT_LANGUAGE)
            commands = [
                BotCommand(command=c, description=t(f"telegram.command.{c}")) for c in COMMANDS
            ]
            await self.sender.call(
                SetMyCommands(commands=commands, language_code=lang), None, CallKind.OTHER
            )

    async def _set_webhook(self) -> None:
        assert self.webhook_url is not None
        done = await self.sender.call(
            SetWebhook(
                url=self.webhook_url,
                secret_token=self.webhook_secret,
                allowed_updates=ALLOWED_UPDATES,
                drop_pending_updates=False,
            ),
            None,
            CallKind.OTHER,
        )
        if not done:
            raise RuntimeError("setWebhook failed; see the log")
        log.info("telegram webhook set")

    async def _call_until_done(self, method: Any, stop: asyncio.Event) -> None:
        with contextlib.suppress(_Stopped):
            await _unless_stopped(self.sender.call(method, None, CallKind.OTHER), stop)


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T:
    """Await ``work`` unless ``stop`` is set first (then ``work`` is cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise _Stopped
    return task.result()


def _refuse_to_start(message: str) -> NoReturn:
    raise ChannelConfigError(message)


async def build_runner(app: App, options: RunOptions) -> TelegramRunner:
    """The Telegram runner for ``cardbot run telegram`` (clear exit when settings are wrong)."""
    settings = app.settings
    token = (
        settings.telegram_bot_token.get_secret_value().strip()
        if settings.telegram_bot_token
        else ""
    )
    if not token:
        _refuse_to_start("TELEGRAM_BOT_TOKEN is not set (the token @BotFather gave the bot)")
    secret: str | None = None
    if options.webhook:
        parts = urlsplit(options.webhook)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            _refuse_to_start(f"--webhook must be an http(s) URL, got {options.webhook!r}")
        raw_secret = settings.telegram_webhook_secret
        secret = raw_secret.get_secret_value() if raw_secret else ""
        if not secret:
            _refuse_to_start("TELEGRAM_WEBHOOK_SECRET is required with --webhook")
        if not _SECRET_FORMAT.fullmatch(secret):
            _refuse_to_start("TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z a-z 0-9 _ -")
    api = TelegramAPIServer.from_base(settings.telegram_api_base.rstrip("/"))
    try:
        bot = Bot(token, session=AiohttpSession(api=api))
    except TokenValidationError:
        _refuse_to_start("TELEGRAM_BOT_TOKEN does not look like a bot token (123456:ABC…)")
    flow = FlowControl(
        chat_burst=settings.telegram_chat_burst,
        global_per_second=settings.telegram_messages_per_second,
    )
    sender = TelegramSender(bot, flow, app.uow_factory)
    queue = SqlAlchemyInboundQueue(app.uow_factory.engine, app.services.sale.vault)
    adapter = TelegramAdapter(
        bot,
        app.conversation,
        app.uow_factory,
        sender,
        Roles.parse(settings.staff, settings.admins),
    )
    worker = InboundWorker(
        CHANNEL,
        queue,
        adapter.handle_queued,
        app.services.sale.clock,
        concurrency=CONCURRENT_CHATS,
        lease=timedelta(seconds=settings.inbound_lease_seconds),
    )
    intake = TelegramIntake(
        bot,
        queue,
        sender,
        InboundAllowance(settings.telegram_inbound_burst, settings.telegram_inbound_per_minute),
        app.services.sale.clock,
        on_queued=worker.wake,
    )
    return TelegramRunner(
        bot,
        adapter,
        sender,
        intake,
        worker,
        webhook_url=options.webhook or None,
        webhook_secret=secret,
    )
