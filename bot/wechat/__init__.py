"""The WeChat official account (公众号) channel: ``cardbot run wechat`` serves WeChat's pushes
at ``/wechat`` and answers through the channel-neutral conversation (``handlers/``).

Modules: ``protocol`` (signatures, AES, push XML → :class:`~bot.wechat.protocol.Push`,
replies → numbered-menu texts split under WeChat's size limit), ``api`` (stable access token,
customer-service and template messages, media download — aiohttp, every URL under
``WECHAT_API_BASE``), ``delivery`` (the durable outbox and the customer-service quota),
``replay`` (the (timestamp, nonce) memory, database or Redis), ``service`` (the ``/wechat``
handlers).

Exactly one answer per message — the design
-------------------------------------------

WeChat waits 5 s for the HTTP answer to a push; without one it drops the connection and
pushes the same message again (up to three tries, ~5 s apart). A passive reply can carry one
message. So:

1. **Effects at most once.** A push's dedupe id (MsgId; for events FromUserName+CreateTime) is
   the ``Inbound.message_id`` the conversation engine claims in the inbox in the same
   transaction as the effect. A delivery whose claim finds the id already there gets ``[]``
   from the engine and answers nothing (``success``): whoever handled the first delivery
   answers. This holds across processes sharing PostgreSQL (the second claim waits for the
   first transaction, then finds the row).
2. **In one process, one handling per push.** The first delivery starts the handling as its own
   task (so a dropped connection never cancels it) and waits up to the deadline
   (``WECHAT_REPLY_DEADLINE_SECONDS``, 4 s). A retry that arrives while the handling runs does
   not start another one; it takes over the wait (WeChat listens only to its latest
   connection, so the earlier request answers ``success`` at once). A retry after the handling
   finished answers ``success``: its answer was given or queued already.
3. **The answer goes out exactly once.** The handling's result is handed over in one step on the
   event loop: to the request still waiting (→ passive reply), or, when no request waits any
   more (the deadline passed; the request answered ``success``), to the outbox, from which it is
   sent as customer-service messages. Handing over and timing out cannot both happen.
4. **Durable outbound.** Anything that is not a passive reply — an answer that missed the
   window, the continuation of an answer longer than one WeChat message, a notice — is a row
   in the one outbox first (``core.ports.OutboxRepository``) and is sent from there by the
   WeChat worker (``bot.outbox.OutboxWorker`` with ``delivery.WeChatCourier``) in order per
   user, leased so that one process sends each row. Notifications use the template message
   ``WECHAT_TEMPLATE_ID`` when configured (text in the data field ``WECHAT_TEMPLATE_FIELD``),
   else customer service.
5. **The customer-service quota** (5 messages within 48 h of the user's last message; 3 within a
   minute of a click or follow) is worked out from the stored times of the user's last message
   and click (``wechat_contacts``) and the customer-service messages sent since (the outbox).
   A message outside it (or refused by WeChat with 45015/45047) is *held*; **held messages are
   prepended** to the passive reply to the user's next message (under a short header), since
   that reply is the one message WeChat always lets through; what does not fit in one message
   follows by customer service, now that the user's message reopened the window. Every message
   the conversation handles reopens the window — also one that gets no answer (a user writing
   while staff hold their ticket): the engine says what a message came to, so a redelivery is
   never mistaken for a message without replies.
6. **Storage trouble is not an answer.** When the database fails while a push is handled
   (nothing was kept), the push is answered 503 and not remembered, so WeChat's retry handles
   it again. (A failure after the 4 s deadline, when ``success`` has been said, cannot be
   retried by WeChat: that message is lost to the log.)

Who may push
------------

A push is acted on only when its signature checks, its timestamp is within five minutes of now
and its (timestamp, nonce) pair has not signed anything else (``replay``: the pair is bound to
the push's XML, so WeChat's retries above still reach the handling in hand); in safe and
compatible mode only the encrypted copy is read; ``ToUserName`` must be ``WECHAT_ACCOUNT_ID``.
Plaintext mode authenticates nothing but the URL, so it does not start while any ``wechat:``
staff or admin exists.

Known limit: if the passive reply itself is lost on the network after it was sent, WeChat
retries and gets ``success`` — cardbot prefers a lost duplicate to a double answer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import aiohttp

from bot.runtime import ChannelConfigError, RunOptions
from bot.wechat.api import DatabaseTokenStore, RedisTokenStore, TokenStore, WeChatApi
from bot.wechat.delivery import WeChatCourier, WeChatOutbox
from bot.wechat.protocol import Mode, PushSecurity
from bot.wechat.replay import DatabaseReplayStore, RedisReplayStore, ReplayStore
from bot.wechat.service import PushService

if TYPE_CHECKING:
    import asyncio

    from aiohttp import web

    from bot.app import App
    from bot.settings import Settings

log = logging.getLogger(__name__)

DRAIN_SECONDS = 15.0

__all__ = ["WeChatRunner", "build_runner", "check_settings", "push_security"]


def push_security(settings: Settings) -> PushSecurity:
    """The push checks for these settings; ChannelConfigError names what is missing."""
    missing = [
        name
        for name, value in (
            ("WECHAT_TOKEN", settings.wechat_token),
            ("WECHAT_APP_ID", settings.wechat_app_id),
            ("WECHAT_APP_SECRET", settings.wechat_app_secret),
            ("WECHAT_ACCOUNT_ID", settings.wechat_account_id),
        )
        if not value
    ]
    if missing:
        raise ChannelConfigError(f"missing settings: {', '.join(missing)}")
    assert settings.wechat_token is not None and settings.wechat_app_id is not None
    assert settings.wechat_account_id is not None
    current = settings.wechat_aes_key.get_secret_value() if settings.wechat_aes_key else None
    previous = (
        settings.wechat_aes_key_previous.get_secret_value()
        if settings.wechat_aes_key_previous
        else None
    )
    mode: Mode = settings.wechat_mode or ("safe" if current else "plaintext")
    if mode != "plaintext" and not current:
        raise ChannelConfigError(f"WECHAT_MODE={mode} needs WECHAT_AES_KEY (EncodingAESKey)")
    keys = [k for k in (current, previous) if k] if mode != "plaintext" else []
    try:
        return PushSecurity(
            settings.wechat_token.get_secret_value(),
            settings.wechat_app_id,
            mode,
            keys,
            account_id=settings.wechat_account_id.strip(),
        )
    except ValueError as exc:
        raise ChannelConfigError(f"WECHAT_AES_KEY/WECHAT_AES_KEY_PREVIOUS: {exc}") from exc


def check_settings(settings: Settings) -> None:
    """Called by ``cardbot run`` before it builds anything: ChannelConfigError if unusable."""
    security = push_security(settings)
    if security.mode == "plaintext":
        _refuse_plaintext_with(configured_wechat_roles(settings), "CARDBOT_STAFF/CARDBOT_ADMINS")


def configured_wechat_roles(settings: Settings) -> list[str]:
    """The ``wechat:`` entries of CARDBOT_STAFF and CARDBOT_ADMINS."""
    entries = f"{settings.staff},{settings.admins}".split(",")
    return sorted({e.strip() for e in entries if e.strip().startswith("wechat:")})


def _refuse_plaintext_with(actors: Sequence[str], where: str) -> None:
    """In plaintext mode nothing in a push is signed but the query string: a staff or admin
    role on WeChat would rest on it. Refuse to start instead."""
    if actors:
        raise ChannelConfigError(
            f"plaintext mode cannot authenticate WeChat staff or admins ({len(actors)} in "
            f"{where}, e.g. {actors[0]}): set WECHAT_MODE=safe and WECHAT_AES_KEY"
        )


async def _check_granted_roles(app: App, security: PushSecurity) -> None:
    """Roles granted in chat (stored) count like configured ones for plaintext mode."""
    if security.mode != "plaintext":
        return
    async with app.uow_factory() as uow:
        holders = await uow.role_grants.holders()
    granted = sorted(actor for actor, _ in holders if actor.startswith("wechat:"))
    _refuse_plaintext_with(granted, "roles granted in chat")


class WeChatRunner:
    """The WeChat channel inside ``cardbot run``."""

    channel = "wechat"

    def __init__(
        self,
        service: PushService,
        courier: WeChatCourier,
        session: aiohttp.ClientSession,
        store: TokenStore,
        replays: ReplayStore | None = None,
    ) -> None:
        self.service = service
        self.courier = courier
        self._session = session
        self._store = store
        self._replays = replays

    def routes(self) -> Sequence[web.RouteDef]:
        return self.service.routes()

    async def serve(self, stop: asyncio.Event) -> None:
        """Wait for ``stop``; then let pushes in hand finish (their answers are queued in the
        outbox, which the runtime's WeChat worker delivers)."""
        await stop.wait()
        await self.service.drain(DRAIN_SECONDS)

    async def aclose(self) -> None:
        await self._session.close()
        await self._store.aclose()
        if self._replays is not None:
            await self._replays.aclose()


async def build_runner(app: App, options: RunOptions) -> WeChatRunner:
    """The WeChat runner for ``cardbot run wechat``, from the app's settings."""
    settings = app.settings
    security = push_security(settings)
    await _check_granted_roles(app, security)
    assert settings.wechat_app_id is not None and settings.wechat_app_secret is not None
    clock = app.services.sale.clock
    vault = app.services.sale.vault
    store: TokenStore
    replays: ReplayStore
    if settings.redis_url:
        store = RedisTokenStore(settings.redis_url, vault, settings.wechat_app_id, clock)
        replays = RedisReplayStore(settings.redis_url, settings.wechat_app_id, clock)
    else:
        store = DatabaseTokenStore(app.uow_factory, vault, settings.wechat_app_id)
        replays = DatabaseReplayStore(app.uow_factory, clock)
    session = aiohttp.ClientSession()
    api = WeChatApi(
        session,
        settings.wechat_api_base,
        settings.wechat_app_id,
        settings.wechat_app_secret.get_secret_value(),
        store,
        clock,
        timeout=settings.wechat_api_timeout_seconds,
    )
    courier = WeChatCourier(
        app.uow_factory,
        api,
        clock,
        template_id=settings.wechat_template_id,
        template_field=settings.wechat_template_field,
    )
    outbox = WeChatOutbox(app.uow_factory, clock, app.services.outbox_queued)
    service = PushService(
        security,
        app.conversation,
        app.uow_factory,
        api,
        outbox,
        clock,
        deadline=settings.wechat_reply_deadline_seconds,
        replays=replays,
    )
    log.info(
        "WeChat: %s mode, pushes at http://%s:%s/wechat, API %s",
        security.mode,
        options.host,
        options.port,
        api.base,
    )
    return WeChatRunner(service, courier, session, store, replays)
