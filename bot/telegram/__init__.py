"""The Telegram channel: ``cardbot run telegram [--webhook URL]``.

:func:`build_runner` wires aiogram's Bot (pointed at ``TELEGRAM_API_BASE``) to the
conversation through :class:`~bot.telegram.adapter.TelegramAdapter`, one
:class:`~bot.telegram.limiter.FlowControl` for every send, and returns a runner that either
long-polls (default) or serves the webhook route on the shared HTTP server.

**At most once.** The conversation records each message's key in the inbox in the same
transaction as its effect (keys: :mod:`bot.telegram.inbound`). Polling confirms a batch to
getUpdates (the next call's ``offset``) only after every update in it has been handled, so a
crash anywhere before that redelivers the batch and the redelivery does nothing. The webhook
answers 2xx only after handling; an error answers 500 so Telegram retries, equally harmlessly.
When the storage fails (nothing was kept), the webhook answers 503 and polling leaves the batch
unconfirmed and fetches it again after a pause, so the message is handled once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
from collections.abc import Awaitable, Sequence
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
from pydantic import ValidationError

from bot.runtime import ChannelConfigError
from bot.telegram.adapter import RedeliverLater, TelegramAdapter
from bot.telegram.inbound import out_of_bounds
from bot.telegram.limiter import CallKind, FlowControl
from bot.telegram.outbound import TelegramCourier, TelegramSender
from bot.telegram.roles import Roles
from handlers.i18n import DEFAULT_LANGUAGE, LANGUAGES, Translator

if TYPE_CHECKING:
    from bot.app import App
    from bot.runtime import RunOptions

log = logging.getLogger(__name__)

T = TypeVar("T")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message", "edited_message", "callback_query", "my_chat_member"]
COMMANDS = ("start", "sell", "prices", "orders", "help", "human", "cancel")
POLL_TIMEOUT_SECONDS = 25
REDELIVER_PAUSE_SECONDS = 1.0
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
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        poll_timeout: int = POLL_TIMEOUT_SECONDS,
    ) -> None:
        self.bot = bot
        self.adapter = adapter
        self.sender = sender
        self.courier = TelegramCourier(sender)
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.poll_timeout = poll_timeout
        self.redeliver_pause = REDELIVER_PAUSE_SECONDS
        self.redeliveries = 0  # batches left unconfirmed for storage trouble

    # -- ChannelRunner ------------------------------------------------------------------------

    def routes(self) -> Sequence[web.RouteDef]:
        if self.webhook_url is None:
            return []
        path = urlsplit(self.webhook_url).path or "/"
        return [web.post(path, self.on_webhook)]

    async def serve(self, stop: asyncio.Event) -> None:
        await self.set_commands()
        if self.webhook_url is not None:
            await self._set_webhook()
            await stop.wait()
            return
        await self.poll(stop)

    async def aclose(self) -> None:
        await self.bot.session.close()

    # -- Receiving ----------------------------------------------------------------------------

    async def on_webhook(self, request: web.Request) -> web.Response:
        """Telegram's POST of one update: 401 without the secret, 400 when it is not an
        update, 200 once handled, 500 (Telegram retries) when handling failed."""
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), (self.webhook_secret or "").encode()):
            log.warning("telegram webhook: request without the right secret refused")
            return web.Response(status=401, text="unauthorized")
        try:
            update = Update.model_validate(await request.json(), context={"bot": self.bot})
        except (ValueError, RecursionError):
            # Not JSON (RecursionError: nested deeper than the parser goes), or not an update
            # (pydantic's ValidationError is a ValueError).
            return web.Response(status=400, text="not a Telegram update")
        too_big = out_of_bounds(update)
        if too_big is not None:
            log.warning("telegram update %s refused: %s out of bounds", update.update_id, too_big)
            return web.Response(status=400, text=f"not a Telegram update ({too_big})")
        try:
            await self.adapter.handle_update(update)
        except RedeliverLater:
            log.warning("telegram update %s: storage unavailable; 503", update.update_id)
            return web.Response(status=503, text="try again")
        except Exception:
            log.exception("telegram update %s failed", update.update_id)
            return web.Response(status=500, text="failed")
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
            failures = 0
            ids = [item["update_id"] for item in raw if isinstance(item.get("update_id"), int)]
            try:
                await self.handle_raw(raw)
            except RedeliverLater as exc:
                # Storage trouble: nothing of those updates was kept. Leave the batch
                # unconfirmed and fetch it again after a pause (what was handled is deduped).
                self.redeliveries += 1
                log.warning("telegram batch left unconfirmed: %s", exc)
                with contextlib.suppress(_Stopped):
                    await _unless_stopped(asyncio.sleep(self.redeliver_pause), stop)
                continue
            if ids:
                offset = max(ids) + 1
        if offset is not None:
            # Confirm the last batch now, so a restart does not fetch it again.
            with contextlib.suppress(Exception):
                await self.bot(RawGetUpdates(offset=offset, timeout=0, limit=1))

    async def handle_raw(self, raw: Sequence[dict[str, Any]]) -> None:
        """Handle a getUpdates batch; a failure is logged with the update id and skipped."""
        updates: list[Update] = []
        for item in raw:
            try:
                update = Update.model_validate(item, context={"bot": self.bot})
            except (ValidationError, RecursionError):
                log.warning("telegram update %s is malformed; skipped", item.get("update_id"))
                continue
            too_big = out_of_bounds(update)
            if too_big is not None:
                log.warning(
                    "telegram update %s: %s out of bounds; skipped", update.update_id, too_big
                )
                continue
            updates.append(update)
        await self.adapter.handle_batch(updates)

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
    adapter = TelegramAdapter(
        bot,
        app.conversation,
        app.uow_factory,
        sender,
        Roles.parse(settings.staff, settings.admins),
    )
    return TelegramRunner(
        bot, adapter, sender, webhook_url=options.webhook or None, webhook_secret=secret
    )
