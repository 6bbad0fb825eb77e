"""WeChat's side of the conversation, for end-to-end tests and the benchmark.

- :class:`WeChatApiPeer` — an aiohttp server on 127.0.0.1 that answers like
  ``api.weixin.qq.com``: ``cgi-bin/stable_token`` (the same token while it is valid unless
  ``force_refresh``), ``message/custom/send``, ``message/template/send`` and ``media/get`` (which
  check the token: 40001 otherwise), plus picture URLs for ``PicUrl``. It records every call and
  can be told to refuse (scripted errcodes) or to expire the token.
- :class:`WeChatPusher` — pushes messages to a cardbot the way WeChat does: XML signed with the
  token (``signature``), and in safe/compatible mode encrypted (AES-256-CBC, key from the
  EncodingAESKey, IV = key[:16], PKCS#7 to 32 bytes, random16 | length | xml | appid) with
  ``msg_signature``. Written from WeChat's documentation with ``hashlib`` and ``cryptography``,
  not with the code under test; passive replies are decrypted and their signature checked.
- :class:`BotProcess` — ``cardbot run wechat`` as a child process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import secrets
import signal
import socket
import struct
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ROOT = Path(__file__).resolve().parents[1]
APP_ID = "wx5c0ffee0ddba11"
APP_SECRET = "s3cr3t-app-secret"
TOKEN = "cardbot-test-token"
ACCOUNT = "gh_cardbot_test"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
AES_KEY_OLD = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut"


# --------------------------------------------------------------------------------------------
# The WeChat API


@dataclass
class ApiCall:
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None
    at: float = field(default_factory=time.monotonic)


class WeChatApiPeer:
    """A WeChat-API-compatible server that records what it is asked."""

    def __init__(self, app_id: str = APP_ID) -> None:
        self.app_id = app_id
        self.calls: list[ApiCall] = []
        self.media: dict[str, bytes] = {}
        self.pictures: dict[str, bytes] = {}
        self.custom_errors: list[int] = []  # errcodes for the next customer-service sends
        self.template_errors: list[int] = []
        self.token: str | None = None
        self.token_expires = 0.0
        self.tokens_issued: list[str] = []
        self._runner: web.AppRunner | None = None
        self.base = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.add_routes(
            [
                web.post("/cgi-bin/stable_token", self._stable_token),
                web.post("/cgi-bin/message/custom/send", self._custom),
                web.post("/cgi-bin/message/template/send", self._template),
                web.get("/cgi-bin/media/get", self._media),
                web.get("/pic/{name}", self._picture),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"
        return self.base

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- what was asked ----------------------------------------------------------------------

    def sent(self, path: str) -> list[ApiCall]:
        return [c for c in self.calls if c.path == path]

    def custom_texts(self, openid: str | None = None) -> list[str]:
        return [
            c.body["text"]["content"]
            for c in self.sent("message/custom/send")
            if c.body is not None
            and (openid is None or c.body["touser"] == openid)
            and c.body.get("_ok")
        ]

    def templates(self, openid: str | None = None) -> list[dict[str, Any]]:
        return [
            c.body
            for c in self.sent("message/template/send")
            if c.body is not None
            and (openid is None or c.body["touser"] == openid)
            and c.body.get("_ok")
        ]

    async def wait_for(
        self, condition: Callable[[], Any], seconds: float = 60.0, what: str = "a call"
    ) -> Any:
        """Wait (polling, with a deadline) until ``condition()`` is truthy; returns it."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; calls: {self.calls}")

    def expire_token(self) -> None:
        """The current token stops working (as after a refresh elsewhere or its expiry)."""
        self.token = None

    # -- handlers ----------------------------------------------------------------------------

    def _record(self, request: web.Request, body: dict[str, Any] | None) -> ApiCall:
        call = ApiCall(request.path.removeprefix("/cgi-bin/"), dict(request.query), body)
        self.calls.append(call)
        return call

    async def _stable_token(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        if body.get("appid") != self.app_id or body.get("secret") != APP_SECRET:
            return web.json_response({"errcode": 40013, "errmsg": "invalid appid"})
        now = time.monotonic()
        if body.get("force_refresh") or self.token is None or now >= self.token_expires:
            self.token = f"TOKEN-{secrets.token_hex(8)}"
            self.token_expires = now + 7200
            self.tokens_issued.append(self.token)
        return web.json_response(
            {"access_token": self.token, "expires_in": int(self.token_expires - now)}
        )

    def _token_error(self, request: web.Request) -> web.Response | None:
        if self.token is None or request.query.get("access_token") != self.token:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        return None

    async def _custom(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        refused = self._token_error(request)
        if refused is not None:
            return refused
        if self.custom_errors:
            code = self.custom_errors.pop(0)
            return web.json_response({"errcode": code, "errmsg": "scripted"})
        body["_ok"] = True
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def _template(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        refused = self._token_error(request)
        if refused is not None:
            return refused
        if self.template_errors:
            code = self.template_errors.pop(0)
            return web.json_response({"errcode": code, "errmsg": "scripted"})
        body["_ok"] = True
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": 200228332})

    async def _media(self, request: web.Request) -> web.Response:
        self._record(request, None)
        refused = self._token_error(request)
        if refused is not None:
            return refused
        data = self.media.get(request.query.get("media_id", ""))
        if data is None:
            return web.json_response({"errcode": 40007, "errmsg": "invalid media_id"})
        return web.Response(
            body=data,
            content_type="image/jpeg",
            headers={"Content-disposition": 'attachment; filename="card.jpg"'},
        )

    async def _picture(self, request: web.Request) -> web.Response:
        self._record(request, None)
        data = self.pictures.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/jpeg")


# --------------------------------------------------------------------------------------------
# Pushes, as WeChat builds them


def sha1_signature(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def _aes(encoding_aes_key: str) -> tuple[bytes, bytes]:
    key = base64.b64decode(encoding_aes_key + "=")
    return key, key[:16]


def wechat_encrypt(xml: str, encoding_aes_key: str, app_id: str = APP_ID) -> str:
    key, iv = _aes(encoding_aes_key)
    raw = xml.encode()
    plain = secrets.token_bytes(16) + struct.pack(">I", len(raw)) + raw + app_id.encode()
    pad = 32 - len(plain) % 32
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def wechat_decrypt(ciphertext: str, encoding_aes_key: str, app_id: str = APP_ID) -> str:
    key, iv = _aes(encoding_aes_key)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    plain = decryptor.update(base64.b64decode(ciphertext)) + decryptor.finalize()
    plain = plain[: -plain[-1]]
    (length,) = struct.unpack(">I", plain[16:20])
    xml, tail = plain[20 : 20 + length], plain[20 + length :]
    assert tail.decode() == app_id, f"reply encrypted for {tail!r}"
    return xml.decode()


def _cdata(value: str) -> str:
    return f"<![CDATA[{value}]]>"


_msg_ids = itertools.count(int(time.time() * 1000) * 1000)


def next_msg_id() -> str:
    return str(next(_msg_ids))


def text_xml(openid: str, content: str, msg_id: str | None = None) -> str:
    return (
        f"<xml><ToUserName>{_cdata(ACCOUNT)}</ToUserName>"
        f"<FromUserName>{_cdata(openid)}</FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType>{_cdata('text')}</MsgType>"
        f"<Content>{_cdata(content)}</Content><MsgId>{msg_id or next_msg_id()}</MsgId></xml>"
    )


def image_xml(openid: str, media_id: str, pic_url: str, msg_id: str | None = None) -> str:
    return (
        f"<xml><ToUserName>{_cdata(ACCOUNT)}</ToUserName>"
        f"<FromUserName>{_cdata(openid)}</FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType>{_cdata('image')}</MsgType>"
        f"<PicUrl>{_cdata(pic_url)}</PicUrl><MediaId>{_cdata(media_id)}</MediaId>"
        f"<MsgId>{msg_id or next_msg_id()}</MsgId></xml>"
    )


def event_xml(openid: str, event: str, key: str = "", create_time: int | None = None) -> str:
    return (
        f"<xml><ToUserName>{_cdata(ACCOUNT)}</ToUserName>"
        f"<FromUserName>{_cdata(openid)}</FromUserName>"
        f"<CreateTime>{create_time or int(time.time())}</CreateTime>"
        f"<MsgType>{_cdata('event')}</MsgType><Event>{_cdata(event)}</Event>"
        f"<EventKey>{_cdata(key)}</EventKey></xml>"
    )


@dataclass
class Answer:
    status: int
    body: str
    text: str | None  # the passive reply's Content, decrypted when it came encrypted

    @property
    def success(self) -> bool:
        return self.status == 200 and self.body in ("success", "")


class WeChatPusher:
    """Pushes to ``url`` as WeChat does in ``mode`` (plaintext, compatible or safe)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        mode: str = "safe",
        aes_key: str = AES_KEY,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.url = url
        self.mode = mode
        self.aes_key = aes_key
        self.now = now  # WeChat's clock (Unix seconds): the bot's injected clock in-process

    def signed_query(
        self, body_xml: str, timestamp: str | None = None, nonce: str | None = None
    ) -> tuple[dict[str, str], str]:
        """The query string and body of a push as WeChat signs it (a fresh stamp unless
        ``timestamp``/``nonce`` are given)."""
        timestamp = timestamp or str(int(self.now()))
        nonce = nonce or secrets.token_hex(5)
        query = {
            "signature": sha1_signature(TOKEN, timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
            "openid": _field(body_xml, "FromUserName") or "",
        }
        if self.mode == "plaintext":
            return query, body_xml
        encrypted = wechat_encrypt(body_xml, self.aes_key)
        query["encrypt_type"] = "aes"
        query["msg_signature"] = sha1_signature(TOKEN, timestamp, nonce, encrypted)
        if self.mode == "safe":
            body = (
                f"<xml><ToUserName>{_cdata(ACCOUNT)}</ToUserName>"
                f"<Encrypt>{_cdata(encrypted)}</Encrypt></xml>"
            )
        else:  # compatible: the plaintext fields and the ciphertext
            body = body_xml.replace("</xml>", f"<Encrypt>{_cdata(encrypted)}</Encrypt></xml>")
        return query, body

    async def push(self, xml: str) -> Answer:
        query, body = self.signed_query(xml)
        return await self.raw(query, body.encode())

    async def raw(self, query: dict[str, str], body: bytes) -> Answer:
        async with self.session.post(
            self.url, params=query, data=body, timeout=aiohttp.ClientTimeout(total=30)
        ) as response:
            text = await response.text()
            return Answer(response.status, text, self._content(response.status, text, query))

    def _content(self, status: int, body: str, query: dict[str, str]) -> str | None:
        if status != 200 or body in ("success", ""):
            return None
        root = ET.fromstring(body)
        encrypted = root.findtext("Encrypt")
        if encrypted is not None:
            timestamp, nonce = root.findtext("TimeStamp") or "", root.findtext("Nonce") or ""
            expected = sha1_signature(TOKEN, timestamp, nonce, encrypted)
            assert root.findtext("MsgSignature") == expected, "reply signature is wrong"
            root = ET.fromstring(wechat_decrypt(encrypted, AES_KEY))
        else:
            assert "encrypt_type" not in query or self.mode == "compatible", "reply not encrypted"
        assert root.findtext("MsgType") == "text"
        return root.findtext("Content")


def _field(xml: str, name: str) -> str | None:
    try:
        return ET.fromstring(xml).findtext(name)
    except ET.ParseError:
        return None


# --------------------------------------------------------------------------------------------
# cardbot as a child process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bot_env(tmp_path: Path, database_url: str, api_base: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARDBOT_", "WECHAT_"))}
    env.update(
        {
            "CARDBOT_VAR_DIR": str(tmp_path / "var"),
            "CARDBOT_DATABASE_URL": database_url,
            "CARDBOT_DATA_KEY_FILE": str(tmp_path / "data.key"),
            "CARDBOT_CONFIG": str(tmp_path / "absent.toml"),
            "CARDBOT_LOG_LEVEL": "INFO",
            "WECHAT_TOKEN": TOKEN,
            "WECHAT_APP_ID": APP_ID,
            "WECHAT_APP_SECRET": APP_SECRET,
            "WECHAT_ACCOUNT_ID": ACCOUNT,
            "WECHAT_AES_KEY": AES_KEY,
            "WECHAT_API_BASE": api_base,
            # WeChat's own 5-second window is a real-time budget: a busy test machine must not
            # turn passive replies into customer-service messages. Tests of what happens past
            # the deadline set it back to the production 4 s (and make the step take longer).
            "WECHAT_REPLY_DEADLINE_SECONDS": "20",
        }
    )
    env.update(extra)
    return env


async def migrate(env: dict[str, str]) -> None:
    """``cardbot db upgrade`` (a shared PostgreSQL database is migrated by the operator)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "db",
        "upgrade",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()


class BotProcess:
    """``cardbot run wechat --port N`` (with other channels too, if asked) in a child
    process."""

    def __init__(
        self, env: dict[str, str], log_path: Path, channels: tuple[str, ...] = ("wechat",)
    ) -> None:
        self.env = env
        self.channels = channels
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/wechat"
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, session: aiohttp.ClientSession, seconds: float = 120.0) -> None:
        self._log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.cli",
            "run",
            *self.channels,
            "--port",
            str(self.port),
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + seconds
        timestamp, nonce = str(int(time.time())), "ready"
        query = {
            "signature": sha1_signature(TOKEN, timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
            "echostr": "ping",
        }
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise AssertionError(f"cardbot exited {self.process.returncode}: {self.log()}")
            try:
                async with session.get(self.url, params=query) as response:
                    if response.status == 200 and await response.text() == "ping":
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"cardbot did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    async def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._log.close()
        return self.process.returncode or 0


def json_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
