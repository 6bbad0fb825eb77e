"""The few WeChat API calls cardbot makes, over aiohttp, and the shared access token.

Why not wechatpy's ``WeChatClient``: it is blocking (requests), its ``fetch_access_token``
hard-codes ``https://api.weixin.qq.com`` (``WECHAT_API_BASE`` could not reach it), it has no
stable-token call, and in 1.8.18 it keeps the token's expiry per instance, so several processes
overwrite each other's tokens (wechatpy #684). cardbot needs four endpoints — ``stable_token``,
``message/custom/send``, ``message/template/send``, ``media/get`` — so they are called here with
aiohttp directly: no thread pool, one timeout for every call, every URL under
``WECHAT_API_BASE``. (wechatpy still does the push crypto, parsing and reply XML.)

Access token: from the stable-token API (``POST /cgi-bin/stable_token``, ``force_refresh``
false), which returns the *same* token to every caller while it is valid — so two processes
that fetch at once get one token and never invalidate each other's. It is cached in memory and
in a store every process shares (Redis when ``CARDBOT_REDIS_URL`` is set, else the database),
encrypted with the data key like other credentials at rest, and refreshed five minutes before it
expires. When WeChat answers 40001/40014/42001 (invalid or expired token) the token is dropped
from the store (only if it is still the one that failed) and the call is retried once with a
fresh one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta
from typing import Any, Protocol

import aiohttp

from core.errors import DecryptionError
from core.ports import CachedAccessToken, Clock, Vault, WeChatUnitOfWorkFactory

log = logging.getLogger(__name__)

TOKEN_ERRORS = frozenset({40001, 40014, 42001})
REFRESH_MARGIN = timedelta(minutes=5)
MAX_MEDIA_BYTES = 20 * 1024 * 1024


class WeChatApiError(Exception):
    """WeChat answered with a non-zero ``errcode``."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"{errcode} {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


class WeChatUnavailable(Exception):
    """No usable answer: connection failed, timed out, 5xx, or not JSON."""


class TokenStore(Protocol):
    """Where every process finds the account's current access token."""

    async def load(self) -> tuple[str, datetime] | None: ...

    async def save(self, token: str, expires_at: datetime, fetched_at: datetime) -> None: ...

    async def discard(self, token: str) -> None:
        """Forget the stored token if it is still ``token``."""
        ...

    async def aclose(self) -> None: ...


def _token_context(app_id: str) -> str:
    return f"wechat.access_token:{app_id}"


def _open_token(vault: Vault, blob: bytes, app_id: str) -> str | None:
    """The cached token, or None when it no longer opens (sealed under a data key since
    removed by `cardbot keys prune`): it is only a cache, so a fresh one is fetched."""
    try:
        return vault.decrypt(blob, _token_context(app_id))
    except DecryptionError:
        log.info("the cached WeChat access token does not open with the current keys; refetching")
        return None


class DatabaseTokenStore:
    """The token in the ``wechat_access_tokens`` table, encrypted with the data key."""

    def __init__(self, uow_factory: WeChatUnitOfWorkFactory, vault: Vault, app_id: str) -> None:
        self._uow_factory = uow_factory
        self._vault = vault
        self._app_id = app_id

    async def load(self) -> tuple[str, datetime] | None:
        async with self._uow_factory() as uow:
            cached = await uow.wechat_tokens.get(self._app_id)
        if cached is None:
            return None
        token = _open_token(self._vault, cached.token_enc, self._app_id)
        return None if token is None else (token, cached.expires_at)

    async def save(self, token: str, expires_at: datetime, fetched_at: datetime) -> None:
        enc = self._vault.encrypt(token, _token_context(self._app_id))
        async with self._uow_factory() as uow:
            await uow.wechat_tokens.put(
                CachedAccessToken(self._app_id, enc, expires_at, fetched_at)
            )
            await uow.commit()

    async def discard(self, token: str) -> None:
        async with self._uow_factory() as uow:
            cached = await uow.wechat_tokens.get(self._app_id)
            if cached is None:
                return
            stored = _open_token(self._vault, cached.token_enc, self._app_id)
            if stored in (token, None):
                await uow.wechat_tokens.discard(self._app_id)
                await uow.commit()

    async def aclose(self) -> None:
        return None


class RedisTokenStore:
    """The token in Redis (``cardbot:wechat:<appid>:access_token``), encrypted, expiring with
    the token itself."""

    def __init__(self, url: str, vault: Vault, app_id: str, clock: Clock) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url)
        self._vault = vault
        self._app_id = app_id
        self._clock = clock
        self.key = f"cardbot:wechat:{app_id}:access_token"

    async def load(self) -> tuple[str, datetime] | None:
        raw = await self._redis.get(self.key)
        if raw is None:
            return None
        record = json.loads(raw)
        token = _open_token(self._vault, bytes.fromhex(record["enc"]), self._app_id)
        return None if token is None else (token, datetime.fromisoformat(record["expires_at"]))

    async def save(self, token: str, expires_at: datetime, fetched_at: datetime) -> None:
        enc = self._vault.encrypt(token, _token_context(self._app_id))
        record = {
            "enc": enc.hex(),
            "expires_at": expires_at.isoformat(),
            "fetched_at": fetched_at.isoformat(),
        }
        ttl = max(1, int((expires_at - self._clock.now()).total_seconds()))
        await self._redis.set(self.key, json.dumps(record), ex=ttl)

    async def discard(self, token: str) -> None:
        loaded = await self.load()
        if loaded is not None and loaded[0] == token:
            await self._redis.delete(self.key)

    async def aclose(self) -> None:
        await self._redis.aclose()


class WeChatApi:
    """``message/custom/send``, ``message/template/send``, ``media/get`` and the token."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base: str,
        app_id: str,
        app_secret: str,
        store: TokenStore,
        clock: Clock,
        timeout: float = 10.0,
    ) -> None:
        self._session = session
        self.base = base.rstrip("/")
        self._app_id = app_id
        self._app_secret = app_secret
        self._store = store
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._memory: tuple[str, datetime] | None = None
        self._fetching = asyncio.Lock()

    # -- the access token --------------------------------------------------------------------

    def _fresh(self, cached: tuple[str, datetime] | None) -> bool:
        return cached is not None and cached[1] - REFRESH_MARGIN > self._clock.now()

    async def access_token(self) -> str:
        """A valid access token: from memory, the shared store, or the stable-token API."""
        if self._memory is not None and self._fresh(self._memory):
            return self._memory[0]
        async with self._fetching:  # one fetch per process at a time
            stored = await self._store.load()
            if stored is not None and self._fresh(stored):
                self._memory = stored
                return stored[0]
            answer = await self._request(
                "POST",
                "stable_token",
                body={
                    "grant_type": "client_credential",
                    "appid": self._app_id,
                    "secret": self._app_secret,
                    "force_refresh": False,
                },
            )
            token = answer.get("access_token")
            if not isinstance(token, str) or not token:
                raise WeChatUnavailable("stable_token answered without an access_token")
            now = self._clock.now()
            expires_at = now + timedelta(seconds=int(answer.get("expires_in", 7200)))
            await self._store.save(token, expires_at, now)
            self._memory = (token, expires_at)
            log.info("fetched a WeChat access token valid until %s", expires_at.isoformat())
            return token

    async def _invalidate(self, token: str) -> None:
        if self._memory is not None and self._memory[0] == token:
            self._memory = None
        await self._store.discard(token)

    # -- calls -------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        url = f"{self.base}/cgi-bin/{path}"
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8"} if data else None
        try:
            async with self._session.request(
                method, url, params=params, data=data, headers=headers, timeout=self._timeout
            ) as response:
                if response.status >= 500:
                    raise WeChatUnavailable(f"{path}: HTTP {response.status}")
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WeChatUnavailable(f"{path}: {type(exc).__name__}") from exc
        return _json_answer(path, raw)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        """An authenticated call; a rejected token is replaced and the call retried once."""
        for attempt in (1, 2):
            token = await self.access_token()
            try:
                await self._request(method, path, body=body, params={"access_token": token})
                return
            except WeChatApiError as exc:
                if exc.errcode not in TOKEN_ERRORS or attempt == 2:
                    raise
                log.warning("WeChat rejected the access token (%s); refreshing", exc.errcode)
                await self._invalidate(token)

    async def send_text(self, openid: str, text: str) -> None:
        """A customer-service text message."""
        await self._call(
            "POST",
            "message/custom/send",
            {"touser": openid, "msgtype": "text", "text": {"content": text}},
        )

    async def send_template(self, openid: str, template_id: str, data: dict[str, str]) -> None:
        """A template message; ``data`` maps the template's fields to their texts."""
        await self._call(
            "POST",
            "message/template/send",
            {
                "touser": openid,
                "template_id": template_id,
                "data": {name: {"value": value} for name, value in data.items()},
            },
        )

    async def download_media(self, media_id: str) -> bytes:
        """A user's uploaded file (kept by WeChat for 3 days) by its MediaId."""
        for attempt in (1, 2):
            token = await self.access_token()
            url = f"{self.base}/cgi-bin/media/get"
            try:
                return await self._download(url, {"access_token": token, "media_id": media_id})
            except WeChatApiError as exc:
                if exc.errcode not in TOKEN_ERRORS or attempt == 2:
                    raise
                await self._invalidate(token)
        raise AssertionError("unreachable")

    async def download_url(self, url: str) -> bytes:
        """A picture by the PicUrl of its push (http or https only)."""
        if not url.lower().startswith(("http://", "https://")):
            raise WeChatUnavailable("PicUrl is not an http(s) URL")
        return await self._download(url, None)

    async def _download(self, url: str, params: dict[str, str] | None) -> bytes:
        try:
            async with self._session.get(url, params=params, timeout=self._timeout) as response:
                if response.status != 200:
                    raise WeChatUnavailable(f"download: HTTP {response.status}")
                kind = response.headers.get("Content-Type", "").lower()
                if response.content_length and response.content_length > MAX_MEDIA_BYTES:
                    raise WeChatUnavailable("download: too large")
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_MEDIA_BYTES:
                        raise WeChatUnavailable("download: too large")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WeChatUnavailable(f"download: {type(exc).__name__}") from exc
        if "json" in kind or "text/plain" in kind:
            _json_answer("media/get", bytes(body))  # raises the error WeChat reported
            raise WeChatUnavailable("media/get answered JSON without an error")
        return bytes(body)


def _json_answer(path: str, raw: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(raw)
    except ValueError as exc:
        raise WeChatUnavailable(f"{path}: not JSON") from exc
    if not isinstance(answer, dict):
        raise WeChatUnavailable(f"{path}: not a JSON object")
    errcode = answer.get("errcode", 0)
    if errcode not in (0, None):
        if errcode == -1:  # "system busy": try again later
            raise WeChatUnavailable(f"{path}: -1 {answer.get('errmsg', '')}")
        raise WeChatApiError(int(errcode), str(answer.get("errmsg", "")))
    return answer
