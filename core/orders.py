"""The order state machine: which status may follow which, and the one way to move.

::

    quoted ──► accepted ──► approved ──► redeemed ──► paying ──► settled
      │  ▲        │  │          ▲  │                    ▲  │
      │  └────────┘  └► review ─┘  └► cancelled          │  ▼
      │  (re-quote)       │                          payout_failed
      ▼                   ▼                          (retry: a NEW payout, only after a
    cancelled / expired  rejected / cancelled         provider-confirmed failure)

An accepted order may also be rejected by risk, cancelled, or expire when its quote lapsed.
Settled, rejected, cancelled and expired are terminal. A redeemed or paying order can no
longer be cancelled: the card's balance has been taken.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from types import MappingProxyType

from core.errors import IllegalTransition
from core.model import Order, OrderStatus

_S = OrderStatus

ALLOWED: MappingProxyType[OrderStatus, frozenset[OrderStatus]] = MappingProxyType(
    {
        _S.QUOTED: frozenset({_S.ACCEPTED, _S.CANCELLED, _S.EXPIRED}),
        _S.ACCEPTED: frozenset(
            {_S.REVIEW, _S.APPROVED, _S.REJECTED, _S.CANCELLED, _S.EXPIRED, _S.QUOTED}
        ),
        _S.REVIEW: frozenset({_S.APPROVED, _S.REJECTED, _S.CANCELLED}),
        _S.APPROVED: frozenset({_S.REDEEMED, _S.CANCELLED}),
        _S.REDEEMED: frozenset({_S.PAYING}),
        _S.PAYING: frozenset({_S.SETTLED, _S.PAYOUT_FAILED}),
        _S.PAYOUT_FAILED: frozenset({_S.PAYING}),
        _S.SETTLED: frozenset(),
        _S.REJECTED: frozenset(),
        _S.CANCELLED: frozenset(),
        _S.EXPIRED: frozenset(),
    }
)

TERMINAL_STATUSES = frozenset(status for status, targets in ALLOWED.items() if not targets)

# Orders that count: everything but the ones that ended without a sale.
ACTIVE_STATUSES = frozenset(OrderStatus) - {_S.CANCELLED, _S.EXPIRED, _S.REJECTED}


def can_transition(current: OrderStatus, to: OrderStatus) -> bool:
    """Whether ``to`` may follow ``current``."""
    return to in ALLOWED[current]


def transition(order: Order, to: OrderStatus, at: datetime) -> Order:
    """The order moved to ``to`` at ``at`` (settled also sets settled_at); IllegalTransition."""
    if not can_transition(order.status, to):
        raise IllegalTransition(f"order {order.number}: {order.status.value} → {to.value}")
    if to is _S.SETTLED:
        return replace(order, status=to, updated_at=at, settled_at=at)
    return replace(order, status=to, updated_at=at)
