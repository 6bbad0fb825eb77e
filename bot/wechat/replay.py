"""The replay window of WeChat's signed requests: a (timestamp, nonce) pair is accepted once —
for one thing.

Why a window and a memory. WeChat signs a push with sha1(token, timestamp, nonce) in the query
string; in plaintext mode nothing else is signed, and the query string of every push sits in
every reverse proxy's access log. So :class:`~bot.wechat.protocol.PushSecurity` refuses a
timestamp more than five minutes from now, and this module remembers each pair seen within
those five minutes, so that a captured query string cannot sign a second, forged body.

What a pair is bound to. WeChat's own retries of a push it got no answer to (5 s later, up to
three tries) carry the same timestamp and nonce, and the same message: refusing a repeated pair
outright would turn each retry into a 403 and lose the answer that the retry was meant to
collect (``PushService`` hands a retry the answer of the handling already under way). So a pair
is remembered *with what it signed* — the SHA-256 of the push's XML as it was acted on (after
decryption in safe and compatible mode; a retry WeChat re-encrypts still decrypts to the same
XML), or of the handshake's echostr — and it is accepted again only for that same content.

- Not the raw body: the ciphertext of a re-encrypted retry would differ from the first try.
- Not the MsgId alone: in plaintext mode the body is not signed, so a forged body can carry
  the MsgId of the genuine push (the MsgId is not secret: roughly sequential) and take over
  the wait for its answer; the whole XML cannot be forged without knowing it, and the exact
  XML again is harmless — the inbox dedupes it (at most once) and the retry logic answers it
  exactly once.
- A handshake's pair is bound to its echostr, so a handshake URL from an access log cannot
  sign a push either.

A pair is forgotten once its timestamp has left the window (``expires_at``); the window check
refuses it from then on. Pairs are kept in the database (table ``wechat_push_stamps``, pruned
now and then) or, when ``CARDBOT_REDIS_URL`` is set, in Redis (keys that expire by themselves),
so every process serving the account shares one memory.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Protocol

from bot.wechat.protocol import Stamp
from core.ports import Clock, WeChatUnitOfWorkFactory

log = logging.getLogger(__name__)

PRUNE_EVERY = timedelta(minutes=1)


class ReplayStore(Protocol):
    """Where every process serving the account remembers the pairs seen in the window."""

    async def admit(self, stamp: Stamp, binding: str, expires_at: datetime) -> bool:
        """True if ``stamp`` is new or signed ``binding`` before; False for a replay."""
        ...

    async def aclose(self) -> None: ...


class DatabaseReplayStore:
    """Pairs in the ``wechat_push_stamps`` table; expired ones pruned at most once a minute
    per process, in the transaction of an admission."""

    def __init__(
        self,
        uow_factory: WeChatUnitOfWorkFactory,
        clock: Clock,
        prune_every: timedelta = PRUNE_EVERY,
    ) -> None:
        self._uow_factory = uow_factory
        self._clock = clock
        self._prune_every = prune_every
        self._next_prune: datetime | None = None

    async def admit(self, stamp: Stamp, binding: str, expires_at: datetime) -> bool:
        now = self._clock.now()
        async with self._uow_factory() as uow:
            if self._next_prune is None or now >= self._next_prune:
                pruned = await uow.wechat_push_stamps.prune(now)
                if pruned:
                    log.debug("forgot %d expired WeChat push stamps", pruned)
                self._next_prune = now + self._prune_every
            admitted = await uow.wechat_push_stamps.admit(
                stamp.timestamp, stamp.nonce, binding, expires_at
            )
            await uow.commit()
        return admitted

    async def aclose(self) -> None:
        return None


class RedisReplayStore:
    """Pairs in Redis as ``cardbot:wechat:<appid>:stamp:<timestamp>:<nonce>`` → binding,
    set only if absent (``SET NX``) and expiring when the timestamp leaves the window."""

    def __init__(self, url: str, app_id: str, clock: Clock) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url)
        self._clock = clock
        self.prefix = f"cardbot:wechat:{app_id}:stamp:"

    def key(self, stamp: Stamp) -> str:
        return f"{self.prefix}{stamp.timestamp}:{stamp.nonce}"

    async def admit(self, stamp: Stamp, binding: str, expires_at: datetime) -> bool:
        key = self.key(stamp)
        ttl = max(1, int((expires_at - self._clock.now()).total_seconds()) + 1)
        for _ in range(2):  # the key can expire between the failed SET and the GET
            if await self._redis.set(key, binding, nx=True, ex=ttl):
                return True
            bound = await self._redis.get(key)
            if bound is not None:
                return bool(bound.decode() == binding)
        return False

    async def aclose(self) -> None:
        await self._redis.aclose()


__all__ = ["DatabaseReplayStore", "RedisReplayStore", "ReplayStore"]
