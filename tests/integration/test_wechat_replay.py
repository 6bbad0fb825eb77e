"""The replay store's contract, for every adapter: the database one on SQLite and PostgreSQL,
the Redis one when ``CARDBOT_TEST_REDIS_URL`` is set. Stores built over one backend stand for
separate processes sharing it."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from bot.wechat.protocol import Stamp
from bot.wechat.replay import DatabaseReplayStore, RedisReplayStore, ReplayStore
from storage.db import SqlAlchemyUnitOfWorkFactory
from storage.tables import WeChatPushStampRow
from tests.fakes import FakeClock

REDIS_URL = os.environ.get("CARDBOT_TEST_REDIS_URL")
WINDOW = timedelta(seconds=300)


class Backend:
    def __init__(self, kind: str, make: Callable[[], ReplayStore], clock: FakeClock) -> None:
        self.kind = kind
        self.make = make
        self.clock = clock

    def stamp(self, nonce: str = "", seconds_ago: float = 0) -> Stamp:
        timestamp = int(self.clock.now().timestamp() - seconds_ago)
        return Stamp(timestamp, nonce or uuid.uuid4().hex[:10])

    def expiry(self, stamp: Stamp) -> datetime:
        return datetime.fromtimestamp(stamp.timestamp, UTC) + WINDOW


@pytest.fixture(
    params=[
        "database",
        pytest.param(
            "redis",
            marks=pytest.mark.skipif(not REDIS_URL, reason="CARDBOT_TEST_REDIS_URL not set"),
        ),
    ]
)
async def backend(
    request: pytest.FixtureRequest, uow_factory: SqlAlchemyUnitOfWorkFactory
) -> AsyncIterator[Backend]:
    clock = FakeClock()
    opened: list[ReplayStore] = []
    app_id = f"wx-replay-{uuid.uuid4().hex[:12]}"
    if request.param == "redis" and uow_factory.engine.dialect.name != "sqlite":
        pytest.skip("the Redis store does not depend on the database")

    def make() -> ReplayStore:
        store: ReplayStore
        if request.param == "database":
            store = DatabaseReplayStore(uow_factory, clock)
        else:
            assert REDIS_URL is not None
            store = RedisReplayStore(REDIS_URL, app_id, clock)
        opened.append(store)
        return store

    yield Backend(request.param, make, clock)
    for store in opened:
        if isinstance(store, RedisReplayStore):
            keys = [k async for k in store._redis.scan_iter(match=f"{store.prefix}*")]
            if keys:
                await store._redis.delete(*keys)
        await store.aclose()


async def admit(store: ReplayStore, backend: Backend, stamp: Stamp, binding: str) -> bool:
    return await store.admit(stamp, binding, backend.expiry(stamp))


async def test_a_pair_is_accepted_again_only_for_what_it_signed_first(backend: Backend) -> None:
    one, other = backend.make(), backend.make()  # two processes
    stamp = backend.stamp()
    assert await admit(one, backend, stamp, "push:aaa")
    assert await admit(other, backend, stamp, "push:aaa")  # WeChat's retry, to either process
    assert not await admit(other, backend, stamp, "push:bbb")  # anything else: a replay
    assert not await admit(one, backend, stamp, "handshake:aaa")
    assert await admit(one, backend, backend.stamp(stamp.nonce, seconds_ago=1), "push:bbb")


async def test_two_bodies_racing_under_one_pair_admit_exactly_one(backend: Backend) -> None:
    stores = [backend.make() for _ in range(4)]
    stamp = backend.stamp()
    results = await asyncio.gather(
        *(admit(store, backend, stamp, f"push:{n}") for n, store in enumerate(stores))
    )
    assert sorted(results) == [False, False, False, True]


async def test_expired_pairs_are_forgotten(
    backend: Backend, uow_factory: SqlAlchemyUnitOfWorkFactory
) -> None:
    store = backend.make()
    old = backend.stamp()
    assert await admit(store, backend, old, "push:old")
    backend.clock.advance(seconds=WINDOW.total_seconds() + 61)
    assert await admit(store, backend, backend.stamp(), "push:new")
    if isinstance(store, RedisReplayStore):
        ttl = await store._redis.ttl(store.key(old))
        assert 0 < ttl <= WINDOW.total_seconds() + 1  # Redis forgets it by itself
        return
    async with uow_factory.engine.connect() as connection:
        left = await connection.scalar(
            select(func.count())
            .select_from(WeChatPushStampRow)
            .where(WeChatPushStampRow.timestamp == old.timestamp)
        )
        total = await connection.scalar(select(func.count()).select_from(WeChatPushStampRow))
    assert (left, total) == (0, 1)
