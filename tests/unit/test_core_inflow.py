"""The inbound allowance: a burst, then a steady rate; one "slow down" per streak beyond it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.inflow import MAX_TRACKED, Admission, InboundAllowance


def test_a_burst_is_taken_whole_then_the_sender_is_told_once_and_the_rest_dropped() -> None:
    allowance = InboundAllowance(burst=5, per_minute=6)
    verdicts = [allowance.admit("alice", now=100.0) for _ in range(500)]
    assert verdicts[:5] == [Admission.ADMIT] * 5
    assert verdicts[5] is Admission.SLOW_DOWN
    assert set(verdicts[6:]) == {Admission.DROP}


def test_the_allowance_refills_at_its_rate_and_a_new_streak_is_told_again() -> None:
    allowance = InboundAllowance(burst=2, per_minute=6)  # one more every 10 s
    for _ in range(3):
        allowance.admit("alice", now=0.0)
    assert allowance.admit("alice", now=9.0) is Admission.DROP
    assert allowance.admit("alice", now=10.5) is Admission.ADMIT
    assert allowance.admit("alice", now=10.6) is Admission.SLOW_DOWN
    assert allowance.admit("alice", now=10.7) is Admission.DROP


def test_one_senders_flood_leaves_everyone_elses_allowance_alone() -> None:
    allowance = InboundAllowance(burst=3, per_minute=1)
    for _ in range(100):
        allowance.admit("flooder", now=0.0)
    assert [allowance.admit("bob", now=0.0) for _ in range(3)] == [Admission.ADMIT] * 3


def test_many_senders_do_not_grow_memory_without_bound() -> None:
    allowance = InboundAllowance(burst=1, per_minute=60)
    for n in range(MAX_TRACKED * 3):
        allowance.admit(f"user{n}", now=float(n))
    assert len(allowance._buckets) <= MAX_TRACKED


@given(
    burst=st.integers(1, 30),
    per_minute=st.floats(0.5, 120),
    gaps=st.lists(st.floats(0, 30), min_size=1, max_size=200),
)
def test_never_more_admitted_than_the_burst_plus_the_rate_allows(
    burst: int, per_minute: float, gaps: list[float]
) -> None:
    allowance = InboundAllowance(burst=burst, per_minute=per_minute)
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        admitted += allowance.admit("alice", now) is Admission.ADMIT
    assert admitted <= burst + now * per_minute / 60 + 1e-9
