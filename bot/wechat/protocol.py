"""WeChat's push protocol, without I/O: signatures, AES (safe/compatible mode), the pushed XML,
passive-reply XML, and how cardbot's replies become WeChat text messages.

wechatpy does the crypto (``PrpCrypto``: AES-256-CBC, PKCS#7 with 32-byte blocks, random |
length | xml | appid), the XML parsing (``parse_message``) and the reply XML (``TextReply``,
``WeChatCrypto.encrypt_message``). Signatures are computed with wechatpy's ``WeChatSigner``
but compared in constant time (wechatpy compares with ``!=``). An encrypted push is checked
with ``msg_signature`` — sha1 over token, timestamp, nonce and the ciphertext — not with
``signature`` (wechatpy issue #739), and is opened with the current EncodingAESKey, then the
previous one, so a key change in the WeChat console loses no message.

What a request must show before anything acts on it (issue 12, item 1): a valid signature over
a timestamp within :data:`REPLAY_WINDOW` of now (the clock is passed in); in safe *and*
compatible mode ``encrypt_type=aes`` with a valid ``msg_signature``, and then only the decrypted
XML is read (compatible mode's plaintext copy is ignored); a ``ToUserName`` that is this
account's original id (``WECHAT_ACCOUNT_ID``); and ids of bounded size (a MsgId is a 64-bit
integer, CreateTime Unix seconds), so that nothing a peer sends can overflow a column. Whether
the (timestamp, nonce) pair was used before is the service's question (``bot/wechat/replay.py``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import xmltodict
from wechatpy import parse_message
from wechatpy.crypto import PrpCrypto, WeChatCrypto
from wechatpy.events import (
    ClickEvent,
    SubscribeEvent,
    SubscribeScanEvent,
    UnsubscribeEvent,
)
from wechatpy.messages import ImageMessage, TextMessage, UnknownMessage, VoiceMessage
from wechatpy.replies import TextReply
from wechatpy.utils import WeChatSigner

from core.messages import Reply

Mode = Literal["plaintext", "compatible", "safe"]

# WeChat does not document the longest text; ~2048 bytes has been measured. Stay under it.
MAX_TEXT_BYTES = 2000
MAX_FIELD_CHARS = 64  # openids are 28 characters, original ids 15: longer is not from WeChat
MAX_KEY_CHARS = 128  # a menu button's key: at most 128 bytes (WeChat's custom-menu API)
MAX_MEDIA_CHARS = 256  # MediaId (64 characters), kept short of any column
MAX_URL_CHARS = 2048
MAX_MSG_ID = 2**64 - 1  # MsgId is a 64-bit integer
MAX_CREATE_TIME = 10**10 - 1  # Unix seconds (10 digits until the year 2286)
MAX_NONCE_CHARS = 64  # WeChat's nonces are about ten digits
MAX_TIMESTAMP_DIGITS = 12
REPLAY_WINDOW = timedelta(seconds=300)  # a timestamp further than this from now is refused


class PushRejected(Exception):
    """A push that is not acted on; ``status`` is the HTTP answer (403: not from WeChat)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def signature(*parts: str) -> str:
    """WeChat's signature: sha1 of the parts sorted and concatenated (wechatpy's signer)."""
    signer = WeChatSigner()
    signer.add_data(*parts)
    return str(signer.signature)


def _same(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


@dataclass(frozen=True)
class Stamp:
    """The signed (timestamp, nonce) of a request from WeChat."""

    timestamp: int
    nonce: str


@dataclass(frozen=True)
class Opened:
    """A push whose signature, time and (when encrypted) ciphertext checked out."""

    xml: str  # what the push says: the decrypted XML when it came encrypted
    encrypted: bool
    stamp: Stamp

    @property
    def binding(self) -> str:
        """What the stamp signed, for the replay store: the XML acted on (see replay.py)."""
        return "push:" + hashlib.sha256(self.xml.encode("utf-8")).hexdigest()


def handshake_binding(echostr: str) -> str:
    """What a handshake's stamp signed, for the replay store."""
    return "handshake:" + hashlib.sha256(echostr.encode("utf-8")).hexdigest()


def aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key behind a 43-character EncodingAESKey; ValueError if it is not one."""
    if len(encoding_aes_key) != 43:
        raise ValueError("an EncodingAESKey has 43 characters")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except binascii.Error as exc:
        raise ValueError("an EncodingAESKey is base64 (letters and digits)") from exc
    if len(key) != 32:
        raise ValueError("an EncodingAESKey decodes to 32 bytes")
    return key


class PushSecurity:
    """Checks and opens pushes, seals passive replies, for one official account."""

    def __init__(
        self,
        token: str,
        app_id: str,
        mode: Mode,
        aes_keys: Sequence[str] = (),
        *,
        account_id: str,
        window: timedelta = REPLAY_WINDOW,
    ) -> None:
        if mode != "plaintext" and not aes_keys:
            raise ValueError(f"{mode} mode needs an EncodingAESKey")
        self.token = token
        self.app_id = app_id
        self.account_id = account_id
        self.mode = mode
        self.window = window
        self._keys = [aes_key(k) for k in aes_keys]
        self._sealer = (
            WeChatCrypto(token, aes_keys[0], app_id) if aes_keys and mode != "plaintext" else None
        )

    def handshake(self, query: Mapping[str, str], now: datetime) -> tuple[str, Stamp]:
        """The echostr to return when WeChat verifies the server URL (plain ``signature``),
        and the stamp that signed it."""
        stamp = self._check_signature(query, now)
        return query.get("echostr", ""), stamp

    def _check_signature(self, query: Mapping[str, str], now: datetime) -> Stamp:
        timestamp, nonce = query.get("timestamp", ""), query.get("nonce", "")
        if not _same(signature(self.token, timestamp, nonce), query.get("signature")):
            raise PushRejected(403, "bad signature")
        if not _digits(timestamp, MAX_TIMESTAMP_DIGITS):
            raise PushRejected(403, "bad timestamp")
        if not 0 < len(nonce) <= MAX_NONCE_CHARS:
            raise PushRejected(403, "bad nonce")
        stamp = Stamp(int(timestamp), nonce)
        if abs(now.timestamp() - stamp.timestamp) > self.window.total_seconds():
            raise PushRejected(403, "timestamp outside the replay window")
        return stamp

    def expires_at(self, stamp: Stamp) -> datetime:
        """When ``stamp``'s timestamp leaves the window (until then it must be remembered)."""
        return datetime.fromtimestamp(stamp.timestamp, UTC) + self.window

    def check_recipient(self, push: Push) -> None:
        """PushRejected(403) unless the push is addressed to this account (ToUserName)."""
        if not _same(self.account_id, push.account):
            raise PushRejected(403, "push for another account (ToUserName)")

    def open(self, query: Mapping[str, str], body: bytes, now: datetime) -> Opened:
        """The push as signed, timed and (in safe and compatible mode) decrypted;
        PushRejected otherwise."""
        stamp = self._check_signature(query, now)
        encrypted = query.get("encrypt_type", "raw").lower() == "aes"
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PushRejected(400, "body is not UTF-8") from exc
        if not encrypted:
            if self.mode != "plaintext":
                # Compatible mode's pushes carry a plaintext copy beside the ciphertext, but
                # only the ciphertext is signed (msg_signature): without it, nothing is.
                raise PushRejected(400, f"unencrypted push in {self.mode} mode")
            return Opened(text, False, stamp)
        if self.mode == "plaintext":
            raise PushRejected(400, "encrypted push but no EncodingAESKey is configured")
        outer = _xml_fields(text)
        ciphertext = outer.get("Encrypt")
        if not isinstance(ciphertext, str) or not ciphertext:
            raise PushRejected(400, "encrypted push without Encrypt")
        expected = signature(
            self.token, query.get("timestamp", ""), query.get("nonce", ""), ciphertext
        )
        if not _same(expected, query.get("msg_signature")):
            raise PushRejected(403, "bad msg_signature")
        for key in self._keys:  # the current key first, then the previous one
            try:
                return Opened(str(PrpCrypto(key).decrypt(ciphertext, self.app_id)), True, stamp)
            except Exception:  # wrong key, bad padding, other app id: try the next key
                continue
        raise PushRejected(400, "cannot decrypt the push with any configured EncodingAESKey")

    def seal(self, reply_xml: str, encrypted: bool, nonce: str, timestamp: str) -> str:
        """The passive reply as sent: encrypted (current key) when the push was."""
        if not encrypted or self._sealer is None:
            return reply_xml
        return str(self._sealer.encrypt_message(reply_xml, nonce, timestamp))


def _xml_fields(text: str) -> dict[str, Any]:
    try:
        parsed = xmltodict.parse(text, disable_entities=True)
    except Exception as exc:  # expat errors, entity declarations
        raise PushRejected(400, "malformed XML") from exc
    root = parsed.get("xml") if isinstance(parsed, dict) else None
    if not isinstance(root, dict):
        raise PushRejected(400, "not a WeChat push (no <xml> element)")
    return root


PushKind = Literal[
    "text", "image", "subscribe", "unsubscribe", "click", "unsupported", "ignored", "unknown"
]


@dataclass(frozen=True)
class Push:
    """One message or event pushed by WeChat, as cardbot needs it."""

    kind: PushKind
    openid: str
    account: str  # ToUserName: the official account's original id
    create_time: int
    msg_id: str | None = None
    text: str | None = None
    media_id: str | None = None
    pic_url: str | None = None
    event_key: str | None = None

    @property
    def dedupe_id(self) -> str:
        """WeChat's dedupe key: MsgId, or FromUserName + CreateTime for events (with the event,
        so that a follow and an unfollow within one second stay two events)."""
        return self.msg_id or f"{self.openid}:{self.create_time}:{self.kind}"

    @property
    def opens_message_window(self) -> bool:
        """Whether this is the user sending a message (a 48 h customer-service window)."""
        return self.kind in ("text", "image", "unsupported")


def parse_push(xml: str) -> Push:
    """The push in ``xml``; PushRejected(400) when it is not a well-formed WeChat push."""
    root = _xml_fields(xml)
    if not isinstance(root.get("MsgType"), str):
        raise PushRejected(400, "push without MsgType")
    raw_time = root.get("CreateTime")
    if not _digits(raw_time, 10):
        raise PushRejected(400, "push without a plausible CreateTime")
    try:
        message = parse_message(xml)
        openid, account = message.source, message.target
        create_time = int(str(raw_time))
    except Exception as exc:
        raise PushRejected(400, "malformed push") from exc
    if not _plausible(openid) or not _plausible(account) or not 0 < create_time <= MAX_CREATE_TIME:
        raise PushRejected(400, "push without a sender, recipient or time")
    base: dict[str, Any] = {"openid": openid, "account": account, "create_time": create_time}
    msg_id = root.get("MsgId")
    if msg_id is not None and not (_digits(msg_id, 20) and int(msg_id) <= MAX_MSG_ID):
        raise PushRejected(400, "malformed MsgId")
    for name, limit in (
        ("MediaId", MAX_MEDIA_CHARS),
        ("PicUrl", MAX_URL_CHARS),
        ("EventKey", MAX_KEY_CHARS),
    ):
        value = root.get(name)
        if value is not None and not (isinstance(value, str) and len(value) <= limit):
            raise PushRejected(400, f"malformed {name}")
    if isinstance(message, UnknownMessage):
        return Push("unknown", **base, msg_id=msg_id)
    if isinstance(message, TextMessage):
        return Push("text", **base, msg_id=msg_id, text=message.content or "")
    if isinstance(message, ImageMessage):
        return Push(
            "image", **base, msg_id=msg_id, media_id=message.media_id, pic_url=message.image
        )
    if isinstance(message, VoiceMessage) and message.recognition:
        # Speech recognised by WeChat reads as what the person said.
        return Push("text", **base, msg_id=msg_id, text=message.recognition)
    if message.type != "event":
        return Push("unsupported", **base, msg_id=msg_id)
    if isinstance(message, SubscribeEvent | SubscribeScanEvent):
        return Push("subscribe", **base)
    if isinstance(message, UnsubscribeEvent):
        return Push("unsubscribe", **base)
    if isinstance(message, ClickEvent):
        return Push("click", **base, event_key=str(message.key or ""))
    return Push("ignored", **base)


def _digits(value: object, most: int) -> bool:
    """A string of 1 to ``most`` ASCII digits (``str.isdigit`` also takes ``²`` and ``١``)."""
    return (
        isinstance(value, str) and 0 < len(value) <= most and value.isascii() and value.isdigit()
    )


def _plausible(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_FIELD_CHARS


def text_reply_xml(push: Push, text: str, now: float | None = None) -> str:
    """A passive text reply to ``push`` (From/To swapped)."""
    reply = TextReply(
        source=push.account, target=push.openid, content=text, time=int(now or time.time())
    )
    return str(reply.render())


# --------------------------------------------------------------------------------------------
# cardbot replies → WeChat texts


def render_reply(reply: Reply) -> str:
    """A reply as WeChat text: the message, then its options numbered (answered by digit)."""
    lines = [reply.text]
    lines += [f"{n}. {option.label}" for n, option in enumerate(reply.options, start=1)]
    return "\n".join(lines)


def render_texts(replies: Sequence[Reply], before: Sequence[str] = ()) -> list[str]:
    """Everything to say, as few WeChat texts as possible: ``before`` (kept from earlier) and
    the replies, joined by blank lines, split where a text would be too long."""
    parts = [*before, *(render_reply(r) for r in replies)]
    return split_text("\n\n".join(p for p in parts if p)) if parts else []


def split_text(text: str, limit: int = MAX_TEXT_BYTES) -> list[str]:
    """Split into texts of at most ``limit`` UTF-8 bytes, at line breaks where possible."""
    if len(text.encode("utf-8")) <= limit:
        return [text] if text.strip() else []
    chunks: list[str] = []
    current = ""
    for line in text.split("\n"):
        candidate = f"{current}\n{line}" if current else line
        if len(candidate.encode("utf-8")) <= limit:
            current = candidate
            continue
        if current:
            chunks.append(current)
        current = ""
        while len(line.encode("utf-8")) > limit:  # one line longer than a whole message
            head = _prefix_within(line, limit)
            chunks.append(head)
            line = line[len(head) :]
        current = line
    if current.strip():
        chunks.append(current)
    return [chunk for chunk in chunks if chunk.strip()]


def _prefix_within(line: str, limit: int) -> str:
    size = 0
    for index, char in enumerate(line):
        size += len(char.encode("utf-8"))
        if size > limit:
            return line[:index]
    return line
