"""A Bot-API-compatible test server on 127.0.0.1, speaking HTTP like api.telegram.org.

It implements what cardbot uses — getMe, getUpdates (offset, limit, long-poll timeout),
sendMessage, sendPhoto, sendDocument, editMessageReplyMarkup, answerCallbackQuery, getFile and
file downloads (``/file/bot<token>/<path>``), deleteMessage, setMyCommands, getMyCommands,
setWebhook, deleteWebhook — records every call with the server's own monotonic clock, and can
be told to misbehave: 429 with ``retry_after`` (a flood window in which every send is
refused, as Telegram's flood control does), 403 for chosen chats, 5xx, or a stalled answer.

Tests play the users: the ``*_update`` builders make updates (private chats: chat id = user id;
message ids shared by user and bot in a chat, as in Telegram) and ``push`` queues one for
getUpdates; in webhook mode the test POSTs them itself.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123456789:TEST-token_for-the-fake-bot-api"
BOT_USER = {"id": 123456789, "is_bot": True, "first_name": "CardBot", "username": "cardbot_bot"}
SEND_METHODS = frozenset({"sendmessage", "sendphoto", "senddocument"})
MAX_POLL_SECONDS = 1.0  # long polls end sooner than asked: keeps tests and shutdown quick
# Fields the Bot API takes as plain strings; everything else in a form is JSON.
STRING_FIELDS = frozenset(
    {"text", "callback_query_id", "file_id", "url", "secret_token", "caption", "language_code"}
)


@dataclass
class Call:
    """One request as the server saw it."""

    method: str  # lower case, e.g. "sendmessage"
    params: dict[str, Any]
    at: float  # server's time.monotonic() on arrival
    status: int = 200

    @property
    def chat(self) -> int | None:
        chat = self.params.get("chat_id")
        return int(chat) if chat is not None else None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class User:
    id: int
    language_code: str | None = "zh-hans"
    first_name: str = "测试用户"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "is_bot": False, "first_name": self.first_name}
        if self.language_code:
            out["language_code"] = self.language_code
        return out


@dataclass
class FakeTelegram:
    token: str = TOKEN
    calls: list[Call] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    messages: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    deleted: set[tuple[int, int]] = field(default_factory=set)
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    blocked: set[int] = field(default_factory=set)
    commands: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    webhook: dict[str, Any] | None = None
    stall: Callable[[Call], bool] | None = None
    fail_next: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    base_url: str = ""
    # Optional: enforce Telegram's overall limit — at most ``rate_limit`` sends in any second;
    # one more is answered 429 and opens a flood window (retry_after whole seconds) in which
    # every send is refused. ``time_scale`` runs the server's seconds N times faster (the bot
    # is told the same, CARDBOT_TIME_SCALE), so a benchmark keeps the ratio and saves time.
    rate_limit: int | None = None
    time_scale: float = 1.0
    # What else ``handled`` waits for once an update is confirmed: the bot confirms updates as
    # soon as it has queued them, so a harness that knows the bot's database waits for the
    # queue too (tests/e2e/telegram_harness.py: ``watch_queue``).
    after_confirm: Callable[[dict[str, Any]], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        self._update_ids = itertools.count(random.randint(10**6, 10**9))
        self._message_ids: defaultdict[int, itertools.count[int]] = defaultdict(
            lambda: itertools.count(1)
        )
        self._file_ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._flood_next: int | None = None
        self._flood_until = 0.0
        self._runner: web.AppRunner | None = None
        self._stalled = asyncio.Event()
        self._counted: deque[float] = deque()  # arrival times of sends in the last second
        self.rate_limited = 0  # sends refused because the rate limit was exceeded

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def close(self) -> None:
        self._stalled.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- misbehaving on purpose ----------------------------------------------------------------

    def flood(self, retry_after: int) -> None:
        """The next send starts a flood window of ``retry_after`` seconds: every send in it
        gets 429 with the seconds left."""
        self._flood_next = retry_after

    @property
    def flood_window(self) -> tuple[float, float] | None:
        started = [c.at for c in self.calls if c.status == 429]
        return (started[0], self._flood_until) if started else None

    # -- playing the users ---------------------------------------------------------------------

    def next_update_id(self) -> int:
        return next(self._update_ids)

    def restart_update_ids(self, at: int) -> None:
        """As Telegram does after a week without updates: the sequence jumps somewhere else."""
        self._update_ids = itertools.count(at)

    def _user_message(self, user: User, **content: Any) -> dict[str, Any]:
        message_id = next(self._message_ids[user.id])
        message = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": user.id, "type": "private", "first_name": user.first_name},
            "from": user.as_dict(),
            **content,
        }
        self.messages[(user.id, message_id)] = message
        return message

    def text_update(self, user: User, text: str) -> dict[str, Any]:
        entities = []
        if text.startswith("/"):
            entities = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        content: dict[str, Any] = {"text": text}
        if entities:
            content["entities"] = entities
        return {"update_id": self.next_update_id(), "message": self._user_message(user, **content)}

    def add_file(self, payload: bytes, size: int | None = None) -> str:
        file_id = f"file-{next(self._file_ids)}"
        self.files[file_id] = (payload, len(payload) if size is None else size)
        return file_id

    def photo_update(
        self, user: User, image: bytes, *, claimed_size: int | None = None
    ) -> dict[str, Any]:
        """A photo in three sizes, as Telegram sends them; the largest is ``image``."""
        small = self.add_file(b"thumbnail bytes, not a picture")
        big = self.add_file(image, claimed_size)
        sizes = [
            {
                "file_id": small,
                "file_unique_id": small + "u",
                "width": 90,
                "height": 60,
                "file_size": 1200,
            },
            {
                "file_id": big,
                "file_unique_id": big + "u",
                "width": 1280,
                "height": 960,
                "file_size": self.files[big][1],
            },
        ]
        return {
            "update_id": self.next_update_id(),
            "message": self._user_message(user, photo=sizes),
        }

    def document_update(
        self,
        user: User,
        payload: bytes,
        file_name: str,
        mime_type: str,
        claimed_size: int | None = None,
    ) -> dict[str, Any]:
        file_id = self.add_file(payload, claimed_size)
        document = {
            "file_id": file_id,
            "file_unique_id": file_id + "u",
            "file_name": file_name,
            "mime_type": mime_type,
            "file_size": self.files[file_id][1],
        }
        return {
            "update_id": self.next_update_id(),
            "message": self._user_message(user, document=document),
        }

    def message_update(self, user: User, **content: Any) -> dict[str, Any]:
        """Any other kind of message (sticker=…, voice=…)."""
        return {"update_id": self.next_update_id(), "message": self._user_message(user, **content)}

    def callback_update(
        self, user: User, data: str, message: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A button press on ``message`` (default: the bot's latest message to the user)."""
        if message is None:
            message = self.bot_messages(user.id)[-1]
        return {
            "update_id": self.next_update_id(),
            "callback_query": {
                "id": str(random.getrandbits(62)),
                "from": user.as_dict(),
                "message": message,
                "chat_instance": f"ci-{user.id}",
                "data": data,
            },
        }

    def press(self, user: User, action: str) -> dict[str, Any]:
        """Press the button whose callback data starts with ``action`` on the newest keyboard
        that offers it."""
        for message in reversed(self.bot_messages(user.id)):
            for row in (message.get("reply_markup") or {}).get("inline_keyboard", []):
                for button in row:
                    data = button.get("callback_data", "")
                    if data == action or data.startswith((action + ":", action + ".")):
                        return self.callback_update(user, data, message)
        raise AssertionError(f"no button {action!r} offered to {user.id}")

    def push(self, *updates: dict[str, Any]) -> None:
        """Queue updates for getUpdates (all at once: no poll sees half of them)."""
        self.pending.extend(updates)
        self._notify_soon()

    # -- reading what the bot did ----------------------------------------------------------------

    def bot_messages(self, chat: int) -> list[dict[str, Any]]:
        return [
            m
            for (c, _), m in sorted(self.messages.items())
            if c == chat and m.get("from", {}).get("id") == BOT_USER["id"]
        ]

    def texts(self, chat: int, since: int = 0) -> list[str]:
        """Texts the bot sent to ``chat`` in calls from index ``since`` on."""
        return [
            str(c.params.get("text", ""))
            for c in self.calls[since:]
            if c.method == "sendmessage" and c.ok and c.chat == chat
        ]

    def sends(self, *, ok_only: bool = True) -> list[Call]:
        return [c for c in self.calls if c.method in SEND_METHODS and (c.ok or not ok_only)]

    async def wait_for(
        self, predicate: Callable[[Call], bool], *, since: int = 0, within: float = 60.0
    ) -> Call:
        """The first call from index ``since`` on that matches, waiting for it if need be."""

        async def found() -> Call:
            async with self._changed:
                while True:
                    for call in self.calls[since:]:
                        if predicate(call):
                            return call
                    await self._changed.wait()

        return await asyncio.wait_for(found(), within)

    async def handled(self, update: dict[str, Any], within: float = 60.0) -> None:
        """Wait until the bot confirmed ``update`` (a getUpdates with a higher offset) and, with
        ``after_confirm``, until it has handled it and sent everything it had to say."""
        uid = update["update_id"]
        await self.wait_for(
            lambda c: c.method == "getupdates" and int(c.params.get("offset") or 0) > uid,
            within=within,
        )
        if self.after_confirm is not None:
            await asyncio.wait_for(self.after_confirm(update), within)

    # -- HTTP ----------------------------------------------------------------------------------

    def _notify_soon(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
            return params
        if request.can_read_body:
            form = await request.post()
            for name, value in form.items():
                if isinstance(value, web.FileField):
                    params[name] = value.file.read()
                elif name in STRING_FIELDS:
                    params[name] = value
                else:
                    try:
                        params[name] = json.loads(value)
                    except ValueError:
                        params[name] = value
        return params

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"].lower()
        call = Call(method, {}, time.monotonic())
        if request.match_info["token"] != self.token:
            call.status = 401
            self.calls.append(call)
            self._notify_soon()
            return _error(401, "Unauthorized")
        call.params = await self._params(request)
        self.calls.append(call)
        self._notify_soon()
        if self.stall is not None and self.stall(call):
            await self._stalled.wait()  # never answered (until the server closes)
            return _error(500, "stalled")
        if self.fail_next.get(method):
            status = self.fail_next[method].pop(0)
            call.status = status
            return _error(status, "Internal Server Error")
        if method in SEND_METHODS:
            refused = self._refuse_send(call)
            if refused is not None:
                return refused
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            call.status = 404
            return _error(404, "Not Found: method not found")
        result = await handler(call)
        if isinstance(result, web.Response):
            call.status = result.status
            return result
        return web.json_response({"ok": True, "result": result})

    def _refuse_send(self, call: Call) -> web.Response | None:
        now = call.at
        second = 1.0 / self.time_scale
        if self._flood_next is not None:
            self._flood_until = now + self._flood_next * second
            self._flood_next = None
        if self.rate_limit is not None and now >= self._flood_until:
            while self._counted and self._counted[0] <= now - second:
                self._counted.popleft()
            if len(self._counted) >= self.rate_limit:
                self.rate_limited += 1
                self._flood_until = now + second  # as Telegram does: a pause, not one refusal
            else:
                self._counted.append(now)
        if now < self._flood_until:
            call.status = 429
            retry = max(1, int((self._flood_until - now) / second + 0.999))
            return _error(429, f"Too Many Requests: retry after {retry}", retry_after=retry)
        if call.chat in self.blocked:
            call.status = 403
            return _error(403, "Forbidden: bot was blocked by the user")
        return None

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        file_id = request.match_info["path"].rsplit("/", 1)[-1]
        if file_id not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[file_id][0], content_type="application/octet-stream")

    # -- methods ------------------------------------------------------------------------------

    async def _m_getme(self, call: Call) -> Any:
        return BOT_USER

    async def _m_getupdates(self, call: Call) -> Any:
        if self.webhook is not None:
            call.status = 409
            return _error(409, "Conflict: can't use getUpdates method while webhook is active")
        offset = int(call.params.get("offset") or 0)
        limit = int(call.params.get("limit") or 100)
        timeout = min(float(call.params.get("timeout") or 0), MAX_POLL_SECONDS)
        if offset:
            self.pending = [u for u in self.pending if u["update_id"] >= offset]
        deadline = time.monotonic() + timeout
        async with self._changed:
            while not self.pending and time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
                except TimeoutError:
                    break
        return self.pending[:limit]

    def _bot_message(self, call: Call, **content: Any) -> dict[str, Any]:
        chat = int(call.params["chat_id"])
        message_id = next(self._message_ids[chat])
        message = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": chat, "type": "private", "first_name": "user"},
            "from": BOT_USER,
            **content,
        }
        markup = call.params.get("reply_markup")
        if markup:
            message["reply_markup"] = markup
        self.messages[(chat, message_id)] = message
        return message

    async def _m_sendmessage(self, call: Call) -> Any:
        text = str(call.params.get("text", ""))
        if not text or len(text) > 4096:
            call.status = 400
            return _error(400, "Bad Request: message is too long" if text else "text is empty")
        markup = call.params.get("reply_markup") or {}
        for row in markup.get("inline_keyboard", []):
            for button in row:
                if len(button.get("callback_data", "").encode()) > 64:
                    call.status = 400
                    return _error(400, "Bad Request: BUTTON_DATA_INVALID")
        return self._bot_message(call, text=text)

    async def _m_sendphoto(self, call: Call) -> Any:
        return self._bot_message(
            call, photo=[{"file_id": "x", "file_unique_id": "x", "width": 1, "height": 1}]
        )

    async def _m_senddocument(self, call: Call) -> Any:
        return self._bot_message(call, document={"file_id": "x", "file_unique_id": "x"})

    async def _m_editmessagereplymarkup(self, call: Call) -> Any:
        key = (int(call.params["chat_id"]), int(call.params["message_id"]))
        message = self.messages.get(key)
        if message is None or key in self.deleted:
            return _error(400, "Bad Request: message to edit not found")
        markup = call.params.get("reply_markup")
        if not markup and "reply_markup" not in message:
            return _error(400, "Bad Request: message is not modified")
        if markup:
            message["reply_markup"] = markup
        else:
            message.pop("reply_markup", None)
        return message

    async def _m_answercallbackquery(self, call: Call) -> Any:
        return True

    async def _m_deletemessage(self, call: Call) -> Any:
        key = (int(call.params["chat_id"]), int(call.params["message_id"]))
        if key not in self.messages or key in self.deleted:
            return _error(400, "Bad Request: message to delete not found")
        self.deleted.add(key)
        return True

    async def _m_getfile(self, call: Call) -> Any:
        file_id = str(call.params.get("file_id"))
        if file_id not in self.files:
            return _error(400, "Bad Request: invalid file_id")
        size = self.files[file_id][1]
        if size > 20 * 1024 * 1024:
            return _error(400, "Bad Request: file is too big")
        return {
            "file_id": file_id,
            "file_unique_id": file_id + "u",
            "file_size": size,
            "file_path": f"photos/{file_id}",
        }

    async def _m_setmycommands(self, call: Call) -> Any:
        self.commands[str(call.params.get("language_code") or "")] = call.params["commands"]
        return True

    async def _m_getmycommands(self, call: Call) -> Any:
        return self.commands.get(str(call.params.get("language_code") or ""), [])

    async def _m_setwebhook(self, call: Call) -> Any:
        self.webhook = dict(call.params)
        return True

    async def _m_deletewebhook(self, call: Call) -> Any:
        self.webhook = None
        return True


def _error(code: int, description: str, **parameters: Any) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)
