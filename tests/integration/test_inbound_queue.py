"""The inbound queue (storage/inflow.py) and its worker (bot/inflow.py), on SQLite and
PostgreSQL: updates kept sealed, each chat in order, chats side by side, a failure that passes
retried, a crashed process's chats taken over."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from bot.inflow import InboundWorker
from core.ports import QueuedUpdate, TakenUpdate
from storage.crypto import AesGcmVault
from storage.db import SqlAlchemyUnitOfWorkFactory
from storage.inflow import SqlAlchemyInboundQueue
from storage.rekey import census
from tests.fakes import FakeClock

CHANNEL = "telegram"
LEASE = timedelta(seconds=10)


def taken(chat: str, n: int, payload: str | None = None) -> TakenUpdate:
    return TakenUpdate(f"m:{chat}:{n}", chat, payload or f'{{"chat": "{chat}", "n": {n}}}')


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(uow_factory: SqlAlchemyUnitOfWorkFactory) -> SqlAlchemyInboundQueue:
    return SqlAlchemyInboundQueue(uow_factory.engine, AesGcmVault([os.urandom(32)]))


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for what the worker does in the background (a bound, not a measurement)."""

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 - the condition is plain state, no event to wait on
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), within)


class Recorder:
    """A handler that records what it handled; chats listed in ``hold`` wait for ``release``."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, str]] = []
        self.hold: set[str] = set()
        self.release = asyncio.Event()
        self.fail: dict[str, list[BaseException]] = defaultdict(list)

    async def __call__(self, item: QueuedUpdate) -> None:
        if item.chat_key in self.hold:
            await self.release.wait()
        errors = self.fail.get(item.update_key)
        if errors:
            raise errors.pop(0)
        self.handled.append((item.chat_key, item.update_key))

    def of(self, chat: str) -> list[str]:
        return [key for c, key in self.handled if c == chat]


@pytest.fixture
async def running(
    queue: SqlAlchemyInboundQueue, clock: FakeClock
) -> AsyncIterator[Callable[..., Awaitable[tuple[InboundWorker, Recorder]]]]:
    stops: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(
        recorder: Recorder | None = None, **options: object
    ) -> tuple[InboundWorker, Recorder]:
        recorder = recorder or Recorder()
        worker = InboundWorker(
            CHANNEL, queue, recorder, clock, lease=LEASE, idle_poll_seconds=0.01, **options
        )
        stop = asyncio.Event()
        stops.append((stop, asyncio.create_task(worker.serve(stop))))
        return worker, recorder

    yield start
    for stop, _ in stops:
        stop.set()
    await asyncio.gather(*(task for _, task in stops))


async def test_an_update_is_kept_sealed_and_the_same_key_is_queued_once(
    queue: SqlAlchemyInboundQueue, uow_factory: SqlAlchemyUnitOfWorkFactory, clock: FakeClock
) -> None:
    secret = '{"text": "2326081744029136 135790"}'
    assert await queue.put(CHANNEL, [taken("1", 1, secret)], clock.now()) == 1
    assert await queue.put(CHANNEL, [taken("1", 1, secret), taken("1", 2)], clock.now()) == 1
    async with uow_factory.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT payload FROM inbound_queue"))).scalars().all()
    assert len(stored) == 2
    assert all(b"135790" not in bytes(p) and b"2326081744029136" not in bytes(p) for p in stored)
    (head,) = await queue.claim_heads(CHANNEL, "p1", clock.now(), clock.now() + LEASE, 10)
    assert head.payload == secret


async def test_only_the_oldest_update_of_a_chat_can_be_claimed_and_only_by_one_process(
    queue: SqlAlchemyInboundQueue, clock: FakeClock
) -> None:
    await queue.put(CHANNEL, [taken("a", 1), taken("a", 2), taken("b", 1)], clock.now())
    now, until_ = clock.now(), clock.now() + LEASE
    first = await queue.claim_heads(CHANNEL, "p1", now, until_, 10)
    assert sorted(u.update_key for u in first) == ["m:a:1", "m:b:1"]
    assert await queue.claim_heads(CHANNEL, "p2", now, until_, 10) == []
    a1 = next(u for u in first if u.chat_key == "a")
    await queue.done(a1.id, "p1")
    (a2,) = await queue.claim_heads(CHANNEL, "p2", now, until_, 10)
    assert a2.update_key == "m:a:2"


async def test_a_lease_that_runs_out_lets_another_process_take_the_chat_over(
    queue: SqlAlchemyInboundQueue, clock: FakeClock
) -> None:
    await queue.put(CHANNEL, [taken("a", 1)], clock.now())
    (held,) = await queue.claim_heads(CHANNEL, "dead", clock.now(), clock.now() + LEASE, 10)
    clock.advance(seconds=5)
    await queue.renew([held.id], "dead", clock.now() + LEASE)
    clock.advance(seconds=9)
    assert await queue.claim_heads(CHANNEL, "p2", clock.now(), clock.now() + LEASE, 10) == []
    clock.advance(seconds=2)
    (taken_over,) = await queue.claim_heads(CHANNEL, "p2", clock.now(), clock.now() + LEASE, 10)
    assert taken_over.update_key == "m:a:1" and taken_over.attempts == 2


async def test_a_chat_released_for_later_waits_until_then(
    queue: SqlAlchemyInboundQueue, clock: FakeClock
) -> None:
    await queue.put(CHANNEL, [taken("a", 1)], clock.now())
    (held,) = await queue.claim_heads(CHANNEL, "p1", clock.now(), clock.now() + LEASE, 10)
    await queue.retry_later(held.id, "p1", clock.now() + timedelta(seconds=30))
    assert await queue.claim_heads(CHANNEL, "p1", clock.now(), clock.now() + LEASE, 10) == []
    clock.advance(seconds=30)
    assert len(await queue.claim_heads(CHANNEL, "p1", clock.now(), clock.now() + LEASE, 10)) == 1


async def test_the_worker_handles_each_chat_in_order_and_a_stuck_chat_blocks_nobody(
    queue: SqlAlchemyInboundQueue,
    clock: FakeClock,
    running: Callable[..., Awaitable[tuple[InboundWorker, Recorder]]],
) -> None:
    worker, recorder = await running()
    recorder.hold.add("flooder")
    await queue.put(CHANNEL, [taken("flooder", n) for n in range(1, 51)], clock.now())
    await queue.put(CHANNEL, [taken("bob", 1), taken("bob", 2)], clock.now())
    worker.wake()
    await until(lambda: len(recorder.of("bob")) == 2)
    assert recorder.of("flooder") == []  # still stuck on its first update
    recorder.release.set()
    await until(lambda: len(recorder.of("flooder")) == 50)
    assert recorder.of("flooder") == [f"m:flooder:{n}" for n in range(1, 51)]
    await until(lambda: worker.busy_chats == 0)
    assert await queue.pending(CHANNEL) == 0


async def test_a_failure_that_passes_keeps_the_update_and_it_is_handled_later_in_its_place(
    queue: SqlAlchemyInboundQueue,
    clock: FakeClock,
    running: Callable[..., Awaitable[tuple[InboundWorker, Recorder]]],
) -> None:
    worker, recorder = await running()
    recorder.fail["m:a:1"] = [OperationalError("SELECT", {}, ConnectionRefusedError())]
    await queue.put(CHANNEL, [taken("a", 1), taken("a", 2), taken("b", 1)], clock.now())
    worker.wake()
    await until(lambda: recorder.of("b") == ["m:b:1"])
    await until(lambda: worker.busy_chats == 0)
    assert recorder.of("a") == []  # a:2 waits behind a:1, which waits for its retry
    assert await queue.pending(CHANNEL) == 2
    clock.advance(seconds=1)
    worker.wake()
    await until(lambda: recorder.of("a") == ["m:a:1", "m:a:2"])


async def test_an_update_whose_handling_breaks_is_let_go_so_its_chat_goes_on(
    queue: SqlAlchemyInboundQueue,
    clock: FakeClock,
    running: Callable[..., Awaitable[tuple[InboundWorker, Recorder]]],
) -> None:
    worker, recorder = await running()
    recorder.fail["m:a:1"] = [KeyError("a bug")]
    await queue.put(CHANNEL, [taken("a", 1), taken("a", 2)], clock.now())
    worker.wake()
    await until(lambda: recorder.of("a") == ["m:a:2"])
    await until(lambda: worker.busy_chats == 0)
    assert await queue.pending(CHANNEL) == 0


async def test_two_workers_share_the_queue_without_handling_a_chat_twice_or_out_of_order(
    queue: SqlAlchemyInboundQueue,
    clock: FakeClock,
    running: Callable[..., Awaitable[tuple[InboundWorker, Recorder]]],
) -> None:
    shared = Recorder()  # what both processes handled, in the order they handled it
    one, _ = await running(shared, concurrency=2)
    two, _ = await running(shared, concurrency=2)
    chats = [f"c{n}" for n in range(6)]
    for chat in chats:
        await queue.put(CHANNEL, [taken(chat, n) for n in range(1, 6)], clock.now())
    one.wake()
    two.wake()
    await until(lambda: len(shared.handled) == 30)
    for chat in chats:
        assert shared.of(chat) == [f"m:{chat}:{n}" for n in range(1, 6)]


async def test_stopping_finishes_the_update_in_hand_and_leaves_the_rest_queued(
    queue: SqlAlchemyInboundQueue, clock: FakeClock
) -> None:
    recorder = Recorder()
    recorder.hold.add("a")
    worker = InboundWorker(CHANNEL, queue, recorder, clock, lease=LEASE, idle_poll_seconds=0.01)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    await queue.put(CHANNEL, [taken("a", n) for n in range(1, 4)], clock.now())
    worker.wake()
    await until(lambda: worker.busy_chats == 1)
    stop.set()
    recorder.release.set()
    await serving
    assert recorder.of("a") == ["m:a:1"]
    assert await queue.pending(CHANNEL) == 2
    # A later start (the same process restarted) carries on where it stopped.
    again = Recorder()
    worker = InboundWorker(CHANNEL, queue, again, clock, lease=LEASE, idle_poll_seconds=0.01)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    await until(lambda: again.of("a") == ["m:a:2", "m:a:3"])
    stop.set()
    await serving


async def test_key_rotation_rewraps_queued_updates_so_pruning_the_old_key_loses_none(
    uow_factory: SqlAlchemyUnitOfWorkFactory, clock: FakeClock
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    await SqlAlchemyInboundQueue(uow_factory.engine, AesGcmVault([old])).put(
        CHANNEL, [taken("a", 1, '{"text": "135790"}')], clock.now()
    )
    found = await census(uow_factory, AesGcmVault([new, old]), rewrap=True)
    assert found.rewrapped["inbound_queue.payload"] == 1 and not found.broken
    pruned = SqlAlchemyInboundQueue(uow_factory.engine, AesGcmVault([new]))
    (item,) = await pruned.claim_heads(CHANNEL, "p1", clock.now(), clock.now() + LEASE, 1)
    assert item.payload == '{"text": "135790"}'
