"""The outbox (one table for every channel) and settlement claims.

Claims on outbox rows are leases taken with a conditional UPDATE, so two processes never send
the same message; a process that dies mid-send loses its lease and another one sends. Per
recipient, only the oldest undelivered message can be claimed: messages leave in order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.messages import Option, Reply
from core.ports import OutboxKind, OutboxMessage, OutboxState
from storage.repositories import _insert_or_ignore, _utc
from storage.tables import OrderClaimRow, OutboxRow, metadata

OUTBOX: Table = metadata.tables[OutboxRow.__tablename__]
CLAIMS: Table = metadata.tables[OrderClaimRow.__tablename__]
_UNDELIVERED = (OutboxState.PENDING.value, OutboxState.HELD.value)
_FAR = 2**62


def _message(row: Any) -> OutboxMessage:
    return OutboxMessage(
        channel=row.channel,
        recipient=row.recipient,
        kind=OutboxKind(row.kind),
        reply=Reply(row.text, tuple(Option(str(i), str(label)) for i, label in row.options)),
        state=OutboxState(row.state),
        created_at=row.created_at,
        not_before=row.not_before,
        attempts=row.attempts,
        sent_at=row.sent_at,
        via=row.via,
        last_error=row.last_error,
        id=row.id,
    )


class SqlAlchemyOutboxRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(
        self,
        channel: str,
        recipient: str,
        replies: Sequence[Reply],
        at: datetime,
        kind: OutboxKind = OutboxKind.NOTICE,
        not_before: datetime | None = None,
    ) -> Sequence[OutboxMessage]:
        added: list[OutboxMessage] = []
        for reply in replies:  # one by one: ids follow the order of the replies
            result = await self._session.execute(
                OUTBOX.insert()
                .values(
                    channel=channel,
                    recipient=recipient,
                    kind=kind.value,
                    text=reply.text,
                    options=[[o.id, o.label] for o in reply.options],
                    state=OutboxState.PENDING.value,
                    attempts=0,
                    not_before=_utc(not_before or at),
                    created_at=_utc(at),
                )
                .returning(*OUTBOX.c)
            )
            added.append(_message(result.one()))
        return added

    async def claim_due(
        self, channel: str, now: datetime, lease_until: datetime, limit: int
    ) -> Sequence[OutboxMessage]:
        now = _utc(now)
        table = OUTBOX
        earlier = table.alias("earlier")
        free = (table.c.lease_until.is_(None)) | (table.c.lease_until < now)
        candidates = await self._session.execute(
            select(table.c.id)
            .where(
                table.c.channel == channel,
                table.c.state == OutboxState.PENDING.value,
                table.c.not_before <= now,
                free,
                ~select(earlier.c.id)
                .where(
                    earlier.c.channel == table.c.channel,
                    earlier.c.recipient == table.c.recipient,
                    earlier.c.state.in_(_UNDELIVERED),
                    earlier.c.id < table.c.id,
                )
                .exists(),
            )
            .order_by(table.c.id)
            .limit(limit)
        )
        claimed: list[OutboxMessage] = []
        for (message_id,) in candidates.all():
            result = await self._session.execute(
                update(table)
                .where(table.c.id == message_id, table.c.state == OutboxState.PENDING.value, free)
                .values(lease_until=_utc(lease_until), attempts=table.c.attempts + 1)
                .returning(*table.c)
            )
            row = result.one_or_none()
            if row is None:  # another process leased it between select and update
                continue
            head = _message(row)
            # The same recipient's due messages of the same kind right behind it go with it
            # (a channel may merge them into one message); nobody else can claim them now.
            boundary = await self._session.scalar(
                select(func.min(table.c.id)).where(
                    table.c.channel == channel,
                    table.c.recipient == head.recipient,
                    table.c.id > message_id,
                    table.c.state.in_(_UNDELIVERED),
                    (table.c.kind != head.kind.value)
                    | (table.c.state != OutboxState.PENDING.value)
                    | (table.c.not_before > now)
                    | ~free,
                )
            )
            followers = await self._session.execute(
                update(table)
                .where(
                    table.c.channel == channel,
                    table.c.recipient == head.recipient,
                    table.c.kind == head.kind.value,
                    table.c.state == OutboxState.PENDING.value,
                    table.c.id > message_id,
                    table.c.id < (boundary if boundary is not None else _FAR),
                    table.c.not_before <= now,
                    free,
                )
                .values(lease_until=_utc(lease_until), attempts=table.c.attempts + 1)
                .returning(*table.c)
            )
            claimed += [head, *sorted(map(_message, followers), key=lambda m: m.id or 0)]
        return claimed

    async def _set(self, message_id: int, **values: Any) -> None:
        await self._session.execute(
            update(OUTBOX).where(OUTBOX.c.id == message_id).values(**values)
        )

    async def mark_sent(self, message_id: int, via: str, at: datetime) -> None:
        await self._set(
            message_id,
            state=OutboxState.SENT.value,
            via=via,
            sent_at=_utc(at),
            lease_until=None,
            last_error=None,
        )

    async def hold(self, message_id: int, reason: str) -> None:
        await self._set(
            message_id, state=OutboxState.HELD.value, lease_until=None, last_error=reason[:128]
        )

    async def retry_later(self, message_id: int, not_before: datetime, reason: str) -> None:
        await self._set(
            message_id,
            not_before=_utc(not_before),
            lease_until=None,
            last_error=reason[:128] or None,
        )

    async def give_up(self, message_id: int, at: datetime, reason: str) -> None:
        await self._set(
            message_id,
            state=OutboxState.FAILED.value,
            sent_at=_utc(at),
            lease_until=None,
            last_error=f"gave up: {reason}"[:128],
        )

    async def take_undelivered(
        self, channel: str, recipient: str, at: datetime
    ) -> Sequence[OutboxMessage]:
        at = _utc(at)
        table = OUTBOX
        result = await self._session.execute(
            update(table)
            .where(
                table.c.channel == channel,
                table.c.recipient == recipient,
                table.c.state.in_(_UNDELIVERED),
                (table.c.lease_until.is_(None)) | (table.c.lease_until < at),
            )
            .values(state=OutboxState.SENT.value, via="passive", sent_at=at, lease_until=None)
            .returning(*table.c)
        )
        return sorted((_message(row) for row in result), key=lambda m: m.id or 0)

    async def record_sent(
        self, channel: str, recipient: str, reply: Reply, via: str, at: datetime
    ) -> None:
        await self._session.execute(
            OUTBOX.insert().values(
                channel=channel,
                recipient=recipient,
                kind=OutboxKind.NOTICE.value,
                text=reply.text,
                options=[[o.id, o.label] for o in reply.options],
                state=OutboxState.SENT.value,
                attempts=1,
                not_before=_utc(at),
                created_at=_utc(at),
                sent_at=_utc(at),
                via=via,
            )
        )

    async def sent_since(self, channel: str, recipient: str, via: str, since: datetime) -> int:
        count = await self._session.scalar(
            select(func.count())
            .select_from(OUTBOX)
            .where(
                OUTBOX.c.channel == channel,
                OUTBOX.c.recipient == recipient,
                OUTBOX.c.state == OutboxState.SENT.value,
                OUTBOX.c.via == via,
                OUTBOX.c.sent_at >= _utc(since),
            )
        )
        return int(count or 0)

    async def for_recipient(self, channel: str, recipient: str) -> Sequence[OutboxMessage]:
        result = await self._session.execute(
            select(OUTBOX)
            .where(OUTBOX.c.channel == channel, OUTBOX.c.recipient == recipient)
            .order_by(OUTBOX.c.id)
        )
        return [_message(row) for row in result]


class SqlAlchemyOrderClaimRepository:
    """A lease per order in ``order_claims``: one conditional UPDATE decides who holds it."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def claim(self, order_id: int, owner: str, now: datetime, until: datetime) -> bool:
        await self._session.execute(
            _insert_or_ignore(
                self._session,
                CLAIMS,
                {"order_id": order_id, "owner": owner, "until": _utc(now)},
                ["order_id"],
            )
        )
        result = await self._session.execute(
            update(CLAIMS)
            .where(
                CLAIMS.c.order_id == order_id,
                (CLAIMS.c.owner == owner) | (CLAIMS.c.until <= _utc(now)),
            )
            .values(owner=owner, until=_utc(until))
            .returning(CLAIMS.c.order_id)
        )
        return result.one_or_none() is not None

    async def release(self, order_id: int, owner: str) -> None:
        await self._session.execute(
            delete(CLAIMS).where(CLAIMS.c.order_id == order_id, CLAIMS.c.owner == owner)
        )


__all__ = ["SqlAlchemyOrderClaimRepository", "SqlAlchemyOutboxRepository"]
