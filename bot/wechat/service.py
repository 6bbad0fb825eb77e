"""``/wechat``: WeChat's server-URL handshake (GET) and message pushes (POST), answered within
WeChat's five seconds. The design is in the package docstring (``bot/wechat/__init__.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from aiohttp import web

from bot.wechat.api import WeChatApi, WeChatApiError, WeChatUnavailable
from bot.wechat.delivery import WeChatOutbox
from bot.wechat.protocol import (
    Push,
    PushRejected,
    PushSecurity,
    Stamp,
    handshake_binding,
    parse_push,
    render_texts,
    text_reply_xml,
)
from bot.wechat.replay import DatabaseReplayStore, ReplayStore
from core.messages import Channel, Inbound, Reply
from core.ports import Clock, OutboxMessage, WeChatUnitOfWorkFactory
from handlers.engine import Conversation, TurnKind
from handlers.i18n import Translator, resolve_language

log = logging.getLogger(__name__)

PATH = "/wechat"
CHANNEL = Channel.WECHAT.value
SUCCESS = "success"  # "received, nothing to say now": WeChat neither retries nor complains
MAX_PUSH_BYTES = 64 * 1024  # pushes are a few hundred bytes; compatible mode about three times
REMEMBER_SECONDS = 120.0  # WeChat retries a push for about 15 s
OVERFLOW_DELAY = timedelta(seconds=1)  # lets the passive reply arrive before its continuation


class _Redeliver(Exception):
    """The storage failed while a push was handled; nothing was kept."""


def render_held(messages: Sequence[OutboxMessage]) -> list[str]:
    """Outbox messages as the texts they read in a passive reply (numbered menus and all)."""
    return [text for message in messages for text in render_texts([message.reply])]


@dataclass
class _InFlight:
    """A push being handled, and the HTTP request (WeChat's latest try) waiting for it."""

    push: Push
    waiter: asyncio.Future[list[str] | None] | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class PushService:
    """Turns pushes into conversation turns and answers each one exactly once."""

    def __init__(
        self,
        security: PushSecurity,
        conversation: Conversation,
        uow_factory: WeChatUnitOfWorkFactory,
        api: WeChatApi,
        outbox: WeChatOutbox,
        clock: Clock,
        deadline: float = 4.0,
        replays: ReplayStore | None = None,
    ) -> None:
        self._security = security
        self._replays = replays or DatabaseReplayStore(uow_factory, clock)
        self._conversation = conversation
        self._uow_factory = uow_factory
        self._api = api
        self._outbox = outbox
        self._clock = clock
        self._deadline = deadline
        self._inflight: dict[str, _InFlight] = {}
        self._done: OrderedDict[str, float] = OrderedDict()

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.handshake), web.post(PATH, self.push)]

    # -- HTTP --------------------------------------------------------------------------------

    async def handshake(self, request: web.Request) -> web.Response:
        """WeChat checks the server URL: echo ``echostr`` when the signature is right, the
        timestamp recent and the stamp not used for anything else."""
        try:
            echo, stamp = self._security.handshake(request.query, self._clock.now())
            await self._admit(stamp, handshake_binding(echo))
        except PushRejected as exc:
            log.warning("WeChat handshake refused: %s", exc.reason)
            return web.Response(status=exc.status, text=exc.reason)
        return web.Response(text=echo)

    async def _refuse_staff_in_plaintext(self, push: Push) -> None:
        """A role granted to a WeChat user while this process runs in plaintext mode (where a
        push's body is not signed) is not served: start refused it; this covers later grants."""
        if self._security.mode != "plaintext":
            return
        try:
            async with self._uow_factory() as uow:
                role = await uow.role_grants.role_of(f"{CHANNEL}:{push.openid}")
        except Exception as exc:
            log.error("cannot read granted roles: %s", type(exc).__name__, exc_info=True)
            raise PushRejected(503, "cannot check the sender now") from exc
        if role is not None:
            log.error("a WeChat %s writes while pushes are in plaintext mode: refused", role.value)
            raise PushRejected(403, "staff and admins are not served in plaintext mode")

    async def _admit(self, stamp: Stamp, binding: str) -> None:
        """PushRejected unless ``stamp`` is new or signed ``binding`` before (a retry).
        Without the replay store no request is acted on: 503, and WeChat tries again."""
        try:
            admitted = await self._replays.admit(stamp, binding, self._security.expires_at(stamp))
        except Exception as exc:
            log.error("the WeChat replay store failed: %s", type(exc).__name__, exc_info=True)
            raise PushRejected(503, "cannot check the request for replay now") from exc
        if not admitted:
            raise PushRejected(403, "timestamp and nonce already used for another request")

    async def push(self, request: web.Request) -> web.Response:
        """One push: answered passively within the deadline, else ``success`` (the answer then
        goes by customer-service message)."""
        started = time.monotonic()
        if request.content_length is not None and request.content_length > MAX_PUSH_BYTES:
            return web.Response(status=413, text="push too large")
        # Read by the server within its body deadline and size limit (bot/http.py).
        body = await request.read()
        if len(body) > MAX_PUSH_BYTES:  # chunked, without a length
            return web.Response(status=413, text="push too large")
        try:
            opened = self._security.open(request.query, body, self._clock.now())
            await self._admit(opened.stamp, opened.binding)
            push = parse_push(opened.xml)
            self._security.check_recipient(push)
            await self._refuse_staff_in_plaintext(push)
        except PushRejected as exc:
            log.warning("WeChat push refused (%s): %s", exc.status, exc.reason)
            return web.Response(status=exc.status, text=exc.reason)
        if push.kind in ("unknown", "ignored"):
            return web.Response(text=SUCCESS)
        remaining = self._deadline - (time.monotonic() - started)
        texts = await self._answer_in_time(push, remaining)
        if texts is None:  # storage trouble, nothing kept: WeChat pushes it again
            return web.Response(status=503, text="try again")
        if not texts:
            return web.Response(text=SUCCESS)
        if len(texts) > 1:
            await self._outbox.enqueue(push.openid, "reply", texts[1:], delay=OVERFLOW_DELAY)
        reply = self._security.seal(
            text_reply_xml(push, texts[0], now=self._clock.now().timestamp()),
            opened.encrypted,
            nonce=opened.stamp.nonce,
            timestamp=str(int(self._clock.now().timestamp())),
        )
        return web.Response(text=reply, content_type="text/xml", charset="utf-8")

    # -- once per push -----------------------------------------------------------------------

    async def _answer_in_time(self, push: Push, seconds: float) -> list[str] | None:
        """The answer if it is ready in time, else [] (it will go by customer service); None
        when the storage failed and nothing was kept (WeChat should push it again).

        The first delivery of a push starts its handling; a retry (same dedupe id) while it
        runs takes over the wait — WeChat has given up on the earlier connection — and a retry
        after it finished gets nothing: the answer was given or queued already."""
        key = push.dedupe_id
        entry = self._inflight.get(key)
        if entry is None:
            if self._seen_recently(key):
                log.info("push %s again after it was answered", key)
                return []
            entry = self._inflight[key] = _InFlight(push)
            entry.task = asyncio.create_task(self._handle(key, entry, self._clock.now()))
        elif entry.waiter is not None and not entry.waiter.done():
            entry.waiter.cancel()  # that request answers "success" now
        waiter: asyncio.Future[list[str] | None] = asyncio.get_running_loop().create_future()
        entry.waiter = waiter
        try:
            await asyncio.wait({waiter}, timeout=max(0.0, seconds))
        finally:
            if not waiter.done():
                waiter.cancel()  # too late (or the request went away): customer service it is
        return [] if waiter.cancelled() else waiter.result()

    async def _handle(self, key: str, entry: _InFlight, arrived: datetime) -> None:
        push = entry.push
        texts: list[str] | None
        try:
            texts = await self._answer(push, arrived)
        except _Redeliver:
            texts = None
        except Exception as exc:
            log.error("push %s failed: %s", key, type(exc).__name__, exc_info=True)
            texts = [Translator(resolve_language(None))("error.internal")]
        finally:
            del self._inflight[key]
        waiter = entry.waiter
        if texts is None:
            # Not remembered: WeChat's next try of this push is handled afresh.
            log.warning("push %s: storage unavailable; left for WeChat's retry", key)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        self._remember(key)
        if waiter is not None and not waiter.done():
            waiter.set_result(texts)  # the waiting request replies passively
            return
        try:
            await self._outbox.enqueue(push.openid, "reply", texts)
        except Exception:
            log.exception("the answer to push %s could not be queued", key)

    def _seen_recently(self, key: str) -> bool:
        seen = self._done.get(key)
        return seen is not None and time.monotonic() - seen < REMEMBER_SECONDS

    def _remember(self, key: str) -> None:
        now = time.monotonic()
        self._done[key] = now
        while self._done:
            oldest, at = next(iter(self._done.items()))
            if now - at < REMEMBER_SECONDS:
                break
            del self._done[oldest]

    async def _answer(self, push: Push, arrived: datetime) -> list[str]:
        """Handle a push (effects at most once); the texts to say back, [] for nothing."""
        if push.kind == "unsubscribe":
            async with self._uow_factory() as uow:
                if await uow.inbox.claim(CHANNEL, push.dedupe_id, self._clock.now()):
                    await uow.users.set_reachable(CHANNEL, push.openid, False)
                    await uow.commit()
            return []
        inbound = await self._inbound(push)
        own_replies: list[Reply] = []
        if inbound is None:
            own_replies = await self._own_reply(push)
            replies = own_replies
        else:
            turn = await self._conversation.take(inbound)
            if turn.kind is TurnKind.RETRY:
                raise _Redeliver
            if turn.kind is TurnKind.DUPLICATE:
                return []  # a redelivery: whoever handled the first delivery answers it
            # Handled — with replies or without (a paused conversation): either way the user
            # wrote, and their customer-service window opens again.
            replies = list(turn.replies)
        async with self._uow_factory() as uow:
            if own_replies and not await uow.inbox.claim(
                CHANNEL, push.dedupe_id, self._clock.now()
            ):
                return []
            await uow.wechat_contacts.touch(
                push.openid, arrived, by_message=push.opens_message_window
            )
            earlier = await uow.outbox.take_undelivered(CHANNEL, push.openid, self._clock.now())
            await uow.commit()
        before: list[str] = []
        if earlier:
            language = await self._language(push.openid)
            before = [Translator(language)("wechat.held_header"), *render_held(earlier)]
        return render_texts(replies, before)

    async def _inbound(self, push: Push) -> Inbound | None:
        """The conversation's view of a push, or None when the adapter answers it itself."""
        base = Inbound(CHANNEL, push.openid, push.openid, push.dedupe_id)
        if push.kind == "text":
            return replace(base, text=push.text or "")
        if push.kind == "subscribe":
            return replace(base, command="start")
        if push.kind == "click":
            # Menu buttons of type "click" carry a command as their key: sell, prices, orders…
            return replace(base, command=(push.event_key or "start").strip().lstrip("/").lower())
        if push.kind == "image":
            image = await self._picture(push)
            return None if image is None else replace(base, image=image)
        return None

    async def _picture(self, push: Push) -> bytes | None:
        """The pushed picture: by MediaId through the media API, else by its PicUrl."""
        if push.media_id:
            try:
                return await self._api.download_media(push.media_id)
            except (WeChatApiError, WeChatUnavailable) as exc:
                log.warning("media/get failed for push %s: %s", push.dedupe_id, exc)
        if push.pic_url:
            try:
                return await self._api.download_url(push.pic_url)
            except (WeChatApiError, WeChatUnavailable) as exc:
                log.warning("PicUrl download failed for push %s: %s", push.dedupe_id, exc)
        return None

    async def _own_reply(self, push: Push) -> list[Reply]:
        t = Translator(await self._language(push.openid))
        key = "wechat.photo_unavailable" if push.kind == "image" else "wechat.unsupported"
        return [Reply(t(key))]

    async def _language(self, openid: str) -> str:
        async with self._uow_factory() as uow:
            language = await uow.wechat_contacts.language(openid)
        return resolve_language(language)

    async def drain(self, seconds: float) -> None:
        """Let pushes being handled finish (their answers are queued) before shutting down."""
        tasks = [entry.task for entry in self._inflight.values() if entry.task is not None]
        if tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), seconds)
