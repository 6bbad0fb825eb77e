"""Repositories of the desk: tickets and their lines, granted roles."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.model import Role
from core.tickets import Outcome, Priority, Reason, Ticket, TicketMessage, TicketStatus
from storage.repositories import _utc, _utc_or_none
from storage.tables import RoleGrantRow, TicketMessageRow, TicketRow

_ACTIVE = (TicketStatus.OPEN.value, TicketStatus.TAKEN.value)


def _ticket(row: TicketRow) -> Ticket:
    return Ticket(
        id=row.id,
        user_id=row.user_id,
        channel=row.channel,
        user_key=row.user_key,
        order_id=row.order_id,
        reason=Reason(row.reason),
        detail=row.detail,
        priority=Priority(row.priority),
        status=TicketStatus(row.status),
        assignee=row.assignee,
        opened_at=row.opened_at,
        taken_at=row.taken_at,
        first_response_at=row.first_response_at,
        resolved_at=row.resolved_at,
        outcome=Outcome(row.outcome) if row.outcome else None,
        resolution_note=row.resolution_note,
        evidence=dict(row.evidence),
        alerts=dict(row.alerts),
    )


def _fill(row: TicketRow, ticket: Ticket) -> None:
    row.user_id = ticket.user_id
    row.channel = ticket.channel
    row.user_key = ticket.user_key
    row.order_id = ticket.order_id
    row.reason = ticket.reason.value
    row.detail = ticket.detail[:500]
    row.priority = int(ticket.priority)
    row.status = ticket.status.value
    row.assignee = ticket.assignee
    row.opened_at = _utc(ticket.opened_at)
    row.taken_at = _utc_or_none(ticket.taken_at)
    row.first_response_at = _utc_or_none(ticket.first_response_at)
    row.resolved_at = _utc_or_none(ticket.resolved_at)
    row.outcome = ticket.outcome.value if ticket.outcome else None
    row.resolution_note = ticket.resolution_note[:500] if ticket.resolution_note else None
    row.evidence = dict(ticket.evidence)
    row.alerts = dict(ticket.alerts)


class SqlAlchemyTicketRepository:
    """Tickets and their lines."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, ticket: Ticket) -> Ticket:
        row = TicketRow()
        _fill(row, ticket)
        self._session.add(row)
        await self._session.flush()
        return _ticket(row)

    async def get(self, ticket_id: int, lock: bool = False) -> Ticket | None:
        # FOR NO KEY UPDATE: a user's message adding a line to the ticket (a foreign key to
        # it) does not wait for staff working on the ticket.
        row = await self._session.get(
            TicketRow,
            ticket_id,
            with_for_update={"key_share": True} if lock else None,
            populate_existing=lock,
        )
        return None if row is None else _ticket(row)

    async def update(self, ticket: Ticket) -> None:
        assert ticket.id is not None
        row = await self._session.get(TicketRow, ticket.id)
        if row is None:
            raise LookupError(f"ticket {ticket.id}")
        _fill(row, ticket)
        await self._session.flush()

    async def active_for_user(self, user_id: int) -> Ticket | None:
        row = await self._session.scalar(
            select(TicketRow)
            .where(TicketRow.user_id == user_id, TicketRow.status.in_(_ACTIVE))
            .order_by(TicketRow.id.desc())
            .limit(1)
        )
        return None if row is None else _ticket(row)

    async def current_for(self, staff: str) -> Ticket | None:
        row = await self._session.scalar(
            select(TicketRow)
            .where(TicketRow.assignee == staff, TicketRow.status == TicketStatus.TAKEN.value)
            .order_by(TicketRow.taken_at.desc(), TicketRow.id.desc())
            .limit(1)
        )
        return None if row is None else _ticket(row)

    async def active(self) -> Sequence[Ticket]:
        rows = await self._session.scalars(
            select(TicketRow).where(TicketRow.status.in_(_ACTIVE)).order_by(TicketRow.id)
        )
        return [_ticket(r) for r in rows]

    async def add_message(self, message: TicketMessage) -> None:
        self._session.add(
            TicketMessageRow(
                ticket_id=message.ticket_id,
                at=_utc(message.at),
                author=message.author,
                text=message.text,
                private=message.private,
            )
        )
        await self._session.flush()

    async def messages(self, ticket_id: int) -> Sequence[TicketMessage]:
        rows = await self._session.scalars(
            select(TicketMessageRow)
            .where(TicketMessageRow.ticket_id == ticket_id)
            .order_by(TicketMessageRow.id)
        )
        return [TicketMessage(r.ticket_id, r.at, r.author, r.text, r.private) for r in rows]


class SqlAlchemyRoleGrantRepository:
    """Roles granted in chat (configured roles live in the settings, not here)."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def role_of(self, actor: str) -> Role | None:
        row = await self._session.get(RoleGrantRow, actor)
        return None if row is None else Role(row.role)

    async def grant(self, actor: str, role: Role, by: str, at: datetime) -> None:
        row = await self._session.get(RoleGrantRow, actor)
        if row is None:
            self._session.add(
                RoleGrantRow(actor=actor, role=role.value, granted_by=by, granted_at=_utc(at))
            )
        else:
            row.role, row.granted_by, row.granted_at = role.value, by, _utc(at)
        await self._session.flush()

    async def revoke(self, actor: str) -> bool:
        row = await self._session.get(RoleGrantRow, actor)
        if row is None:
            return False
        await self._session.delete(row)
        await self._session.flush()
        return True

    async def holders(self) -> Sequence[tuple[str, Role]]:
        rows = await self._session.scalars(select(RoleGrantRow).order_by(RoleGrantRow.actor))
        return [(r.actor, Role(r.role)) for r in rows]


__all__ = [
    "SqlAlchemyRoleGrantRepository",
    "SqlAlchemyTicketRepository",
]
