"""Contract of the WeChat channel's repositories (delivery windows, access token), on SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.messages import Reply
from core.ports import CachedAccessToken
from storage.db import SqlAlchemyUnitOfWorkFactory

T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


async def test_a_contact_window_is_the_time_of_the_last_message_and_what_was_sent_since(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    """Derived, not counted: the customer-service sends since the user's last message (and
    last click) are the outbox's, whichever code path sent them."""
    async with uow_factory() as uow:
        assert await uow.wechat_contacts.get("o1") is None
        await uow.wechat_contacts.touch("o1", T0, by_message=True)
        [a, b, c] = await uow.outbox.add("wechat", "o1", [Reply("a"), Reply("b"), Reply("c")], T0)
        await uow.outbox.mark_sent(a.id or 0, "custom", T0 + timedelta(seconds=1))
        await uow.outbox.mark_sent(b.id or 0, "template", T0 + timedelta(seconds=2))
        await uow.outbox.record_sent("wechat", "o1", Reply("news"), "custom", T0 + MINUTE)
        await uow.wechat_contacts.touch("o1", T0 + 2 * MINUTE, by_message=False)
        await uow.outbox.mark_sent(c.id or 0, "custom", T0 + 3 * MINUTE)
        await uow.commit()
    async with uow_factory() as uow:
        window = await uow.wechat_contacts.get("o1")
    assert window is not None
    assert (window.last_message_at, window.message_sends) == (T0, 3)
    assert (window.last_event_at, window.event_sends) == (T0 + 2 * MINUTE, 1)

    async with uow_factory() as uow:
        await uow.wechat_contacts.touch("o1", T0 + timedelta(hours=1), by_message=True)
        await uow.commit()
        window = await uow.wechat_contacts.get("o1")
    assert window is not None and window.message_sends == 0 and window.event_sends == 1


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
