"""Rate tables: adjustments (expiry per brand, batch, membership tier) checked against an
independent reference, and tables read from TOML and CSV files with every mistake named."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import CardUnusable
from core.pricing import (
    RateTableError,
    Tier,
    default_pricing,
    pricing_from_dict,
    pricing_to_dict,
    quote_card,
    rate_table_from_csv,
    rate_table_from_toml,
)

POLICY = default_pricing()
TODAY = date(2026, 11, 22)
ROOT = Path(__file__).resolve().parents[2]


def reference_payout(
    face: int, balance: int, days_left: int, cards: int, tier_bp: int, brand: str
) -> tuple[int, int]:
    """The payout worked out independently: exact fractions, then half up, once."""
    bands = POLICY.rates[brand]
    base = next(b.rate_bp for b in bands if b.max_face_fen is None or face <= b.max_face_fen)
    points = base
    if days_left <= POLICY.expiry_window_days:
        points += POLICY.expiry_adjust_for(brand)
    if cards >= POLICY.batch_min_cards:
        points += POLICY.batch_bonus_bp
    points += tier_bp
    points = min(max(points, 0), 10_000)
    exact = Fraction(balance * points, 10_000)
    gross = int(exact) + (1 if exact - int(exact) >= Fraction(1, 2) else 0)
    return points, gross - POLICY.fee_fen


@given(
    brand=st.sampled_from(sorted(POLICY.rates)),
    face=st.integers(1, 10_000_000),
    spent=st.floats(0, 1),
    days_left=st.integers(0, 400),
    cards=st.integers(1, 100),
    tier=st.sampled_from([None, *POLICY.tiers]),
)
def test_quotes_agree_with_an_independent_reference(
    brand: str, face: int, spent: float, days_left: int, cards: int, tier: Tier | None
) -> None:
    balance = int(face * (1 - spent))
    expected_rate, expected_payout = reference_payout(
        face, balance, days_left, cards, tier.bonus_bp if tier else 0, brand
    )
    expires = TODAY + timedelta(days=days_left)
    if expected_payout < POLICY.min_payout_fen:
        with pytest.raises(CardUnusable):
            quote_card(
                POLICY, brand, face, balance, expires, TODAY, cards_in_order=cards, tier=tier
            )
        return
    priced = quote_card(
        POLICY, brand, face, balance, expires, TODAY, cards_in_order=cards, tier=tier
    )
    assert (priced.rate_bp, priced.payout_fen) == (expected_rate, expected_payout)
    assert priced.gross_fen - priced.fee_fen == priced.payout_fen
    # Every point added to the base rate has its own line, so the user can check the sum.
    lines = {line.key: line for line in priced.lines}
    added = sum(
        lines[k].rate_bp or 0
        for k in ("quote.expiry_adjustment", "quote.batch_bonus", "quote.tier_bonus")
        if k in lines
    )
    base = lines["quote.base_rate"].rate_bp or 0
    assert min(max(base + added, 0), 10_000) == priced.rate_bp


def test_a_batch_of_eleven_cards_earns_three_points_and_ten_do_not() -> None:
    ten = quote_card(POLICY, "walmart", 50_000, 50_000, date(2099, 1, 1), TODAY, cards_in_order=10)
    eleven = quote_card(
        POLICY, "walmart", 50_000, 50_000, date(2099, 1, 1), TODAY, cards_in_order=11
    )
    assert eleven.rate_bp - ten.rate_bp == 300
    assert "quote.batch_bonus" in [line.key for line in eleven.lines]


def test_membership_tiers_are_earned_by_what_a_person_has_sold() -> None:
    assert POLICY.tier_for(0) is None
    assert POLICY.tier_for(499_999) is None
    silver = POLICY.tier_for(500_000)
    gold = POLICY.tier_for(2_000_000)
    assert silver is not None and silver.name == "silver" and silver.bonus_bp == 100
    assert gold is not None and gold.name == "gold" and gold.bonus_bp == 250
    priced = quote_card(POLICY, "walmart", 50_000, 50_000, date(2099, 1, 1), TODAY, tier=gold)
    [line] = [line for line in priced.lines if line.key == "quote.tier_bonus"]
    assert line.label == "gold" and line.rate_bp == 250


def test_a_brand_can_lose_more_near_expiry_than_the_default() -> None:
    policy = replace(POLICY, expiry_adjust_by_brand={"starbucks": -800})
    soon = TODAY + timedelta(days=5)
    starbucks = quote_card(policy, "starbucks", 10_000, 10_000, soon, TODAY)
    walmart = quote_card(policy, "walmart", 10_000, 10_000, soon, TODAY)
    assert starbucks.rate_bp == 7_800 - 800 and walmart.rate_bp == 8_800 - 300


def test_the_shipped_rates_file_is_the_default_table() -> None:
    policy = rate_table_from_toml((ROOT / "bot" / "rates.toml").read_text(encoding="utf-8"))
    assert replace(policy, version=POLICY.version) == POLICY


def test_a_policy_survives_its_stored_form() -> None:
    moment = datetime(2026, 12, 1, tzinfo=timezone(timedelta(hours=8)))
    policy = replace(POLICY, effective_from=moment, expiry_adjust_by_brand={"ctrip": -500})
    assert pricing_from_dict(pricing_to_dict(policy)) == policy


def test_a_csv_changes_the_rates_and_keeps_the_rest() -> None:
    text = "brand,up_to_fen,rate_bp\nwalmart,,9300\nwalmart,10000,9000\nsinopec,,9600\n"
    when = datetime(2026, 12, 1, tzinfo=UTC)
    policy = rate_table_from_csv(text, POLICY, "csv-1", when)
    assert set(policy.rates) == {"walmart", "sinopec"}
    assert [(b.max_face_fen, b.rate_bp) for b in policy.rates["walmart"]] == [
        (10_000, 9_000),
        (None, 9_300),
    ]
    assert (policy.fee_fen, policy.tiers, policy.version) == (
        POLICY.fee_fen,
        POLICY.tiers,
        "csv-1",
    )
    assert policy.effective_from == when


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("brand,rate\nwalmart,9000\n", "header"),
        ("brand,up_to_fen,rate_bp\nwalmart,,ninety\n", "line 2"),
        ("brand,up_to_fen,rate_bp\n,,9000\nwalmart,,x\n", "line 2: no brand; line 3"),
        ("brand,up_to_fen,rate_bp\nwalmart,5000,9000\n", "open-ended"),
        ("brand,up_to_fen,rate_bp\nwalmart,,19000\n", "between 0 and"),
    ],
)
def test_a_bad_csv_is_refused_line_by_line(text: str, complaint: str) -> None:
    with pytest.raises(RateTableError, match=complaint):
        rate_table_from_csv(text, POLICY, "v", None)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("version = ", "not valid TOML"),
        ("[brands.walmart]\nbands = [{rate_bp = 9000}]", "version"),
        ('version = "v"', "at least one brand"),
        ('version = "v"\n[brands.walmart]\nbands = []', "bands"),
        ('version = "v"\n[brands.walmart]\nbands = [{rate_bp = "high"}]', "rate_bp"),
        ('version = "v"\nfee_fen = -1\n[brands.walmart]\nbands = [{rate_bp = 9000}]', "fee_fen"),
        ('version = "v"\ncolour = 1\n[brands.walmart]\nbands = [{rate_bp = 9000}]', "unknown"),
        (
            'version = "v"\neffective_from = "2026-12-01T00:00:00"\n'
            "[brands.walmart]\nbands = [{rate_bp = 9000}]",
            "time zone",
        ),
        (
            'version = "v"\n[tiers.gold]\nbonus_bp = 250\n'
            "[brands.walmart]\nbands = [{rate_bp = 1}]",
            "tiers.gold",
        ),
    ],
)
def test_a_bad_toml_table_is_refused_with_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(RateTableError, match=complaint):
        rate_table_from_toml(text)
