"""The inbound queue over SQLAlchemy (``inbound_queue``): see :class:`core.ports.InboundQueue`.

Payloads are sealed with the data key (an update can carry a card secret or an ID number) under
associated data that binds them to their channel and update key. A chat's head is leased with a
conditional UPDATE, so two processes never handle the same chat at once; a lease that is not
renewed runs out and another process takes the chat over. Handling itself is at most once
whatever the leases do: the conversation records each message's key with its effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import CursorResult, Table, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core.ports import QueuedUpdate, TakenUpdate, Vault
from storage.db import session_factory
from storage.repositories import _insert_or_ignore
from storage.tables import InboundQueueRow, metadata

QUEUE: Table = metadata.tables[InboundQueueRow.__tablename__]


def payload_context(channel: str, update_key: str) -> str:
    """Associated data of a queued payload."""
    return f"inbound_queue:{channel}:{update_key}"


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
    return value.astimezone(UTC)


class SqlAlchemyInboundQueue:
    """Durable per-chat queues of channel updates, shared by every process of the database."""

    def __init__(self, engine: AsyncEngine, vault: Vault) -> None:
        self._sessions = session_factory(engine)
        self._vault = vault

    async def put(self, channel: str, updates: Sequence[TakenUpdate], at: datetime) -> int:
        new = 0
        async with self._sessions() as session, session.begin():
            for taken in updates:
                sealed = self._vault.encrypt(
                    taken.payload, payload_context(channel, taken.update_key)
                )
                stmt = _insert_or_ignore(
                    session,
                    QUEUE,
                    {
                        "channel": channel,
                        "update_key": taken.update_key,
                        "chat_key": taken.chat_key,
                        "payload": sealed,
                        "received_at": _utc(at),
                        "attempts": 0,
                        "not_before": _utc(at),
                    },
                    ["channel", "update_key"],
                )
                result = await session.execute(stmt)
                assert isinstance(result, CursorResult)
                new += result.rowcount
        return new

    async def claim_heads(
        self,
        channel: str,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        chat_key: str | None = None,
        busy: frozenset[str] = frozenset(),
    ) -> Sequence[QueuedUpdate]:
        now = _utc(now)
        table = QUEUE
        heads = select(func.min(table.c.id)).where(table.c.channel == channel)
        if chat_key is not None:
            heads = heads.where(table.c.chat_key == chat_key)
        if busy:
            heads = heads.where(table.c.chat_key.not_in(sorted(busy)))
        heads = heads.group_by(table.c.chat_key)
        free = table.c.lease_until.is_(None) | (table.c.lease_until < now)
        claimed: list[QueuedUpdate] = []
        async with self._sessions() as session, session.begin():
            candidates = await session.execute(
                select(table.c.id)
                .where(table.c.id.in_(heads.scalar_subquery()), table.c.not_before <= now, free)
                .order_by(table.c.id)
                .limit(limit)
            )
            for (item_id,) in candidates.all():
                result = await session.execute(
                    update(table)
                    .where(table.c.id == item_id, free)
                    .values(
                        owner=owner, lease_until=_utc(lease_until), attempts=table.c.attempts + 1
                    )
                    .returning(*table.c)
                )
                row = result.one_or_none()
                if row is not None:  # else another process leased it between select and update
                    claimed.append(self._queued(row))
        return claimed

    async def renew(self, item_ids: Sequence[int], owner: str, lease_until: datetime) -> None:
        """Extend the leases this process holds (handling takes longer than a lease)."""
        if not item_ids:
            return
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(QUEUE)
                .where(QUEUE.c.id.in_(list(item_ids)), QUEUE.c.owner == owner)
                .values(lease_until=_utc(lease_until))
            )

    async def done(self, item_id: int, owner: str) -> None:
        async with self._sessions() as session, session.begin():
            await session.execute(delete(QUEUE).where(QUEUE.c.id == item_id))

    async def retry_later(self, item_id: int, owner: str, not_before: datetime) -> None:
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(QUEUE)
                .where(QUEUE.c.id == item_id, QUEUE.c.owner == owner)
                .values(owner=None, lease_until=None, not_before=_utc(not_before))
            )

    async def pending(self, channel: str) -> int:
        async with self._sessions() as session:
            count = await session.scalar(
                select(func.count()).select_from(QUEUE).where(QUEUE.c.channel == channel)
            )
        return int(count or 0)

    def _queued(self, row: Any) -> QueuedUpdate:
        return QueuedUpdate(
            id=row.id,
            channel=row.channel,
            update_key=row.update_key,
            chat_key=row.chat_key,
            payload=self._vault.decrypt(row.payload, payload_context(row.channel, row.update_key)),
            attempts=row.attempts,
        )
