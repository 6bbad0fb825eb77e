"""Risk rules: approve, hold for manual review, or reject an order — with the reasons.

The rules are declarative: thresholds, windows and outcomes come from a versioned file
(``risk.toml``, parsed by :func:`parse_policy`), and every decision stores the reasons (message
keys) and the version of the rules that made it. The facts are gathered by the sale from
storage; this module only decides. A *person* is everyone behind one verified resident ID:
their accounts on every channel count together.

Rules (each can be switched off by leaving its table out of the file, except the daily amount):

* ``risk.same_card`` — the same physical card (by fingerprint) is already sold or in progress
  in another order, by anyone.
* ``risk.daily_amount`` — the person's payouts today (an Asia/Shanghai calendar day, every
  channel) plus this one reach the review line (50,000 CNY: the PBOC large-value threshold).
* ``risk.structuring`` — on several recent days the person's total stopped just under that
  line (e.g. ≥ 3 days within 7 in 45,000–49,999.99 CNY): splitting to stay below it.
* ``risk.velocity`` — too many cards quoted by the person in a short window.
* ``risk.shared_id`` — the resident ID is verified on another account under another name.
* ``risk.shared_account`` — the payout account is used by someone with another ID.
* ``risk.blacklisted`` — the ID, the payout account or the card is on the blacklist.
* ``risk.new_account`` — a large payout from an account opened only hours ago.
* ``risk.card_guessed`` — other people got this card's secret wrong lately: whoever now has
  the right one may have guessed it. The card is never locked for everyone (anyone who knows
  a number could then lock its owner out): one person is refused a card after
  ``card_secret.per_person`` wrong secrets, and the sale is held for review instead. Like
  the daily amount, this rule is always on; its table only tunes it.

Amount rules (daily amount, structuring, new account) see a batch as one sale: the amount is
the whole batch's payout, and the batch's own cards are not counted again in the day.

Streaks (wrong card secrets, used cards) are checked when they happen, not at submission:
:func:`streak_suspends` says whether the person is suspended for a while.

Every rule that fires is listed; the outcome is the most severe one.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any
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


class RiskRulesError(ValueError):
    """The rules file is malformed: which key, and what was expected."""


# --------------------------------------------------------------------------------------------
# The rules


@dataclass(frozen=True)
class StructuringRule:
    band_low_fen: int = 4_500_000  # a day totalling from here up to the review line counts
    min_days: int = 3
    window_days: int = 7
    outcome: RiskOutcome = RiskOutcome.REVIEW


@dataclass(frozen=True)
class VelocityRule:
    max_cards: int = 10  # more cards than this quoted within the window fires
    window_minutes: int = 30
    outcome: RiskOutcome = RiskOutcome.REVIEW


@dataclass(frozen=True)
class StreakRule:
    max_failures: int = 5  # wrong secrets or used cards within the window suspend the person
    window_minutes: int = 30
    suspend_hours: int = 24


@dataclass(frozen=True)
class SharedRule:
    id_number: RiskOutcome = RiskOutcome.REVIEW
    payout_account: RiskOutcome = RiskOutcome.REVIEW


@dataclass(frozen=True)
class NewAccountRule:
    hours: int = 24
    min_payout_fen: int = 200_000  # payouts from here up, from an account younger than hours
    outcome: RiskOutcome = RiskOutcome.REVIEW


@dataclass(frozen=True)
class CardSecretRule:
    per_person: int = 5  # wrong secrets for one card by one account before it is refused
    window_hours: int = 24
    review_at: int = 5  # wrong secrets for the card by other people: a sale of it is held
    outcome: RiskOutcome = RiskOutcome.REVIEW


@dataclass(frozen=True)
class RiskPolicy:
    """The rules in force, and the version recorded with every decision."""

    version: str = "risk-default-1"
    daily_review_fen: int = 5_000_000
    structuring: StructuringRule | None = field(default_factory=StructuringRule)
    velocity: VelocityRule | None = field(default_factory=VelocityRule)
    streak: StreakRule | None = field(default_factory=StreakRule)
    shared: SharedRule | None = field(default_factory=SharedRule)
    blacklist: RiskOutcome | None = RiskOutcome.REJECT
    new_account: NewAccountRule | None = field(default_factory=NewAccountRule)
    # Identity levels: with name, ID and phone only (L1), a person sells up to this much a
    # day (Asia/Shanghai); more needs a bank card in their name (L2). None: no L1 limit.
    l1_daily_fen: int | None = 1_000_000
    card_secret: CardSecretRule = field(default_factory=CardSecretRule)

    @property
    def history_days(self) -> int:
        """How far back the facts must reach for these rules."""
        return max(1, self.structuring.window_days if self.structuring else 1)


def _outcome(value: Any, where: str) -> RiskOutcome:
    try:
        outcome = RiskOutcome(str(value))
    except ValueError:
        raise RiskRulesError(f"{where}: expected review or reject, got {value!r}") from None
    if outcome is RiskOutcome.APPROVE:
        raise RiskRulesError(f"{where}: a rule that fires must review or reject")
    return outcome


def _int(table: Mapping[str, Any], key: str, where: str, default: int, minimum: int = 0) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RiskRulesError(f"{where}.{key}: expected an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RiskRulesError(f"[{key}] must be a table")
    unknown = set(value) - _KNOWN_KEYS[key]
    if unknown:
        raise RiskRulesError(f"[{key}]: unknown keys {sorted(unknown)}")
    return value


_KNOWN_KEYS = {
    "daily_amount": {"review_at_fen"},
    "structuring": {"band_low_fen", "min_days", "window_days", "outcome"},
    "velocity": {"max_cards", "window_minutes", "outcome"},
    "streak": {"max_failures", "window_minutes", "suspend_hours"},
    "shared": {"id_number", "payout_account"},
    "blacklist": {"outcome"},
    "new_account": {"hours", "min_payout_fen", "outcome"},
    "identity": {"l1_daily_fen"},
    "card_secret": {"per_person", "window_hours", "review_at", "outcome"},
}


def parse_policy(text: str) -> RiskPolicy:
    """The rules from ``risk.toml`` text; RiskRulesError names what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RiskRulesError(f"not valid TOML: {exc}") from None
    unknown = set(data) - {"version", *_KNOWN_KEYS}
    if unknown:
        raise RiskRulesError(f"unknown tables or keys {sorted(unknown)}")
    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        raise RiskRulesError("version: a non-empty string is required (decisions record it)")
    daily = _table(data, "daily_amount") or {}
    daily_review = _int(daily, "review_at_fen", "daily_amount", 5_000_000, minimum=1)
    policy = RiskPolicy(
        version=version.strip(),
        daily_review_fen=daily_review,
        structuring=None,
        velocity=None,
        streak=None,
        shared=None,
        blacklist=None,
        new_account=None,
        l1_daily_fen=None,
    )
    if (t := _table(data, "identity")) is not None and "l1_daily_fen" in t:
        policy = _with(
            policy, l1_daily_fen=_int(t, "l1_daily_fen", "identity", 1_000_000, minimum=1)
        )
    if (t := _table(data, "structuring")) is not None:
        low = _int(t, "band_low_fen", "structuring", 4_500_000, minimum=1)
        if low >= daily_review:
            raise RiskRulesError("structuring.band_low_fen must be below the daily review line")
        policy = _with(
            policy,
            structuring=StructuringRule(
                band_low_fen=low,
                min_days=_int(t, "min_days", "structuring", 3, minimum=1),
                window_days=_int(t, "window_days", "structuring", 7, minimum=1),
                outcome=_outcome(t.get("outcome", "review"), "structuring.outcome"),
            ),
        )
    if (t := _table(data, "velocity")) is not None:
        policy = _with(
            policy,
            velocity=VelocityRule(
                max_cards=_int(t, "max_cards", "velocity", 10, minimum=1),
                window_minutes=_int(t, "window_minutes", "velocity", 30, minimum=1),
                outcome=_outcome(t.get("outcome", "review"), "velocity.outcome"),
            ),
        )
    if (t := _table(data, "streak")) is not None:
        policy = _with(
            policy,
            streak=StreakRule(
                max_failures=_int(t, "max_failures", "streak", 5, minimum=1),
                window_minutes=_int(t, "window_minutes", "streak", 30, minimum=1),
                suspend_hours=_int(t, "suspend_hours", "streak", 24, minimum=1),
            ),
        )
    if (t := _table(data, "shared")) is not None:
        policy = _with(
            policy,
            shared=SharedRule(
                id_number=_outcome(t.get("id_number", "review"), "shared.id_number"),
                payout_account=_outcome(
                    t.get("payout_account", "review"), "shared.payout_account"
                ),
            ),
        )
    if (t := _table(data, "blacklist")) is not None:
        policy = _with(policy, blacklist=_outcome(t.get("outcome", "reject"), "blacklist"))
    if (t := _table(data, "new_account")) is not None:
        policy = _with(
            policy,
            new_account=NewAccountRule(
                hours=_int(t, "hours", "new_account", 24, minimum=1),
                min_payout_fen=_int(t, "min_payout_fen", "new_account", 200_000, minimum=1),
                outcome=_outcome(t.get("outcome", "review"), "new_account.outcome"),
            ),
        )
    if (t := _table(data, "card_secret")) is not None:
        policy = _with(
            policy,
            card_secret=CardSecretRule(
                per_person=_int(t, "per_person", "card_secret", 5, minimum=1),
                window_hours=_int(t, "window_hours", "card_secret", 24, minimum=1),
                review_at=_int(t, "review_at", "card_secret", 5, minimum=1),
                outcome=_outcome(t.get("outcome", "review"), "card_secret.outcome"),
            ),
        )
    return policy


def _with(policy: RiskPolicy, **changes: Any) -> RiskPolicy:
    return replace(policy, **changes)


# --------------------------------------------------------------------------------------------
# Facts and the decision


@dataclass(frozen=True)
class RiskFacts:
    """What the rules look at for one order. Amounts and counts exclude this order.

    ``payout_fen``: the sale's payout — one card's, or a whole batch's (its cards are then
    excluded from ``day_total_fen`` and ``daily_totals``).

    ``daily_totals``: the person's payouts per Asia/Shanghai day over the structuring window
    (today included, this order excluded). ``blacklisted``: which of the order's identifiers
    are blacklisted (``id_number``, ``payout_account``, ``card``)."""

    user_id: int
    payout_fen: int
    card_fp: str
    same_card_orders: int  # other orders holding the same card (sold or in progress)
    same_card_other_users: int  # how many other people those orders belong to
    day_total_fen: int  # payouts of the person's other orders today, Asia/Shanghai
    daily_totals: Mapping[date, int] = field(default_factory=dict)
    recent_cards: int = 0  # cards the person had quoted within the velocity window
    shared_id_users: int = 0  # other accounts verified with the same ID under another name
    shared_account_people: int = 0  # other IDs whose people use the same payout account
    blacklisted: tuple[str, ...] = ()
    account_age: timedelta = timedelta(days=365)
    card_wrong_secrets_by_others: int = 0  # within the card-secret window, by other people


@dataclass(frozen=True)
class RiskDecision:
    """The outcome, every rule that fired (message keys), and the policy version."""

    outcome: RiskOutcome
    reasons: tuple[str, ...]
    version: str


def near_line_days(
    daily_totals: Mapping[date, int], today: date, payout_fen: int, policy: RiskPolicy
) -> int:
    """Days in the structuring window whose total (today: with this order) fell in the band
    just under the daily review line."""
    rule = policy.structuring
    if rule is None:
        return 0
    first = today - timedelta(days=rule.window_days - 1)
    count = 0
    for day in (first + timedelta(days=n) for n in range(rule.window_days)):
        total = daily_totals.get(day, 0) + (payout_fen if day == today else 0)
        if rule.band_low_fen <= total < policy.daily_review_fen:
            count += 1
    return count


def assess(facts: RiskFacts, policy: RiskPolicy, today: date | None = None) -> RiskDecision:
    """Apply the rules to one order's facts (``today``: the Asia/Shanghai date of the order,
    for the structuring window)."""
    fired: list[tuple[RiskOutcome, str]] = []
    if facts.same_card_orders > 0 or facts.same_card_other_users > 0:
        fired.append((RiskOutcome.REJECT, "risk.same_card"))
    if policy.blacklist is not None and facts.blacklisted:
        fired.append((policy.blacklist, "risk.blacklisted"))
    if facts.day_total_fen + facts.payout_fen >= policy.daily_review_fen:
        fired.append((RiskOutcome.REVIEW, "risk.daily_amount"))
    elif policy.structuring is not None and today is not None:
        days = near_line_days(facts.daily_totals, today, facts.payout_fen, policy)
        if days >= policy.structuring.min_days:
            fired.append((policy.structuring.outcome, "risk.structuring"))
    if policy.velocity is not None and facts.recent_cards > policy.velocity.max_cards:
        fired.append((policy.velocity.outcome, "risk.velocity"))
    if policy.shared is not None:
        if facts.shared_id_users > 0:
            fired.append((policy.shared.id_number, "risk.shared_id"))
        if facts.shared_account_people > 0:
            fired.append((policy.shared.payout_account, "risk.shared_account"))
    rule = policy.new_account
    if (
        rule is not None
        and facts.account_age < timedelta(hours=rule.hours)
        and facts.payout_fen >= rule.min_payout_fen
    ):
        fired.append((rule.outcome, "risk.new_account"))
    if facts.card_wrong_secrets_by_others >= policy.card_secret.review_at:
        fired.append((policy.card_secret.outcome, "risk.card_guessed"))
    outcome = max((o for o, _ in fired), key=_SEVERITY.__getitem__, default=RiskOutcome.APPROVE)
    return RiskDecision(outcome, tuple(reason for _, reason in fired), policy.version)


def streak_suspends(failures_at: Iterable[datetime], now: datetime, policy: RiskPolicy) -> bool:
    """Whether a person's recent failures (wrong secrets, used cards) call for a suspension."""
    rule = policy.streak
    if rule is None:
        return False
    since = now - timedelta(minutes=rule.window_minutes)
    return sum(1 for at in failures_at if at >= since) >= rule.max_failures


def daily_totals(amounts: Iterable[tuple[datetime, int]]) -> dict[date, int]:
    """Sum (time, amount) pairs per Asia/Shanghai calendar day."""
    totals: dict[date, int] = {}
    for at, amount in amounts:
        day = shanghai_date(at)
        totals[day] = totals.get(day, 0) + amount
    return totals


# --------------------------------------------------------------------------------------------
# The Asia/Shanghai day


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
