"""Migration 0011 merges the desk's ``notices`` and WeChat's ``wechat_outbox`` into the one
outbox without losing a row — undelivered ones stay undelivered, in their order — and back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from storage.migrate import downgrade_async, upgrade_async
from tests.conftest import Database

T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)


async def test_notices_and_wechat_messages_are_carried_into_the_outbox_and_back(
    database: Database,
) -> None:
    await upgrade_async(database.engine, "0007")
    sent = T0 + timedelta(seconds=5)
    async with database.engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO notices (channel, user_key, text, options, created_at, not_before, "
                "attempts, sent_at, last_error) VALUES "
                "('telegram', '9', 'relay', :options, :t0, :t0, 0, NULL, NULL), "
                "('wechat', 'o1', 'alert', '[]', :t2, :t2, 1, :sent, NULL), "
                "('telegram', '8', 'blocked', '[]', :t3, :t3, 30, :sent, 'gave up: Forbidden')"
            ),
            {
                "options": '[["quote.accept:1", "接受"]]',
                "t0": T0,
                "t2": T0 + timedelta(seconds=2),
                "t3": T0 + timedelta(seconds=3),
                "sent": sent,
            },
        )
        await connection.execute(
            text(
                "INSERT INTO wechat_outbox (openid, kind, text, state, attempts, not_before, "
                "lease_until, created_at, sent_at, via, last_error) VALUES "
                "('o1', 'reply', 'late answer', 'held', 1, :t1, NULL, :t1, NULL, NULL, '45047')"
            ),
            {"t1": T0 + timedelta(seconds=1)},
        )
        await connection.execute(
            text(
                "INSERT INTO wechat_contacts (openid, last_message_at, message_sends, "
                "last_event_at, event_sends) VALUES ('o1', :t0, 5, NULL, 0)"
            ),
            {"t0": T0},
        )
    await upgrade_async(database.engine)
    async with database.engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT channel, recipient, kind, text, state, attempts, via, last_error "
                    "FROM outbox ORDER BY id"
                )
            )
        ).all()
        options = (
            await connection.execute(text("SELECT options FROM outbox WHERE text = 'relay'"))
        ).scalar_one()
        contact = (
            (await connection.execute(text("SELECT * FROM wechat_contacts WHERE openid = 'o1'")))
            .mappings()
            .one()
        )
    assert [tuple(r) for r in rows] == [
        ("telegram", "9", "notice", "relay", "pending", 0, None, None),
        ("wechat", "o1", "reply", "late answer", "held", 1, None, "45047"),
        ("wechat", "o1", "notice", "alert", "sent", 1, "message", None),
        ("telegram", "8", "notice", "blocked", "failed", 30, None, "gave up: Forbidden"),
    ]
    if isinstance(options, str):  # SQLite hands JSON back as text through plain SQL
        import json

        options = json.loads(options)
    assert options == [["quote.accept:1", "接受"]]
    assert set(contact) == {"openid", "last_message_at", "last_event_at"}

    await downgrade_async(database.engine, "0007")
    async with database.engine.connect() as connection:
        notices = (
            await connection.execute(
                text("SELECT user_key, text, sent_at IS NULL FROM notices ORDER BY id")
            )
        ).all()
        wechat = (
            await connection.execute(text("SELECT openid, text, state FROM wechat_outbox"))
        ).all()
    assert [tuple(r) for r in notices] == [
        ("9", "relay", True),
        ("o1", "alert", False),
        ("8", "blocked", False),
    ]
    assert [tuple(r) for r in wechat] == [("o1", "late answer", "held")]
