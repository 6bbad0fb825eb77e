"""Contract of the outbox (one table for every channel) and of settlement claims, on SQLite and
PostgreSQL: per recipient in order, leased so that no two deliverers take the same message,
held messages taken with the next answer, each channel's messages only by its own worker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from core.messages import Option, Reply
from core.ports import OutboxKind, OutboxMessage
from storage.db import SqlAlchemyUnitOfWorkFactory
from tests.integration.test_storage_contract import new_order, new_user

T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


@pytest.fixture
async def order_id(uow_factory: SqlAlchemyUnitOfWorkFactory) -> int:
    async with uow_factory() as uow:
        order = await new_order(uow, await new_user(uow))
        await uow.commit()
    assert order.id is not None
    return order.id


async def queue(
    factory: SqlAlchemyUnitOfWorkFactory,
    openid: str,
    *texts: str,
    kind: str = "reply",
    channel: str = "wechat",
) -> list[int]:
    async with factory() as uow:
        added = await uow.outbox.add(
            channel, openid, [Reply(t) for t in texts], T0, kind=OutboxKind(kind)
        )
        await uow.commit()
    return [m.id for m in added if m.id is not None]


async def claim(
    factory: SqlAlchemyUnitOfWorkFactory,
    now: datetime = T0,
    limit: int = 10,
    channel: str = "wechat",
) -> list[tuple[str, str]]:
    async with factory() as uow:
        claimed = await uow.outbox.claim_due(channel, now, now + LEASE, limit)
        await uow.commit()
    return [(m.recipient, m.reply.text) for m in claimed]


async def mine(factory: SqlAlchemyUnitOfWorkFactory, openid: str) -> list[OutboxMessage]:
    async with factory() as uow:
        return list(await uow.outbox.for_recipient("wechat", openid))


async def test_queued_messages_keep_their_order_and_start_pending(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    ids = await queue(uow_factory, "o1", "first", "second", "third")
    assert ids == sorted(ids)
    stored = await mine(uow_factory, "o1")
    assert [(m.reply.text, m.state, m.kind, m.attempts) for m in stored] == [
        ("first", "pending", "reply", 0),
        ("second", "pending", "reply", 0),
        ("third", "pending", "reply", 0),
    ]
    assert stored[0].created_at == T0


async def test_only_the_oldest_undelivered_messages_of_each_user_are_claimed(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    await queue(uow_factory, "o1", "a1", "a2")
    await queue(uow_factory, "o1", "n1", kind="notice")
    await queue(uow_factory, "o1", "a3")
    await queue(uow_factory, "o2", "b1")
    # The head of each user's queue, with the same kind right behind it (to be merged); the
    # notice waits behind them, and a3 behind the notice.
    assert await claim(uow_factory) == [("o1", "a1"), ("o1", "a2"), ("o2", "b1")]
    assert await claim(uow_factory) == []  # leased: nobody else gets them


async def test_a_sent_message_lets_the_next_one_through(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    [first] = await queue(uow_factory, "o1", "a1")
    await queue(uow_factory, "o1", "n1", kind="notice")
    await claim(uow_factory)
    async with uow_factory() as uow:
        await uow.outbox.mark_sent(first, "custom", T0)
        await uow.commit()
    assert await claim(uow_factory) == [("o1", "n1")]
    [sent, _] = await mine(uow_factory, "o1")
    assert (sent.state, sent.via, sent.sent_at, sent.attempts) == ("sent", "custom", T0, 1)


async def test_an_expired_lease_is_claimed_again(uow_factory: SqlAlchemyUnitOfWorkFactory) -> None:
    await queue(uow_factory, "o1", "a1")
    assert await claim(uow_factory) == [("o1", "a1")]
    assert await claim(uow_factory, T0 + LEASE - timedelta(seconds=1)) == []
    assert await claim(uow_factory, T0 + LEASE + timedelta(seconds=1)) == [("o1", "a1")]
    [message] = await mine(uow_factory, "o1")
    assert message.attempts == 2


async def test_a_message_retried_later_is_not_due_before_its_time(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    [message_id] = await queue(uow_factory, "o1", "a1")
    await claim(uow_factory)
    async with uow_factory() as uow:
        await uow.outbox.retry_later(message_id, T0 + timedelta(seconds=10), "timeout")
        await uow.commit()
    assert await claim(uow_factory, T0 + timedelta(seconds=5)) == []
    assert await claim(uow_factory, T0 + timedelta(seconds=10)) == [("o1", "a1")]


async def test_a_held_message_blocks_later_ones_until_taken_with_the_next_passive_reply(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    [first] = await queue(uow_factory, "o1", "a1")
    await queue(uow_factory, "o2", "b1")
    await claim(uow_factory, limit=1)
    await queue(uow_factory, "o1", "a2")
    async with uow_factory() as uow:
        await uow.outbox.hold(first, "45047")
        await uow.commit()
    # o1 is held (and a2 behind it waits); o2 goes on.
    assert await claim(uow_factory) == [("o2", "b1")]
    later = T0 + timedelta(hours=50)
    async with uow_factory() as uow:
        taken = await uow.outbox.take_undelivered("wechat", "o1", later)
        await uow.commit()
    assert [(m.reply.text, m.state, m.via, m.last_error) for m in taken] == [
        ("a1", "sent", "passive", "45047"),
        ("a2", "sent", "passive", None),
    ]
    async with uow_factory() as uow:
        assert await uow.outbox.take_undelivered("wechat", "o1", later) == []
    assert [openid for openid, _ in await claim(uow_factory, later)] == ["o2"]  # lease expired


async def test_a_message_being_sent_is_not_taken_for_the_passive_reply(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    await queue(uow_factory, "o1", "a1")
    await claim(uow_factory)
    await queue(uow_factory, "o1", "a2")
    async with uow_factory() as uow:
        taken = await uow.outbox.take_undelivered("wechat", "o1", T0)
    assert [m.reply.text for m in taken] == ["a2"]


async def test_concurrent_claims_lease_each_message_once(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    for n in range(6):
        await queue(uow_factory, f"o{n}", f"m{n}")

    async def one_claim() -> list[tuple[str, str]]:
        for _ in range(50):
            try:
                return await claim(uow_factory)
            except Exception as exc:  # SQLite: the other writer holds the lock briefly
                if "locked" not in str(exc):
                    raise
                await asyncio.sleep(0.01)
        raise AssertionError("never got the lock")

    results = await asyncio.gather(*(one_claim() for _ in range(3)))
    claimed = [item for result in results for item in result]
    assert sorted(claimed) == [(f"o{n}", f"m{n}") for n in range(6)]


async def test_options_travel_with_a_message_and_each_channel_claims_only_its_own(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    async with uow_factory() as uow:
        await uow.outbox.add(
            "wechat", "u1", [Reply("一", (Option("quote.accept:1", "接受"),))], T0
        )
        await uow.outbox.add("telegram", "9", [Reply("二")], T0)
        await uow.commit()
    async with uow_factory() as uow:
        [telegram] = await uow.outbox.claim_due("telegram", T0, T0 + LEASE, 10)
        [wechat] = await uow.outbox.claim_due("wechat", T0, T0 + LEASE, 10)
        await uow.commit()
    assert (telegram.recipient, telegram.reply.text, telegram.kind) == ("9", "二", "notice")
    assert wechat.reply.options == (Option("quote.accept:1", "接受"),)


async def test_a_message_given_up_no_longer_holds_back_the_ones_behind_it(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    [first] = await queue(uow_factory, "9", "a1", channel="telegram")
    await queue(uow_factory, "9", "n1", kind="notice", channel="telegram")
    assert await claim(uow_factory, channel="telegram") == [("9", "a1")]
    async with uow_factory() as uow:
        await uow.outbox.give_up(first, T0, "Forbidden")
        await uow.commit()
    assert await claim(uow_factory, channel="telegram") == [("9", "n1")]
    async with uow_factory() as uow:
        [gone, _] = await uow.outbox.for_recipient("telegram", "9")
    assert (gone.state, gone.last_error) == ("failed", "gave up: Forbidden")


async def test_sends_are_counted_per_way_since_a_time(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    [first, second] = await queue(uow_factory, "o1", "a1", "a2")
    async with uow_factory() as uow:
        await uow.outbox.mark_sent(first, "custom", T0)
        await uow.outbox.mark_sent(second, "template", T0 + timedelta(seconds=1))
        await uow.outbox.record_sent("wechat", "o1", Reply("b"), "custom", T0 + timedelta(1))
        await uow.commit()
    async with uow_factory() as uow:
        assert await uow.outbox.sent_since("wechat", "o1", "custom", T0) == 2
        assert await uow.outbox.sent_since("wechat", "o1", "custom", T0 + timedelta(hours=1)) == 1
        assert await uow.outbox.sent_since("wechat", "o1", "template", T0) == 1
        assert await uow.outbox.sent_since("wechat", "o2", "custom", T0) == 0


async def test_an_order_is_claimed_by_one_owner_until_released_or_expired(
    uow_factory: SqlAlchemyUnitOfWorkFactory, order_id: int
) -> None:
    async with uow_factory() as uow:
        assert await uow.order_claims.claim(order_id, "a", T0, T0 + LEASE)
        assert not await uow.order_claims.claim(order_id, "b", T0, T0 + LEASE)
        assert await uow.order_claims.claim(order_id, "a", T0, T0 + 2 * LEASE)  # extended
        await uow.commit()
    async with uow_factory() as uow:
        assert not await uow.order_claims.claim(order_id, "b", T0 + LEASE, T0 + 2 * LEASE)
        # After the lease ran out (its holder died), someone else takes over.
        assert await uow.order_claims.claim(order_id, "b", T0 + 2 * LEASE, T0 + 3 * LEASE)
        await uow.order_claims.release(order_id, "a")  # not a's any more: nothing happens
        assert not await uow.order_claims.claim(order_id, "a", T0 + 2 * LEASE, T0 + 3 * LEASE)
        await uow.order_claims.release(order_id, "b")
        assert await uow.order_claims.claim(order_id, "a", T0 + 2 * LEASE, T0 + 3 * LEASE)
        await uow.commit()


async def test_concurrent_claims_of_one_order_have_one_winner(
    uow_factory: SqlAlchemyUnitOfWorkFactory, order_id: int
) -> None:
    async def one(owner: str) -> bool:
        for _ in range(50):
            try:
                async with uow_factory() as uow:
                    taken = await uow.order_claims.claim(order_id, owner, T0, T0 + LEASE)
                    await uow.commit()
                return taken
            except Exception as exc:  # SQLite: the other writer holds the lock briefly
                if "locked" not in str(exc):
                    raise
                await asyncio.sleep(0.01)
        raise AssertionError("never got the lock")

    results = await asyncio.gather(*(one(f"p{n}") for n in range(4)))
    assert sorted(results) == [False, False, False, True]
