"""Pricing: bands by face value, the rate applied once to the balance, every line shown."""

from __future__ import annotations

import ast
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from core.catalog import default_catalog
from core.errors import BrandNotBought, CardUnusable
from core.model import QuoteLine
from core.money import apply_rate
from core.pricing import (
    BrandRates,
    PricedCard,
    PricingPolicy,
    RateBand,
    band_for,
    default_pricing,
    dropped_brands,
    merged_into,
    price_list,
    quote_card,
)

POLICY = default_pricing()
CATALOG = default_catalog()
TODAY = date(2026, 11, 22)
FAR = date(2099, 12, 31)
CORE = Path(__file__).resolve().parents[2] / "core"


def keys(priced: PricedCard) -> list[str]:
    return [line.key for line in priced.lines]


def test_a_full_500_yuan_walmart_card_is_paid_92_percent_minus_the_fee() -> None:
    priced = quote_card(POLICY, "walmart", 50_000, 50_000, FAR, TODAY)
    assert (priced.rate_bp, priced.gross_fen, priced.fee_fen, priced.payout_fen) == (
        9_200,
        46_000,
        100,
        45_900,
    )
    assert priced.lines == (
        QuoteLine("quote.face_value", amount_fen=50_000),
        QuoteLine("quote.balance", amount_fen=50_000),
        QuoteLine("quote.base_rate", rate_bp=9_200),
        QuoteLine("quote.effective_rate", rate_bp=9_200),
        QuoteLine("quote.gross", amount_fen=46_000),
        QuoteLine("quote.fee", amount_fen=100),
        QuoteLine("quote.payout", amount_fen=45_900),
    )


def test_a_partly_spent_card_is_priced_on_its_balance_in_the_band_of_its_face_value() -> None:
    priced = quote_card(POLICY, "walmart", 100_000, 35_680, FAR, TODAY)
    assert priced.rate_bp == 9_200  # the > 100 CNY band, though only 356.80 is left
    assert priced.gross_fen == apply_rate(35_680, 9_200) == 32_826  # 32,825.6 rounds up
    assert priced.payout_fen == 32_726


def test_the_rate_is_rounded_once_half_up() -> None:
    # 10,010 fen × 95 % = 9,509.5 fen → 9,510
    priced = quote_card(POLICY, "sinopec", 100_000, 10_010, FAR, TODAY)
    assert priced.gross_fen == 9_510


@pytest.mark.parametrize(
    ("face_fen", "rate_bp"),
    [(1, 8_500), (5_000, 8_500), (5_001, 8_800), (10_000, 8_800), (10_001, 9_200), (10**9, 9_200)],
)
def test_the_band_is_chosen_by_face_value(face_fen: int, rate_bp: int) -> None:
    assert band_for(POLICY, "walmart", face_fen).rate_bp == rate_bp
    assert band_for(POLICY, CATALOG.get("walmart"), face_fen).rate_bp == rate_bp


def test_a_card_within_30_days_of_expiry_loses_three_points_and_says_so() -> None:
    priced = quote_card(POLICY, "walmart", 50_000, 50_000, TODAY + timedelta(days=30), TODAY)
    assert priced.rate_bp == 8_900
    assert keys(priced) == [
        "quote.face_value",
        "quote.balance",
        "quote.base_rate",
        "quote.expiry_adjustment",
        "quote.effective_rate",
        "quote.gross",
        "quote.fee",
        "quote.payout",
    ]
    assert priced.lines[3] == QuoteLine("quote.expiry_adjustment", rate_bp=-300)
    assert priced.payout_fen == apply_rate(50_000, 8_900) - 100


def test_a_card_expiring_today_still_sells_with_the_adjustment() -> None:
    assert quote_card(POLICY, "walmart", 50_000, 50_000, TODAY, TODAY).rate_bp == 8_900


def test_a_card_31_days_from_expiry_is_not_adjusted() -> None:
    priced = quote_card(POLICY, "walmart", 50_000, 50_000, TODAY + timedelta(days=31), TODAY)
    assert priced.rate_bp == 9_200 and "quote.expiry_adjustment" not in keys(priced)


def test_an_expired_card_cannot_be_quoted() -> None:
    with pytest.raises(CardUnusable) as info:
        quote_card(POLICY, "walmart", 50_000, 50_000, TODAY - timedelta(days=1), TODAY)
    assert info.value.key == "error.card_expired"


def test_a_payout_below_the_minimum_is_refused_as_balance_too_low() -> None:
    # ¥5.00 left × 88 % − ¥1.00 = ¥3.40 < ¥10.00
    with pytest.raises(CardUnusable) as info:
        quote_card(POLICY, "wumart", 10_000, 500, FAR, TODAY)
    assert info.value.key == "error.balance_too_low"
    assert info.value.params["min_payout_fen"] == 1_000


def test_the_smallest_payout_at_the_minimum_is_accepted() -> None:
    # 1,295 × 85 % = 1,100.75 → 1,101 − 100 = 1,001 ≥ 1,000
    assert quote_card(POLICY, "wumart", 5_000, 1_295, FAR, TODAY).payout_fen == 1_001


def test_a_brand_without_rates_is_a_refusal_the_user_is_told_not_a_crash() -> None:
    with pytest.raises(BrandNotBought) as refused:
        quote_card(POLICY, "nosuchbrand", 50_000, 50_000, FAR, TODAY)
    assert refused.value.key == "error.brand_not_bought"
    assert isinstance(refused.value, CardUnusable)  # every caller already refuses it cleanly


def test_merging_keeps_every_brand_the_new_table_does_not_list() -> None:
    only_walmart = replace(
        POLICY,
        rates={"walmart": (RateBand(None, 9_500),)},
        expiry_adjust_by_brand={},
        version="w-1",
    )
    merged = merged_into(only_walmart, POLICY)
    assert set(merged.rates) == set(POLICY.rates)
    assert merged.rates["walmart"] == (RateBand(None, 9_500),)
    assert merged.rates["rtmart"] == POLICY.rates["rtmart"]
    assert merged.version == "w-1"
    assert dropped_brands(only_walmart, POLICY) == sorted(set(POLICY.rates) - {"walmart"})
    assert dropped_brands(merged, POLICY) == []


@pytest.mark.parametrize(("face", "balance"), [(0, 0), (-1, 0), (100, -1)])
def test_non_positive_face_or_negative_balance_is_a_programming_error(
    face: int, balance: int
) -> None:
    with pytest.raises(ValueError):
        quote_card(POLICY, "walmart", face, balance, FAR, TODAY)


def test_every_catalog_brand_has_rates() -> None:
    assert {b.code for b in CATALOG.brands()} == set(POLICY.rates)


def test_fuel_cards_and_jd_pay_more_than_supermarkets_and_starbucks_pays_least() -> None:
    for face in (5_000, 10_000, 50_000):
        rate = {code: band_for(POLICY, code, face).rate_bp for code in POLICY.rates}
        for high in ("sinopec", "petrochina", "jd_ecard"):
            assert rate[high] > rate["walmart"]
        assert rate["starbucks"] == min(rate.values())


def test_default_policy_has_the_stated_fee_window_adjustment_and_lock() -> None:
    assert (POLICY.fee_fen, POLICY.expiry_window_days, POLICY.expiry_adjust_bp) == (100, 30, -300)
    assert POLICY.lock_minutes == 10 and POLICY.version


def test_the_policy_rate_table_cannot_be_changed_in_place() -> None:
    with pytest.raises(TypeError):
        POLICY.rates["walmart"] = ()  # type: ignore[index]


def test_price_list_rows_give_each_band_its_bounds() -> None:
    rows = price_list(POLICY, CATALOG)
    walmart = [r for r in rows if r.brand.code == "walmart"]
    assert [(r.above_fen, r.up_to_fen, r.rate_bp) for r in walmart] == [
        (None, 5_000, 8_500),
        (5_000, 10_000, 8_800),
        (10_000, None, 9_200),
    ]
    assert [r.brand.code for r in rows[::3]] == [b.code for b in CATALOG.brands()]


def test_price_list_skips_brands_without_rates() -> None:
    policy = PricingPolicy(
        rates={"walmart": (RateBand(None, 9_000),)},
        fee_fen=0,
        expiry_window_days=0,
        expiry_adjust_bp=0,
        min_payout_fen=1,
        lock_minutes=1,
        version="t",
    )
    assert [r.brand.code for r in price_list(policy, CATALOG)] == ["walmart"]


@pytest.mark.parametrize(
    "bands",
    [
        (),
        (RateBand(5_000, 8_500),),
        (RateBand(10_000, 8_500), RateBand(5_000, 8_800), RateBand(None, 9_000)),
        (RateBand(None, 8_500), RateBand(None, 9_000)),
        (RateBand(None, 10_001),),
        (RateBand(None, -1),),
    ],
)
def test_malformed_bands_are_refused(bands: tuple[RateBand, ...]) -> None:
    with pytest.raises(ValueError):
        PricingPolicy.from_brand_rates(
            [BrandRates("walmart", bands)],
            fee_fen=100,
            expiry_window_days=30,
            expiry_adjust_bp=-300,
            min_payout_fen=1_000,
            lock_minutes=10,
            version="t",
        )


def test_brand_rates_listed_twice_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        PricingPolicy.from_brand_rates(
            [BrandRates("walmart", (RateBand(None, 9_000),))] * 2,
            fee_fen=100,
            expiry_window_days=30,
            expiry_adjust_bp=-300,
            min_payout_fen=1_000,
            lock_minutes=10,
            version="t",
        )


# --------------------------------------------------------------------------------------------
# Properties

brands = st.sampled_from(sorted(POLICY.rates))
faces = st.sampled_from([5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000])
balances = st.integers(min_value=0, max_value=10_000_000)
days = st.integers(min_value=0, max_value=400)


@given(brands, faces, balances, days)
def test_payout_is_the_rate_applied_once_to_the_balance_minus_the_fee(
    brand: str, face: int, balance: int, days_left: int
) -> None:
    try:
        priced = quote_card(POLICY, brand, face, balance, TODAY + timedelta(days_left), TODAY)
    except CardUnusable as exc:
        assert exc.key == "error.balance_too_low"
        return
    assert priced.gross_fen == apply_rate(balance, priced.rate_bp)
    assert priced.payout_fen == apply_rate(balance, priced.rate_bp) - POLICY.fee_fen
    assert POLICY.min_payout_fen <= priced.payout_fen <= balance
    assert priced.lines[-1] == QuoteLine("quote.payout", amount_fen=priced.payout_fen)
    for value in (priced.rate_bp, priced.gross_fen, priced.fee_fen, priced.payout_fen):
        assert type(value) is int
    for line in priced.lines:
        assert line.amount_fen is None or type(line.amount_fen) is int
        assert line.rate_bp is None or type(line.rate_bp) is int


@given(brands, faces, balances, balances, days)
def test_payout_never_decreases_as_the_balance_grows(
    brand: str, face: int, a: int, b: int, days_left: int
) -> None:
    low, high = sorted((a, b))
    expires = TODAY + timedelta(days_left)
    try:
        low_payout = quote_card(POLICY, brand, face, low, expires, TODAY).payout_fen
    except CardUnusable:
        return
    assert quote_card(POLICY, brand, face, high, expires, TODAY).payout_fen >= low_payout


@given(brands, faces, balances)
def test_a_near_expiry_card_never_pays_more_than_the_same_card_far_from_expiry(
    brand: str, face: int, balance: int
) -> None:
    try:
        near = quote_card(POLICY, brand, face, balance, TODAY, TODAY).payout_fen
    except CardUnusable:
        return
    assert quote_card(POLICY, brand, face, balance, FAR, TODAY).payout_fen >= near


@given(
    st.integers(min_value=1, max_value=10**9),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=1_000),
)
def test_any_policy_pays_between_the_minimum_and_the_balance(
    balance: int, rate_bp: int, fee_fen: int
) -> None:
    policy = PricingPolicy(
        rates={"x": (RateBand(None, rate_bp),)},
        fee_fen=fee_fen,
        expiry_window_days=0,
        expiry_adjust_bp=0,
        min_payout_fen=1,
        lock_minutes=1,
        version="t",
    )
    assume(apply_rate(balance, rate_bp) - fee_fen >= 1)
    priced = quote_card(policy, "x", balance, balance, FAR, TODAY)
    assert 1 <= priced.payout_fen <= balance


@pytest.mark.parametrize("module", ["money.py", "pricing.py", "ledger.py", "risk.py"])
def test_money_code_has_no_float_literal_float_call_or_true_division(module: str) -> None:
    tree = ast.parse((CORE / module).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), node.lineno
        assert not (isinstance(node, ast.Name) and node.id == "float"), node.lineno
        assert not isinstance(node, ast.Div), (
            f"true division on line {getattr(node, 'lineno', '?')}"
        )
