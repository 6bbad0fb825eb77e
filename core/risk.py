"""Risk rules: approve, hold for manual review, or reject an order, with the reasons.

Rules are declarative and versioned; every decision carries the policy version that made it.

* ``risk.same_card`` → REJECT: the same physical card (by fingerprint) is already sold or in
  progress in another order, by anyone.
* ``risk.daily_amount`` → REVIEW: what the person already sold today (an Asia/Shanghai calendar
  day) plus this payout reaches the daily review threshold (50,000 CNY: the PBOC large-value
  threshold; structuring just below it is itself a signal for staff).

Every rule that fires is listed; the outcome is the most severe one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.model import RiskOutcome


def _shanghai_zone() -> tzinfo:
    try:
        return ZoneInfo("Asia/Shanghai")
    except ZoneInfoNotFoundError:
        # No tz database on this machine: China has kept UTC+8 without DST since 1991.
        return timezone(timedelta(hours=8), "Asia/Shanghai")


SHANGHAI = _shanghai_zone()

_SEVERITY = {RiskOutcome.APPROVE: 0, RiskOutcome.REVIEW: 1, RiskOutcome.REJECT: 2}


@dataclass(frozen=True)
class RiskFacts:
    """What the rules look at for one order (``day_total_fen`` excludes this order)."""

    user_id: int
    payout_fen: int
    card_fp: str
    same_card_orders: int  # other orders holding the same card (sold or in progress)
    same_card_other_users: int  # how many other people those orders belong to
    day_total_fen: int  # payouts of the person's other orders today, Asia/Shanghai


@dataclass(frozen=True)
class RiskPolicy:
    """Thresholds of the rules, and the version recorded with every decision."""

    daily_review_fen: int = 5_000_000
    version: str = "risk-1"


@dataclass(frozen=True)
class RiskDecision:
    """The outcome, every rule that fired (message keys), and the policy version."""

    outcome: RiskOutcome
    reasons: tuple[str, ...]
    version: str


def assess(facts: RiskFacts, policy: RiskPolicy) -> RiskDecision:
    """Apply the rules to one order's facts."""
    fired: list[tuple[RiskOutcome, str]] = []
    if facts.same_card_orders > 0 or facts.same_card_other_users > 0:
        fired.append((RiskOutcome.REJECT, "risk.same_card"))
    if facts.day_total_fen + facts.payout_fen >= policy.daily_review_fen:
        fired.append((RiskOutcome.REVIEW, "risk.daily_amount"))
    outcome = max((o for o, _ in fired), key=_SEVERITY.__getitem__, default=RiskOutcome.APPROVE)
    return RiskDecision(outcome, tuple(reason for _, reason in fired), policy.version)


def shanghai_date(now: datetime) -> date:
    """The Asia/Shanghai calendar date of an aware instant."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is required")
    return now.astimezone(SHANGHAI).date()


def shanghai_day_bounds(now: datetime) -> tuple[datetime, datetime]:
    """Start (inclusive) and end (exclusive), in UTC, of the Asia/Shanghai day holding ``now``."""
    day = shanghai_date(now)
    start = datetime(day.year, day.month, day.day, tzinfo=SHANGHAI)
    following = day + timedelta(days=1)
    end = datetime(following.year, following.month, following.day, tzinfo=SHANGHAI)
    return start.astimezone(UTC), end.astimezone(UTC)
