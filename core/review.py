"""Manual review: orders the risk rules held wait here until a person approves or rejects them.

Approving makes the order APPROVED: settlement then runs as for any approved order (the bot's
background work redeems and pays, and tells the user). Rejecting ends it: the card has not been
redeemed, so nothing is taken and nothing is owed. Either way the decision, who made it and
the note are stored on the order and in the audit log, and the user is told once
(:func:`undisclosed_decisions` / :func:`mark_disclosed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from core.errors import PreconditionFailed
from core.model import Order, OrderStatus
from core.orders import transition
from core.ports import Clock, UnitOfWork

MAX_NOTE = 500


async def queue(uow: UnitOfWork) -> Sequence[Order]:
    """Orders waiting for a review decision, oldest first."""
    return list(await uow.orders.with_status([OrderStatus.REVIEW]))


async def decide(
    uow: UnitOfWork, clock: Clock, order_id: int, approve: bool, reviewer: str, note: str
) -> Order:
    """Approve or reject an order under review (under the order's lock). A rejection needs a
    note: the user is told why."""
    note = " ".join(note.split())[:MAX_NOTE]
    if not approve and not note:
        raise PreconditionFailed("a rejection needs a note the user can read")
    order = await uow.orders.lock(order_id)
    if order.status is not OrderStatus.REVIEW:
        raise PreconditionFailed(f"order {order.number} is {order.status.value}, not in review")
    now = clock.now()
    target = OrderStatus.APPROVED if approve else OrderStatus.REJECTED
    order = replace(
        transition(order, target, now), reviewed_at=now, reviewed_by=reviewer, review_note=note
    )
    await uow.orders.update(order)
    await uow.audit.append(
        now,
        reviewer,
        "review.approved" if approve else "review.rejected",
        f"order:{order.id}",
        {"note": note, "reasons": list(order.risk_reasons), "version": order.risk_version},
    )
    return order


async def undisclosed_decisions(uow: UnitOfWork) -> Sequence[Order]:
    """Reviewed orders whose user has not been told the decision yet, oldest first."""
    return await uow.orders.undisclosed_reviews()


async def mark_disclosed(uow: UnitOfWork, order_id: int, at: datetime) -> None:
    """Remember that the user has been told the decision about an order."""
    order = await uow.orders.lock(order_id)
    await uow.orders.update(replace(order, review_announced_at=at))
