"""Risk rules and the Asia/Shanghai day."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.model import RiskOutcome
from core.risk import (
    RiskDecision,
    RiskFacts,
    RiskPolicy,
    RiskRulesError,
    assess,
    near_line_days,
    parse_policy,
    shanghai_date,
    shanghai_day_bounds,
    streak_suspends,
)

POLICY = RiskPolicy()
ROOT = Path(__file__).resolve().parents[2]


def facts(**changes: Any) -> RiskFacts:
    values = {
        "user_id": 7,
        "payout_fen": 45_900,
        "same_card_orders": 0,
        "same_card_other_users": 0,
        "day_total_fen": 0,
    }
    values.update(changes)
    return RiskFacts(card_fp="fp", **values)


def test_an_ordinary_order_is_approved_with_no_reasons() -> None:
    assert assess(facts(), POLICY) == RiskDecision(RiskOutcome.APPROVE, (), POLICY.version)


def test_the_daily_review_threshold_is_50000_yuan() -> None:
    assert POLICY.daily_review_fen == 5_000_000


def test_a_card_already_in_another_order_is_rejected_as_same_card() -> None:
    decision = assess(facts(same_card_orders=1), POLICY)
    assert decision.outcome is RiskOutcome.REJECT and decision.reasons == ("risk.same_card",)


def test_a_card_sold_by_another_person_is_rejected_as_same_card() -> None:
    decision = assess(facts(same_card_orders=1, same_card_other_users=1), POLICY)
    assert decision.outcome is RiskOutcome.REJECT and decision.reasons == ("risk.same_card",)


def test_49999_99_yuan_in_a_day_is_approved() -> None:
    assert assess(facts(payout_fen=4_999_999), POLICY).outcome is RiskOutcome.APPROVE
    decision = assess(facts(day_total_fen=4_000_000, payout_fen=999_999), POLICY)
    assert decision.outcome is RiskOutcome.APPROVE


def test_50000_00_yuan_in_a_day_goes_to_review() -> None:
    decision = assess(facts(payout_fen=5_000_000), POLICY)
    assert decision == RiskDecision(RiskOutcome.REVIEW, ("risk.daily_amount",), POLICY.version)
    decision = assess(facts(day_total_fen=4_000_000, payout_fen=1_000_000), POLICY)
    assert decision.outcome is RiskOutcome.REVIEW


def test_what_was_already_sold_today_counts_towards_the_threshold() -> None:
    assert (
        assess(facts(day_total_fen=4_999_999, payout_fen=1), POLICY).outcome is RiskOutcome.REVIEW
    )
    assert (
        assess(facts(day_total_fen=4_999_998, payout_fen=1), POLICY).outcome is RiskOutcome.APPROVE
    )


def test_when_several_rules_fire_the_worst_outcome_wins_and_every_reason_is_listed() -> None:
    decision = assess(facts(same_card_orders=2, payout_fen=6_000_000), POLICY)
    assert decision.outcome is RiskOutcome.REJECT
    assert decision.reasons == ("risk.same_card", "risk.daily_amount")


def test_every_decision_carries_the_policy_version() -> None:
    policy = RiskPolicy(daily_review_fen=100, version="risk-test-9")
    assert assess(facts(payout_fen=100), policy).version == "risk-test-9"


@given(st.integers(0, 10**9), st.integers(1, 10**9), st.integers(0, 3), st.integers(0, 3))
def test_the_outcome_follows_the_rules_for_any_facts(
    day_total: int, payout: int, same_card: int, others: int
) -> None:
    decision = assess(
        facts(
            day_total_fen=day_total,
            payout_fen=payout,
            same_card_orders=same_card,
            same_card_other_users=others,
        ),
        POLICY,
    )
    if same_card or others:
        assert decision.outcome is RiskOutcome.REJECT
    elif day_total + payout >= POLICY.daily_review_fen:
        assert decision.outcome is RiskOutcome.REVIEW
    else:
        assert decision.outcome is RiskOutcome.APPROVE and decision.reasons == ()


# --------------------------------------------------------------------------------------------
# The other rules

TODAY = date(2026, 11, 22)


def test_structuring_just_under_the_line_on_three_days_in_a_week_goes_to_review() -> None:
    near = {TODAY - timedelta(days=2): 4_600_000, TODAY - timedelta(days=5): 4_999_999}
    # Today this order brings the total into the band too: the third day.
    decision = assess(
        facts(
            day_total_fen=4_000_000, payout_fen=600_000, daily_totals={**near, TODAY: 4_000_000}
        ),
        POLICY,
        TODAY,
    )
    assert decision.outcome is RiskOutcome.REVIEW and decision.reasons == ("risk.structuring",)
    # Two days only, or one of them out of the 7-day window: nothing.
    assert assess(facts(payout_fen=100, daily_totals=near), POLICY, TODAY).reasons == ()
    old = {**near, TODAY - timedelta(days=7): 4_600_000}
    assert assess(facts(payout_fen=100, daily_totals=old), POLICY, TODAY).reasons == ()
    # Reaching the line is the daily rule, not structuring.
    over = assess(
        facts(
            day_total_fen=4_600_000, payout_fen=400_000, daily_totals={**near, TODAY: 4_600_000}
        ),
        POLICY,
        TODAY,
    )
    assert over.reasons == ("risk.daily_amount",)


def test_near_line_days_counts_the_band_below_the_line_only() -> None:
    totals = {TODAY: 4_499_999, TODAY - timedelta(days=1): 4_500_000}
    assert near_line_days(totals, TODAY, 0, POLICY) == 1
    assert near_line_days(totals, TODAY, 1, POLICY) == 2
    assert near_line_days({TODAY: 4_999_999}, TODAY, 1, POLICY) == 0


def test_more_than_ten_cards_in_half_an_hour_goes_to_review() -> None:
    assert assess(facts(recent_cards=10), POLICY).reasons == ()
    decision = assess(facts(recent_cards=11), POLICY)
    assert decision.outcome is RiskOutcome.REVIEW and decision.reasons == ("risk.velocity",)


def test_an_id_or_account_shared_with_someone_else_goes_to_review() -> None:
    assert assess(facts(shared_id_users=1), POLICY).reasons == ("risk.shared_id",)
    assert assess(facts(shared_account_people=2), POLICY).reasons == ("risk.shared_account",)


def test_a_blacklisted_id_account_or_card_is_rejected() -> None:
    decision = assess(facts(blacklisted=("payout_account",)), POLICY)
    assert decision.outcome is RiskOutcome.REJECT and decision.reasons == ("risk.blacklisted",)


def test_a_large_payout_from_a_brand_new_account_is_held() -> None:
    young = timedelta(hours=23, minutes=59)
    assert assess(facts(account_age=young, payout_fen=199_999), POLICY).reasons == ()
    decision = assess(facts(account_age=young, payout_fen=200_000), POLICY)
    assert decision.reasons == ("risk.new_account",)
    assert assess(facts(account_age=timedelta(hours=24), payout_fen=200_000), POLICY).reasons == ()


def test_five_failures_in_thirty_minutes_suspend() -> None:
    now = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
    four = [now - timedelta(minutes=m) for m in (1, 5, 10, 29)]
    assert not streak_suspends(four, now, POLICY)
    assert streak_suspends([*four, now], now, POLICY)
    stale = [*four, now - timedelta(minutes=31)]
    assert not streak_suspends(stale, now, POLICY)


def test_the_shipped_rules_file_parses_to_the_documented_rules() -> None:
    policy = parse_policy((ROOT / "bot" / "risk.toml").read_text(encoding="utf-8"))
    assert policy.version == "2026-12-04.1"
    assert replace(policy, version=POLICY.version) == POLICY


def test_a_rule_left_out_of_the_file_is_off() -> None:
    policy = parse_policy('version = "v-min"\n')
    assert policy.structuring is None and policy.velocity is None and policy.blacklist is None
    assert policy.daily_review_fen == 5_000_000
    assert assess(facts(recent_cards=99, shared_id_users=3), policy).reasons == ()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("nonsense = [", "not valid TOML"),
        ("[velocity]\nmax_cards = 3", "version"),
        ('version = "v"\n[velocity]\nmax_cards = "ten"', "velocity.max_cards"),
        ('version = "v"\n[velocity]\nmax_cards = -1', "velocity.max_cards"),
        ('version = "v"\n[velocity]\noutcome = "approve"', "must review or reject"),
        ('version = "v"\n[velocity]\noutcome = "maybe"', "velocity.outcome"),
        ('version = "v"\n[velocity]\nmax_card = 3', "unknown keys"),
        ('version = "v"\n[weather]\nrain = 1', "unknown"),
        ('version = "v"\n[structuring]\nband_low_fen = 6000000', "below the daily"),
    ],
)
def test_a_malformed_rules_file_is_refused_with_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(RiskRulesError, match=complaint):
        parse_policy(text)


# --------------------------------------------------------------------------------------------
# The Asia/Shanghai day


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_the_shanghai_day_starts_at_16_00_utc_the_day_before() -> None:
    assert shanghai_day_bounds(utc(2026, 11, 22, 6, 0)) == (
        utc(2026, 11, 21, 16, 0),
        utc(2026, 11, 22, 16, 0),
    )


def test_one_second_before_shanghai_midnight_is_still_the_same_day() -> None:
    start, end = shanghai_day_bounds(utc(2026, 11, 22, 15, 59, 59))
    assert (start, end) == (utc(2026, 11, 21, 16, 0), utc(2026, 11, 22, 16, 0))
    assert shanghai_date(utc(2026, 11, 22, 15, 59, 59)).isoformat() == "2026-11-22"


def test_shanghai_midnight_starts_a_new_day() -> None:
    start, end = shanghai_day_bounds(utc(2026, 11, 22, 16, 0))
    assert (start, end) == (utc(2026, 11, 22, 16, 0), utc(2026, 11, 23, 16, 0))
    assert shanghai_date(utc(2026, 11, 22, 16, 0)).isoformat() == "2026-11-23"


def test_orders_either_side_of_utc_midnight_fall_in_one_shanghai_day() -> None:
    before = shanghai_day_bounds(utc(2026, 11, 22, 23, 30))
    after = shanghai_day_bounds(utc(2026, 11, 23, 0, 30))
    assert before == after == (utc(2026, 11, 22, 16, 0), utc(2026, 11, 23, 16, 0))


def test_bounds_are_utc_whatever_zone_now_is_given_in() -> None:
    beijing = timezone(timedelta(hours=8))
    start, end = shanghai_day_bounds(datetime(2026, 11, 23, 0, 30, tzinfo=beijing))
    assert start.utcoffset() == timedelta(0) and end.utcoffset() == timedelta(0)
    assert start == utc(2026, 11, 22, 16, 0)


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError):
        shanghai_day_bounds(datetime(2026, 11, 22, 6, 0))


@given(st.datetimes(min_value=datetime(1995, 1, 1), max_value=datetime(2100, 1, 1)))
def test_now_always_lies_in_a_24_hour_day_starting_at_shanghai_midnight(naive: datetime) -> None:
    now = naive.replace(tzinfo=UTC)
    start, end = shanghai_day_bounds(now)
    assert start <= now < end
    assert end - start == timedelta(hours=24)
    assert (start.hour, start.minute, start.second, start.microsecond) == (16, 0, 0, 0)


def test_wrong_secrets_by_other_people_hold_the_sale_for_review_from_the_threshold() -> None:
    assert "risk.card_guessed" not in assess(facts(card_wrong_secrets_by_others=4), POLICY).reasons
    decision = assess(facts(card_wrong_secrets_by_others=5), POLICY)
    assert decision.outcome is RiskOutcome.REVIEW
    assert decision.reasons == ("risk.card_guessed",)


def test_the_card_secret_rule_is_always_on_and_its_table_tunes_it() -> None:
    assert parse_policy('version = "v-min"\n').card_secret == POLICY.card_secret
    tuned = parse_policy(
        'version = "v"\n[card_secret]\nper_person = 3\nwindow_hours = 12\nreview_at = 2\n'
        'outcome = "reject"\n'
    )
    assert tuned.card_secret.per_person == 3 and tuned.card_secret.window_hours == 12
    decision = assess(facts(card_wrong_secrets_by_others=2), tuned)
    assert decision.outcome is RiskOutcome.REJECT
    with pytest.raises(RiskRulesError, match="card_secret"):
        parse_policy('version = "v"\n[card_secret]\nreview_at = 0\n')
    with pytest.raises(RiskRulesError, match="unknown keys"):
        parse_policy('version = "v"\n[card_secret]\nlock_everyone = true\n')


def test_the_amount_rules_judge_the_sale_amount_a_batch_passes_in() -> None:
    """A batch passes its whole payout: eleven ¥195 cards are one ¥2,145 sale."""
    young = timedelta(hours=1)
    one_card = facts(payout_fen=19_500, account_age=young)
    assert assess(one_card, POLICY).outcome is RiskOutcome.APPROVE
    whole_batch = facts(payout_fen=11 * 19_500, account_age=young)
    assert assess(whole_batch, POLICY).reasons == ("risk.new_account",)
