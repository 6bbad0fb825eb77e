"""Broadcast storage and services on SQLite and PostgreSQL: audiences, the outbox rows a
confirmation materialises, claims (one worker per row), outcomes, crash leftovers, cancel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert

from core import broadcast as bc
from core.broadcast import (
    Audience,
    AudienceKind,
    BroadcastRequest,
    BroadcastState,
    DeliveryState,
    Outcome,
)
from core.catalog import default_catalog
from core.errors import UserError
from core.model import Card
from storage.db import SqlAlchemyUnitOfWorkFactory
from storage.tables import metadata

NOW = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
ADMIN = "telegram:1"
CATALOG = default_catalog()


async def person(
    uow_factory: SqlAlchemyUnitOfWorkFactory, channel: str, external: str, lang: str = "zh"
) -> int:
    async with uow_factory() as uow:
        user, _ = await uow.users.for_channel(channel, external, external, lang, NOW)
        await uow.commit()
    return user.id


async def give_card(uow_factory: SqlAlchemyUnitOfWorkFactory, user_id: int, brand: str) -> None:
    async with uow_factory() as uow:
        await uow.cards.add(
            Card(user_id, brand, b"enc", f"fp-{user_id}-{brand}", "2326****0001", NOW)
        )
        await uow.commit()


async def start(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
    audience: Audience | None = None,
    send_at: datetime | None = None,
    text: str = "新价格：沃尔玛 95 折",
) -> int:
    async with uow_factory() as uow:
        draft, _ = await bc.draft(
            uow,
            BroadcastRequest(audience or Audience(AudienceKind.ALL), text, send_at),
            ADMIN,
            NOW,
        )
        assert draft.id is not None
        await bc.confirm(uow, draft.id, ADMIN, NOW)
        await uow.commit()
    return draft.id


async def test_confirming_makes_one_pending_delivery_per_reachable_person_on_their_newest_channel(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    alice = await person(uow_factory, "telegram", "101")
    bob = await person(uow_factory, "wechat", "oBob", "en")
    await person(uow_factory, "console", "carol")  # the console is no broadcast channel
    gone = await person(uow_factory, "telegram", "103")
    quiet = await person(uow_factory, "telegram", "104")
    async with uow_factory() as uow:
        await uow.users.set_reachable("telegram", "103", False)
        await bc.unsubscribe(uow, quiet, None, "telegram:104", NOW)
        await uow.commit()
    async with uow_factory() as uow:
        draft, count = await bc.draft(
            uow, BroadcastRequest(Audience(AudienceKind.ALL), "hello"), ADMIN, NOW
        )
        await uow.commit()
    assert count == 2
    assert draft.id is not None
    async with uow_factory() as uow:
        confirmed = await bc.confirm(uow, draft.id, ADMIN, NOW)
        await uow.commit()
    assert confirmed.state is BroadcastState.SCHEDULED and confirmed.recipients == 2
    async with uow_factory() as uow:
        rows = await uow.broadcasts.deliveries(draft.id)
        events = await uow.audit.for_subject(f"broadcast:{draft.id}")
    assert {(d.user_id, d.channel, d.chat_id, d.language, d.state) for d in rows} == {
        (alice, "telegram", "101", "zh", DeliveryState.PENDING),
        (bob, "wechat", "oBob", "en", DeliveryState.PENDING),
    }
    assert gone not in {d.user_id for d in rows}
    assert [e.action for e in events] == ["broadcast.draft", "broadcast.confirm"]
    assert all(e.actor == ADMIN for e in events)


async def test_holders_and_alert_audiences_reach_only_their_people(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    holder = await person(uow_factory, "telegram", "201")
    fan = await person(uow_factory, "telegram", "202")
    await person(uow_factory, "telegram", "203")
    await give_card(uow_factory, holder, "walmart")
    async with uow_factory() as uow:
        assert await bc.subscribe(uow, fan, CATALOG.get("jd_ecard"), "telegram:202", NOW)
        assert not await bc.subscribe(uow, fan, CATALOG.get("jd_ecard"), "telegram:202", NOW)
        await uow.commit()
    holders = await start(uow_factory, Audience(AudienceKind.HOLDERS, "walmart"))
    alerts = await start(uow_factory, Audience(AudienceKind.ALERTS, "jd_ecard"))
    nobody = await start(uow_factory, Audience(AudienceKind.ALERTS, "walmart"))
    async with uow_factory() as uow:
        assert [d.user_id for d in await uow.broadcasts.deliveries(holders)] == [holder]
        assert [d.user_id for d in await uow.broadcasts.deliveries(alerts)] == [fan]
        assert list(await uow.broadcasts.deliveries(nobody)) == []
        assert await uow.subscriptions.brands_of(fan) == ["jd_ecard"]
        assert await bc.unsubscribe(uow, fan, CATALOG.get("jd_ecard"), "telegram:202", NOW) == 1
        await uow.commit()
    async with uow_factory() as uow:
        assert await uow.subscriptions.brands_of(fan) == []
        assert await uow.broadcasts.count_audience(Audience(AudienceKind.ALERTS, "jd_ecard")) == 0


async def test_a_delivery_is_claimed_by_one_worker_and_reported_by_its_outcome(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    for n in range(5):
        await person(uow_factory, "telegram", str(300 + n))
    blocked = await person(uow_factory, "wechat", "oBlocked")
    broadcast_id = await start(uow_factory)
    async with uow_factory() as uow:
        first = await uow.broadcasts.claim("telegram", "w1", NOW, 3)
        await uow.commit()
    async with uow_factory() as uow:
        second = await uow.broadcasts.claim("telegram", "w2", NOW, 10)
        third = await uow.broadcasts.claim("telegram", "w3", NOW, 10)
        wechat = await uow.broadcasts.claim("wechat", "w1", NOW, 10)
        await uow.commit()
    assert len(first) == 3 and len(second) == 2 and third == []
    assert {d.id for d in first}.isdisjoint({d.id for d in second})
    assert all(d.state is DeliveryState.CLAIMED and d.attempts == 1 for d in [*first, *second])
    assert [d.user_id for d in wechat] == [blocked]
    async with uow_factory() as uow:
        assert (await uow.broadcasts.get(broadcast_id)).state is BroadcastState.SENDING
        sent = [(d.id or 0, Outcome(DeliveryState.SENT)) for d in first]
        # Another worker's outcome for a row it did not claim changes nothing.
        assert await uow.broadcasts.record("w2", sent, NOW) == 0
        assert await uow.broadcasts.record("w1", sent, NOW) == 3
        failed = Outcome(DeliveryState.FAILED, "400 Bad Request: text is empty")
        await uow.broadcasts.record("w2", [(second[0].id or 0, failed)], NOW)
        released = Outcome(DeliveryState.PENDING, "connection refused")
        await uow.broadcasts.record("w2", [(second[1].id or 0, released)], NOW)
        gone = Outcome(DeliveryState.UNREACHABLE, "43004 require subscribe")
        await uow.broadcasts.record("w1", [(wechat[0].id or 0, gone)], NOW)
        assert await uow.broadcasts.finish_done(NOW) == []  # one is pending again
        await uow.commit()
    async with uow_factory() as uow:
        again = await uow.broadcasts.claim("telegram", "w3", NOW, 10)
        await uow.broadcasts.record("w3", [(again[0].id or 0, Outcome(DeliveryState.SENT))], NOW)
        assert await uow.broadcasts.finish_done(NOW) == [broadcast_id]
        report = await bc.report(uow, broadcast_id)
        identities = await uow.users.identities(blocked)
        await uow.commit()
    assert [d.id for d in again] == [second[1].id]
    assert report[DeliveryState.SENT] == 4
    assert report[DeliveryState.FAILED] == 1
    assert report[DeliveryState.UNREACHABLE] == 1
    assert report.total == report.done == 6
    assert [i.reachable for i in identities] == [False]
    async with uow_factory() as uow:
        assert (await uow.broadcasts.get(broadcast_id)).state is BroadcastState.FINISHED


async def test_rows_a_crashed_worker_left_sending_become_unknown_and_are_never_claimed_again(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    for n in range(4):
        await person(uow_factory, "telegram", str(400 + n))
    broadcast_id = await start(uow_factory)
    async with uow_factory() as uow:
        crashed = await uow.broadcasts.claim("telegram", "dead", NOW, 2)
        for delivery in crashed:  # both requests were under way when it died
            assert await uow.broadcasts.start(delivery.id or 0, "dead", NOW)
        await uow.commit()
    later = NOW + timedelta(minutes=5)
    async with uow_factory() as uow:
        # A live worker's own claims and fresh claims of others are left alone.
        assert await uow.broadcasts.expire_claims("telegram", "dead", later) == 0
        assert await uow.broadcasts.expire_claims("telegram", "new", NOW) == 0
        assert await uow.broadcasts.expire_claims("telegram", "new", later) == 2
        rest = await uow.broadcasts.claim("telegram", "new", later, 10)
        await uow.commit()
    assert {d.id for d in rest}.isdisjoint({d.id for d in crashed}) and len(rest) == 2
    async with uow_factory() as uow:
        report = await bc.report(uow, broadcast_id)
    assert report[DeliveryState.UNKNOWN] == 2 and report[DeliveryState.CLAIMED] == 2


async def test_rows_a_crashed_worker_claimed_but_never_started_go_back_in_line(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    for n in range(3):
        await person(uow_factory, "telegram", str(450 + n))
    broadcast_id = await start(uow_factory)
    async with uow_factory() as uow:
        crashed = await uow.broadcasts.claim("telegram", "dead", NOW, 3)
        assert await uow.broadcasts.start(crashed[0].id or 0, "dead", NOW)
        # Someone else cannot start a row that is not theirs.
        assert not await uow.broadcasts.start(crashed[1].id or 0, "other", NOW)
        await uow.commit()
    later = NOW + timedelta(minutes=5)
    async with uow_factory() as uow:
        assert await uow.broadcasts.expire_claims("telegram", "new", later) == 1
        rest = await uow.broadcasts.claim("telegram", "new", later, 10)
        # The dead worker's claim is gone: it may not start them any more.
        assert not await uow.broadcasts.start(crashed[2].id or 0, "dead", later)
        await uow.commit()
    assert sorted(d.id for d in rest) == sorted(d.id for d in crashed[1:])
    async with uow_factory() as uow:
        report = await bc.report(uow, broadcast_id)
    assert report[DeliveryState.UNKNOWN] == 1 and report[DeliveryState.CLAIMED] == 2


async def test_a_scheduled_broadcast_is_not_claimed_before_its_time(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    await person(uow_factory, "telegram", "501")
    broadcast_id = await start(uow_factory, send_at=NOW + timedelta(hours=2))
    async with uow_factory() as uow:
        assert await uow.broadcasts.claim("telegram", "w", NOW + timedelta(hours=1), 10) == []
        assert (await uow.broadcasts.get(broadcast_id)).state is BroadcastState.SCHEDULED
        due = await uow.broadcasts.claim("telegram", "w", NOW + timedelta(hours=2), 10)
        await uow.commit()
    assert len(due) == 1


async def test_cancelling_skips_every_pending_delivery_and_reports_it(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    for n in range(5):
        await person(uow_factory, "telegram", str(600 + n))
    broadcast_id = await start(uow_factory)
    async with uow_factory() as uow:
        claimed = await uow.broadcasts.claim("telegram", "w", NOW, 2)
        await uow.broadcasts.record("w", [(claimed[0].id or 0, Outcome(DeliveryState.SENT))], NOW)
        await uow.commit()
    async with uow_factory() as uow:
        cancelled, report = await bc.cancel(uow, broadcast_id, ADMIN, NOW)
        await uow.commit()
    assert cancelled.state is BroadcastState.CANCELLED
    assert report[DeliveryState.SKIPPED] == 3
    assert report[DeliveryState.SENT] == 1 and report[DeliveryState.CLAIMED] == 1
    async with uow_factory() as uow:
        assert await uow.broadcasts.claim("telegram", "w2", NOW, 10) == []
        with pytest.raises(UserError):
            await bc.cancel(uow, broadcast_id, ADMIN, NOW)
        with pytest.raises(UserError):
            await bc.confirm(uow, broadcast_id, ADMIN, NOW)
        actions = [e.action for e in await uow.audit.for_subject(f"broadcast:{broadcast_id}")]
    assert actions == ["broadcast.draft", "broadcast.confirm", "broadcast.cancel"]


async def test_a_new_draft_replaces_the_admins_unconfirmed_one(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    request = BroadcastRequest(Audience(AudienceKind.ALL), "one")
    async with uow_factory() as uow:
        first, _ = await bc.draft(uow, request, ADMIN, NOW)
        second, _ = await bc.draft(uow, request, ADMIN, NOW)
        await bc.draft(uow, request, "telegram:2", NOW)
        waiting = await bc.waiting_draft(uow, ADMIN)
        with_image = await bc.attach_image(uow, second, b"\x89PNG...", ADMIN, NOW)
        await uow.commit()
    assert waiting is not None and waiting.id == second.id
    assert with_image.image == b"\x89PNG..."
    async with uow_factory() as uow:
        assert (await uow.broadcasts.get(first.id or 0)).state is BroadcastState.CANCELLED
        assert (await uow.broadcasts.get(second.id or 0)).image == b"\x89PNG..."


async def test_twenty_thousand_recipients_are_materialised_in_one_statement(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    n = 20_000
    users, identities = metadata.tables["users"], metadata.tables["channel_identities"]
    async with uow_factory.engine.begin() as conn:
        await conn.execute(
            insert(users),
            [
                {"id": i, "created_at": NOW, "language": "zh", "kyc_level": 0}
                for i in range(1, n + 1)
            ],
        )
        await conn.execute(
            insert(identities),
            [
                {
                    "channel": "telegram",
                    "external_id": str(10_000 + i),
                    "user_id": i,
                    "chat_id": str(10_000 + i),
                    "reachable": True,
                    "created_at": NOW,
                }
                for i in range(1, n + 1)
            ],
        )
    # Counted in statements, not seconds (bench/broadcast.py times it): one INSERT … SELECT
    # makes every row, never one statement or one parameter set per recipient.
    inserts: list[tuple[str, bool]] = []

    def seen(
        _conn: Any, _cursor: Any, statement: str, _params: Any, _ctx: Any, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO BROADCAST_DELIVERIES"):
            inserts.append((statement, many))

    event.listen(uow_factory.engine.sync_engine, "before_cursor_execute", seen)
    try:
        broadcast_id = await start(uow_factory)
    finally:
        event.remove(uow_factory.engine.sync_engine, "before_cursor_execute", seen)
    async with uow_factory() as uow:
        report = await bc.report(uow, broadcast_id)
    assert report[DeliveryState.PENDING] == n
    assert [(" SELECT " in statement.upper(), many) for statement, many in inserts] == [
        (True, False)
    ], inserts
