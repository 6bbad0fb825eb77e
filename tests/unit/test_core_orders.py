"""The order state machine."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from core.errors import IllegalTransition
from core.model import Order, OrderStatus
from core.orders import ACTIVE_STATUSES, ALLOWED, TERMINAL_STATUSES, can_transition, transition

S = OrderStatus
T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)

# Written out independently of core.orders, from the product's description of the lifecycle.
EXPECTED = {
    (S.QUOTED, S.ACCEPTED),
    (S.QUOTED, S.CANCELLED),
    (S.QUOTED, S.EXPIRED),
    (S.ACCEPTED, S.REVIEW),
    (S.ACCEPTED, S.APPROVED),
    (S.ACCEPTED, S.REJECTED),
    (S.ACCEPTED, S.CANCELLED),
    (S.ACCEPTED, S.EXPIRED),
    (S.ACCEPTED, S.QUOTED),
    (S.REVIEW, S.APPROVED),
    (S.REVIEW, S.REJECTED),
    (S.REVIEW, S.CANCELLED),
    (S.APPROVED, S.REDEEMED),
    (S.APPROVED, S.CANCELLED),
    (S.REDEEMED, S.PAYING),
    (S.PAYING, S.SETTLED),
    (S.PAYING, S.PAYOUT_FAILED),
    (S.PAYOUT_FAILED, S.PAYING),
}


def order(status: OrderStatus = S.QUOTED) -> Order:
    return Order(
        user_id=7,
        channel="console",
        card_id=1,
        quote_id=1,
        brand="walmart",
        card_fp="fp",
        card_masked="2326 **** **** 9136",
        face_value_fen=50_000,
        balance_fen=50_000,
        payout_fen=45_900,
        fee_fen=100,
        status=status,
        created_at=T0,
        updated_at=T0,
        id=42,
    )


@pytest.mark.parametrize(
    ("current", "target"),
    list(itertools.product(OrderStatus, OrderStatus)),
    ids=lambda s: s.value,
)
def test_every_status_pair_is_allowed_exactly_when_the_lifecycle_says_so(
    current: OrderStatus, target: OrderStatus
) -> None:
    later = T0 + timedelta(minutes=1)
    if (current, target) in EXPECTED:
        moved = transition(order(current), target, later)
        assert moved.status is target and moved.updated_at == later
    else:
        with pytest.raises(IllegalTransition):
            transition(order(current), target, later)
    assert can_transition(current, target) == ((current, target) in EXPECTED)


def test_the_table_covers_every_status() -> None:
    assert set(ALLOWED) == set(OrderStatus)


def test_settled_rejected_cancelled_and_expired_are_terminal() -> None:
    assert {S.SETTLED, S.REJECTED, S.CANCELLED, S.EXPIRED} == TERMINAL_STATUSES


def test_active_statuses_are_all_but_cancelled_expired_and_rejected() -> None:
    assert set(OrderStatus) - {S.CANCELLED, S.EXPIRED, S.REJECTED} == ACTIVE_STATUSES
    assert S.SETTLED in ACTIVE_STATUSES


def test_settling_records_when_it_happened() -> None:
    at = T0 + timedelta(hours=1)
    settled = transition(order(S.PAYING), S.SETTLED, at)
    assert settled.settled_at == at and settled.updated_at == at


def test_a_transition_changes_nothing_but_status_and_times() -> None:
    before = order(S.QUOTED)
    after = transition(before, S.ACCEPTED, T0 + timedelta(seconds=5))
    assert replace(after, status=before.status, updated_at=before.updated_at) == before


def test_a_redeemed_or_paying_order_cannot_be_cancelled() -> None:
    for status in (S.REDEEMED, S.PAYING, S.SETTLED):
        with pytest.raises(IllegalTransition):
            transition(order(status), S.CANCELLED, T0)


def test_an_illegal_transition_names_the_order_and_both_statuses() -> None:
    with pytest.raises(IllegalTransition, match=r"CB00000042: settled → paying"):
        transition(order(S.SETTLED), S.PAYING, T0)


class OrderLifecycle(RuleBasedStateMachine):
    """Random moves against one order: allowed ones happen, the rest are refused unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.order = order()
        self.clock = T0
        self.history = [self.order.status]

    @rule(status=st.sampled_from(list(OrderStatus)), minutes=st.integers(0, 60))
    def move(self, status: OrderStatus, minutes: int) -> None:
        self.clock += timedelta(minutes=minutes)
        before = self.order
        if (before.status, status) in EXPECTED:
            self.order = transition(before, status, self.clock)
            self.history.append(status)
        else:
            with pytest.raises(IllegalTransition):
                transition(before, status, self.clock)
            assert self.order is before

    @invariant()
    def settled_at_is_set_exactly_when_settled(self) -> None:
        assert (self.order.settled_at is not None) == (self.order.status is S.SETTLED)

    @invariant()
    def time_never_runs_backwards(self) -> None:
        assert self.order.created_at <= self.order.updated_at <= self.clock

    @invariant()
    def nothing_follows_a_terminal_status(self) -> None:
        for status in self.history[:-1]:
            assert status not in TERMINAL_STATUSES

    @invariant()
    def a_payout_is_retried_only_after_a_confirmed_failure(self) -> None:
        for previous, current in itertools.pairwise(self.history):
            if current is S.PAYING:
                assert previous in (S.REDEEMED, S.PAYOUT_FAILED)


TestOrderLifecycle = OrderLifecycle.TestCase
