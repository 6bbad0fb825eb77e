"""The WeChat API client against the WeChat-API test server: one stable access token shared by
every process through the database (SQLite, PostgreSQL) or Redis, stored encrypted, refreshed
when WeChat rejects it; errors mapped to what the outbox needs."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import aiohttp
import pytest

from bot.wechat.api import (
    DatabaseTokenStore,
    RedisTokenStore,
    TokenStore,
    WeChatApi,
    WeChatApiError,
    WeChatUnavailable,
)
from storage.crypto import AesGcmVault
from storage.db import SqlAlchemyUnitOfWorkFactory
from tests.fakes import FakeClock
from tests.wechat_peer import APP_SECRET, WeChatApiPeer

REDIS_URL = os.environ.get("CARDBOT_TEST_REDIS_URL")
VAULT = AesGcmVault([secrets.token_bytes(32)])


@pytest.fixture
async def peer() -> AsyncIterator[WeChatApiPeer]:
    server = WeChatApiPeer(app_id=f"wx-test-{uuid.uuid4().hex[:12]}")
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


StoreFactory = Callable[[], TokenStore]


@pytest.fixture(
    params=[
        "database",
        pytest.param(
            "redis",
            marks=pytest.mark.skipif(not REDIS_URL, reason="CARDBOT_TEST_REDIS_URL not set"),
        ),
    ]
)
async def stores(
    request: pytest.FixtureRequest,
    peer: WeChatApiPeer,
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> AsyncIterator[tuple[StoreFactory, FakeClock]]:
    """Token stores as separate processes would each open them, over one shared backend
    (the database one on each database; Redis once)."""
    clock = FakeClock()
    opened: list[TokenStore] = []
    if request.param == "database":

        def make() -> TokenStore:
            store = DatabaseTokenStore(uow_factory, VAULT, peer.app_id)
            opened.append(store)
            return store
    else:
        assert REDIS_URL is not None
        if uow_factory.engine.dialect.name != "sqlite":
            pytest.skip("the Redis store does not depend on the database")

        def make() -> TokenStore:
            store = RedisTokenStore(REDIS_URL, VAULT, peer.app_id, clock)
            opened.append(store)
            return store

    yield make, clock
    if request.param == "redis":
        cleanup = RedisTokenStore(REDIS_URL or "", VAULT, peer.app_id, clock)
        await cleanup._redis.delete(cleanup.key)
        await cleanup.aclose()
    for store in opened:
        await store.aclose()


def client(
    session: aiohttp.ClientSession, peer: WeChatApiPeer, store: TokenStore, clock: FakeClock
) -> WeChatApi:
    return WeChatApi(session, peer.base, peer.app_id, APP_SECRET, store, clock, timeout=5)


async def test_two_processes_share_one_token_fetched_once(
    stores: tuple[StoreFactory, FakeClock], peer: WeChatApiPeer, session: aiohttp.ClientSession
) -> None:
    make, clock = stores
    first, second = client(session, peer, make(), clock), client(session, peer, make(), clock)
    await first.send_text("o1", "你好")
    await second.send_text("o2", "hello")
    assert len(peer.sent("stable_token")) == 1
    assert {c.query["access_token"] for c in peer.sent("message/custom/send")} == {peer.token}
    assert peer.sent("stable_token")[0].body == {
        "grant_type": "client_credential",
        "appid": peer.app_id,
        "secret": APP_SECRET,
        "force_refresh": False,
    }


async def test_a_token_about_to_expire_is_refreshed_early(
    stores: tuple[StoreFactory, FakeClock], peer: WeChatApiPeer, session: aiohttp.ClientSession
) -> None:
    make, clock = stores
    api = client(session, peer, make(), clock)
    await api.send_text("o1", "a")
    clock.advance(seconds=7200 - 200)  # within five minutes of expiry
    await api.send_text("o1", "b")
    assert len(peer.sent("stable_token")) == 2


async def test_a_rejected_token_is_replaced_and_the_call_retried_once(
    stores: tuple[StoreFactory, FakeClock], peer: WeChatApiPeer, session: aiohttp.ClientSession
) -> None:
    make, clock = stores
    first, second = client(session, peer, make(), clock), client(session, peer, make(), clock)
    await first.send_text("o1", "a")
    peer.expire_token()
    await first.send_text("o1", "b")
    await second.send_text("o1", "c")  # finds the new token in the shared store
    assert len(peer.tokens_issued) == 2
    assert peer.custom_texts() == ["a", "b", "c"]


async def test_a_token_sealed_under_a_key_since_removed_is_fetched_again(
    uow_factory: SqlAlchemyUnitOfWorkFactory, peer: WeChatApiPeer, session: aiohttp.ClientSession
) -> None:
    """After `cardbot keys prune` the cached token no longer opens: it is only a cache, so the
    bot fetches a fresh one instead of failing every call until it expires."""
    clock = FakeClock()
    before = client(session, peer, DatabaseTokenStore(uow_factory, VAULT, peer.app_id), clock)
    await before.send_text("o1", "你好")
    rotated = AesGcmVault([secrets.token_bytes(32)])
    after = client(session, peer, DatabaseTokenStore(uow_factory, rotated, peer.app_id), clock)
    await after.send_text("o1", "hello")
    assert len(peer.sent("stable_token")) == 2
    assert len(peer.sent("message/custom/send")) == 2


async def test_the_stored_token_is_encrypted(
    uow_factory: SqlAlchemyUnitOfWorkFactory, peer: WeChatApiPeer, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    api = client(session, peer, DatabaseTokenStore(uow_factory, VAULT, peer.app_id), clock)
    token = await api.access_token()
    async with uow_factory() as uow:
        stored = await uow.wechat_tokens.get(peer.app_id)
    assert stored is not None and token.encode() not in stored.token_enc
    expires_in = stored.expires_at - clock.now()
    assert timedelta(seconds=7190) <= expires_in <= timedelta(seconds=7200)


async def test_wechat_errors_and_outages_are_told_apart(
    uow_factory: SqlAlchemyUnitOfWorkFactory, peer: WeChatApiPeer, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    api = client(session, peer, DatabaseTokenStore(uow_factory, VAULT, peer.app_id), clock)
    peer.custom_errors = [45047, -1]
    with pytest.raises(WeChatApiError) as refused:
        await api.send_text("o1", "a")
    assert refused.value.errcode == 45047
    with pytest.raises(WeChatUnavailable):  # -1: system busy, try later
        await api.send_text("o1", "a")
    with pytest.raises(WeChatApiError) as missing:
        await api.download_media("no-such-media")
    assert missing.value.errcode == 40007
    peer.media["m1"] = b"\xff\xd8jpeg"
    assert await api.download_media("m1") == b"\xff\xd8jpeg"
    with pytest.raises(WeChatUnavailable):
        await api.download_url(f"{peer.base}/pic/absent.jpg")
    with pytest.raises(WeChatUnavailable):
        await api.download_url("file:///etc/passwd")
    gone = WeChatApi(session, "http://127.0.0.1:9", "wx", "s", api._store, clock, timeout=2)
    with pytest.raises(WeChatUnavailable):
        await gone.send_text("o1", "a")
