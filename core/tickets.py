"""Support tickets: a person asks for a human, staff take over, the ticket is resolved.

::

    open ──take──► taken ──resolve──► resolved
      ▲              │
      └──release─────┘        (transfer: taken → taken, another assignee)

A ticket belongs to one user and, when it is about an order, to that order. While it is taken,
the bot's flow for that user is paused and messages are relayed between the user and the staff
member; the user's conversation step is never changed by opening or taking a ticket, so that
resolving it resumes the user exactly where they stopped.

Timers (``SlaPolicy``): a first response is due ``first_response`` after opening, a resolution
``resolution`` after opening. When a timer runs out the staff are reminded once; when it is
overdue by ``escalate_after`` more, the admins are told once. :func:`sla_alerts` says which of
those is due now; the caller records that it sent them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import IntEnum, StrEnum
from typing import Any

from core.errors import UserError
from core.model import OrderStatus, Role


class TicketStatus(StrEnum):
    OPEN = "open"
    TAKEN = "taken"
    RESOLVED = "resolved"


class Outcome(StrEnum):
    """How staff resolve a ticket."""

    REQUOTE = "requote"  # a fresh quote for the order's card, which the user must accept
    APPROVE = "approve"  # an order waiting for manual review is approved
    REFUND = "refund"  # the order is withdrawn and the card released to its holder
    REJECT = "reject"  # the complaint is turned down (an order in review is rejected)
    ANSWERED = "answered"  # nothing to change: the question was answered


class Priority(IntEnum):
    NORMAL = 1
    HIGH = 2  # money is at stake: an order paying, failed or held for review


class Reason(StrEnum):
    QUOTE = "quote"
    PAYOUT = "payout"
    CARD = "card"
    OTHER = "other"


# Orders whose user is waiting for money we hold: their tickets jump the queue.
URGENT_ORDER_STATUSES = frozenset(
    {OrderStatus.PAYING, OrderStatus.PAYOUT_FAILED, OrderStatus.REVIEW, OrderStatus.REDEEMED}
)


class TicketError(UserError):
    """A staff command that cannot be carried out; the key says why (shown to staff only)."""


@dataclass(frozen=True)
class SlaPolicy:
    """Service-level timers, configurable per deployment."""

    first_response: timedelta = timedelta(minutes=15)
    resolution: timedelta = timedelta(hours=4)
    escalate_after: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class DeskPolicy:
    """Who works the desk and how fast: configured staff and admins (actors), extra chats
    told of new tickets (a Telegram staff group), and the timers."""

    staff: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()
    alert_chats: tuple[str, ...] = ()
    sla: SlaPolicy = field(default_factory=SlaPolicy)

    def configured_role(self, actor: str) -> Role:
        if actor in self.admins:
            return Role.ADMIN
        if actor in self.staff:
            return Role.STAFF
        return Role.CUSTOMER


@dataclass(frozen=True)
class Ticket:
    user_id: int
    channel: str  # where the user is
    user_key: str  # the user's id on that channel
    reason: Reason
    detail: str  # the user's words, redacted
    priority: Priority
    opened_at: datetime
    order_id: int | None = None
    status: TicketStatus = TicketStatus.OPEN
    assignee: str | None = None  # actor: "<channel>:<user id>" of the staff member
    taken_at: datetime | None = None  # when the assignee last took it up (their "current" one)
    first_response_at: datetime | None = None
    resolved_at: datetime | None = None
    outcome: Outcome | None = None
    resolution_note: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)  # masked: never a secret
    alerts: dict[str, str] = field(default_factory=dict)  # alert kind → when it was sent
    id: int | None = None

    @property
    def number(self) -> str:
        return f"T{self.id}"

    @property
    def is_active(self) -> bool:
        return self.status is not TicketStatus.RESOLVED


def priority_for(order_status: OrderStatus | None, reason: Reason) -> Priority:
    """High when money is at stake, whatever the reason given."""
    if order_status in URGENT_ORDER_STATUSES or reason is Reason.PAYOUT:
        return Priority.HIGH
    return Priority.NORMAL


def take(ticket: Ticket, staff: str, now: datetime) -> Ticket:
    """``staff`` takes the ticket (an open one, or their own again)."""
    if ticket.status is TicketStatus.RESOLVED:
        raise TicketError("desk.ticket_resolved", ticket=ticket.number)
    if ticket.status is TicketStatus.TAKEN and ticket.assignee != staff:
        raise TicketError("desk.ticket_taken_by", ticket=ticket.number, staff=ticket.assignee)
    return replace(
        ticket,
        status=TicketStatus.TAKEN,
        assignee=staff,
        taken_at=now,
        first_response_at=ticket.first_response_at or now,
    )


def release(ticket: Ticket, staff: str) -> Ticket:
    """The assignee hands the ticket back to the queue."""
    _check_assignee(ticket, staff)
    return replace(ticket, status=TicketStatus.OPEN, assignee=None, taken_at=None)


def transfer(ticket: Ticket, staff: str, to: str, now: datetime) -> Ticket:
    """The assignee passes the taken ticket to another staff member."""
    _check_assignee(ticket, staff)
    if to == staff:
        raise TicketError("desk.transfer_to_self", ticket=ticket.number)
    return replace(ticket, assignee=to, taken_at=now)


def resolve(ticket: Ticket, staff: str, outcome: Outcome, note: str, now: datetime) -> Ticket:
    """The assignee closes the ticket with an outcome and a message for the user."""
    _check_assignee(ticket, staff)
    return replace(
        ticket,
        status=TicketStatus.RESOLVED,
        outcome=outcome,
        resolution_note=note,
        resolved_at=now,
    )


def _check_assignee(ticket: Ticket, staff: str) -> None:
    if ticket.status is TicketStatus.RESOLVED:
        raise TicketError("desk.ticket_resolved", ticket=ticket.number)
    if ticket.status is not TicketStatus.TAKEN:
        raise TicketError("desk.ticket_not_taken", ticket=ticket.number)
    if ticket.assignee != staff:
        raise TicketError("desk.ticket_taken_by", ticket=ticket.number, staff=ticket.assignee)


# --------------------------------------------------------------------------------------------
# Timers


class AlertKind(StrEnum):
    FIRST_REMIND = "first_response.remind"
    FIRST_ESCALATE = "first_response.escalate"
    RESOLUTION_REMIND = "resolution.remind"
    RESOLUTION_ESCALATE = "resolution.escalate"

    @property
    def to_admins(self) -> bool:
        return self.value.endswith(".escalate")


def first_response_due(ticket: Ticket, policy: SlaPolicy) -> datetime:
    return ticket.opened_at + policy.first_response


def resolution_due(ticket: Ticket, policy: SlaPolicy) -> datetime:
    return ticket.opened_at + policy.resolution


def sla_alerts(ticket: Ticket, now: datetime, policy: SlaPolicy) -> list[AlertKind]:
    """The reminders and escalations due now and not yet sent for this ticket."""
    if not ticket.is_active:
        return []
    due: list[AlertKind] = []
    if ticket.first_response_at is None:
        deadline = first_response_due(ticket, policy)
        if now >= deadline:
            due.append(AlertKind.FIRST_REMIND)
        if now >= deadline + policy.escalate_after:
            due.append(AlertKind.FIRST_ESCALATE)
    deadline = resolution_due(ticket, policy)
    if now >= deadline:
        due.append(AlertKind.RESOLUTION_REMIND)
    if now >= deadline + policy.escalate_after:
        due.append(AlertKind.RESOLUTION_ESCALATE)
    return [kind for kind in due if kind.value not in ticket.alerts]


def with_alerts_sent(ticket: Ticket, kinds: list[AlertKind], now: datetime) -> Ticket:
    """The ticket with these alerts recorded as sent at ``now`` (never sent twice)."""
    alerts = dict(ticket.alerts)
    alerts.update({kind.value: now.isoformat() for kind in kinds})
    return replace(ticket, alerts=alerts)


def time_left(due: datetime, now: datetime) -> timedelta:
    """Signed: negative when overdue."""
    return due - now


def queue_order(tickets: list[Ticket]) -> list[Ticket]:
    """Active tickets, urgent first, then oldest first."""
    active = [t for t in tickets if t.is_active]
    return sorted(active, key=lambda t: (-int(t.priority), t.opened_at, t.id or 0))


def parse_actor(text: str) -> str | None:
    """``@telegram:123``, ``telegram:123`` → ``telegram:123``; anything else → None."""
    value = text.strip().lstrip("@")
    channel, sep, user = value.partition(":")
    if not sep or not channel.isalpha() or not user or any(c.isspace() for c in user):
        return None
    return f"{channel.lower()}:{user}"


@dataclass(frozen=True)
class TicketMessage:
    """One line of a ticket: a user's words (redacted), a staff reply, or a private note."""

    ticket_id: int
    at: datetime
    author: str  # "user" or a staff actor
    text: str
    private: bool = False
