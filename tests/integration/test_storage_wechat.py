"""Contract of the WeChat channel's repositories (outbox, delivery windows, access token), on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from core.ports import CachedAccessToken
from storage.db import SqlAlchemyUnitOfWorkFactory

T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


async def queue(
    factory: SqlAlchemyUnitOfWorkFactory, openid: str, *texts: str, kind: str = "reply"
) -> list[int]:
    async with factory() as uow:
        added = await uow.wechat_outbox.add(openid, kind, texts, T0)
        await uow.commit()
    return [m.id for m in added if m.id is not None]


async def claim(
    factory: SqlAlchemyUnitOfWorkFactory, now: datetime = T0, limit: int = 10
) -> list[tuple[str, str]]:
    async with factory() as uow:
        claimed = await uow.wechat_outbox.claim_due(now, now + LEASE, limit)
        await uow.commit()
    return [(m.openid, m.text) for m in claimed]


async def test_queued_messages_keep_their_order_and_start_pending(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    ids = await queue(uow_factory, "o1", "first", "second", "third")
    assert ids == sorted(ids)
    async with uow_factory() as uow:
        stored = await uow.wechat_outbox.for_openid("o1")
    assert [(m.text, m.state, m.kind, m.attempts) for m in stored] == [
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
        await uow.wechat_outbox.mark_sent(first, "custom", T0)
        await uow.commit()
    assert await claim(uow_factory) == [("o1", "n1")]
    async with uow_factory() as uow:
        [sent, _] = await uow.wechat_outbox.for_openid("o1")
    assert (sent.state, sent.via, sent.sent_at, sent.attempts) == ("sent", "custom", T0, 1)


async def test_an_expired_lease_is_claimed_again(uow_factory: SqlAlchemyUnitOfWorkFactory) -> None:
    await queue(uow_factory, "o1", "a1")
    assert await claim(uow_factory) == [("o1", "a1")]
    assert await claim(uow_factory, T0 + LEASE - timedelta(seconds=1)) == []
    assert await claim(uow_factory, T0 + LEASE + timedelta(seconds=1)) == [("o1", "a1")]
    async with uow_factory() as uow:
        [message] = await uow.wechat_outbox.for_openid("o1")
    assert message.attempts == 2


async def test_a_message_retried_later_is_not_due_before_its_time(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    [message_id] = await queue(uow_factory, "o1", "a1")
    await claim(uow_factory)
    async with uow_factory() as uow:
        await uow.wechat_outbox.retry_later(message_id, T0 + timedelta(seconds=10), "timeout")
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
        await uow.wechat_outbox.hold(first, "45047")
        await uow.commit()
    # o1 is held (and a2 behind it waits); o2 goes on.
    assert await claim(uow_factory) == [("o2", "b1")]
    later = T0 + timedelta(hours=50)
    async with uow_factory() as uow:
        taken = await uow.wechat_outbox.take_undelivered("o1", later)
        await uow.commit()
    assert [(m.text, m.state, m.via, m.last_error) for m in taken] == [
        ("a1", "sent", "passive", "45047"),
        ("a2", "sent", "passive", None),
    ]
    async with uow_factory() as uow:
        assert await uow.wechat_outbox.take_undelivered("o1", later) == []
    assert [openid for openid, _ in await claim(uow_factory, later)] == ["o2"]  # lease expired


async def test_a_message_being_sent_is_not_taken_for_the_passive_reply(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    await queue(uow_factory, "o1", "a1")
    await claim(uow_factory)
    await queue(uow_factory, "o1", "a2")
    async with uow_factory() as uow:
        taken = await uow.wechat_outbox.take_undelivered("o1", T0)
    assert [m.text for m in taken] == ["a2"]


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


async def test_a_contact_window_opens_with_a_message_and_counts_sends(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    async with uow_factory() as uow:
        assert await uow.wechat_contacts.get("o1") is None
        await uow.wechat_contacts.touch("o1", T0, by_message=True)
        await uow.wechat_contacts.record_send("o1", "message")
        await uow.wechat_contacts.record_send("o1", "message")
        await uow.wechat_contacts.touch("o1", T0 + timedelta(seconds=5), by_message=False)
        await uow.wechat_contacts.record_send("o1", "event")
        await uow.commit()
    async with uow_factory() as uow:
        window = await uow.wechat_contacts.get("o1")
    assert window is not None
    assert (window.last_message_at, window.message_sends) == (T0, 2)
    assert (window.last_event_at, window.event_sends) == (T0 + timedelta(seconds=5), 1)

    async with uow_factory() as uow:
        await uow.wechat_contacts.touch("o1", T0 + timedelta(hours=1), by_message=True)
        await uow.commit()
        window = await uow.wechat_contacts.get("o1")
    assert window is not None and window.message_sends == 0 and window.event_sends == 1

    async with uow_factory() as uow:
        await uow.wechat_contacts.exhaust("o1", 5, 3)
        await uow.commit()
        window = await uow.wechat_contacts.get("o1")
    assert window is not None and (window.message_sends, window.event_sends) == (5, 3)


async def test_the_access_token_is_stored_replaced_and_discarded(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    first = CachedAccessToken("wx1", b"enc-1", T0 + timedelta(hours=2), T0)
    second = CachedAccessToken("wx1", b"enc-2", T0 + timedelta(hours=4), T0 + timedelta(hours=2))
    async with uow_factory() as uow:
        assert await uow.wechat_tokens.get("wx1") is None
        await uow.wechat_tokens.put(first)
        await uow.commit()
    async with uow_factory() as uow:
        assert await uow.wechat_tokens.get("wx1") == first
        await uow.wechat_tokens.put(second)
        await uow.commit()
    async with uow_factory() as uow:
        assert await uow.wechat_tokens.get("wx1") == second
        assert await uow.wechat_tokens.get("wx2") is None
        await uow.wechat_tokens.discard("wx1")
        await uow.wechat_tokens.discard("wx1")
        await uow.commit()
    async with uow_factory() as uow:
        assert await uow.wechat_tokens.get("wx1") is None
