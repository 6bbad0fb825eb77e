"""The combined quote of a batch: each card priced on its own, the batch bonus on every card's
rate once the batch is big enough, totals that are the sum of the cards — checked against an
independent reference."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from core.batch import BatchCardFacts, price_batch
from core.pricing import Tier, default_pricing

POLICY = default_pricing()
TODAY = date(2026, 11, 22)
FAR = date(2099, 12, 31)


def card(key: int, balance_fen: int = 50_000, brand: str = "walmart") -> BatchCardFacts:
    return BatchCardFacts(key, brand, max(balance_fen, 50_000), balance_fen, FAR)


def test_eleven_cards_earn_the_batch_bonus_on_every_card_and_ten_do_not() -> None:
    ten = price_batch(POLICY, [card(n) for n in range(10)], TODAY)
    eleven = price_batch(POLICY, [card(n) for n in range(11)], TODAY)
    assert ten.bonus_bp == 0 and ten.bonus_fen == 0
    assert {c.priced.rate_bp for c in ten.cards} == {9_200}
    assert eleven.bonus_bp == 300 and eleven.cards_in_order == 11
    assert {c.priced.rate_bp for c in eleven.cards} == {9_500}
    # 3 points of ¥500 on each of 11 cards.
    assert eleven.bonus_fen == 11 * 1_500
    assert eleven.payout_fen == 11 * (47_500 - 100)


def test_a_card_too_small_to_buy_is_refused_and_the_rest_are_priced() -> None:
    cards = [card(1), card(2, balance_fen=500), card(3)]
    priced = price_batch(POLICY, cards, TODAY)
    assert [c.key for c in priced.cards] == [1, 3]
    assert [(key, refusal.key) for key, refusal in priced.refused] == [
        (2, "error.balance_too_low")
    ]


def test_a_refused_card_that_takes_the_batch_under_the_line_takes_the_bonus_away() -> None:
    cards = [card(n) for n in range(10)] + [card(99, balance_fen=500)]
    priced = price_batch(POLICY, cards, TODAY)
    assert priced.cards_in_order == 10 and priced.bonus_bp == 0
    assert [key for key, _ in priced.refused] == [99]


def reference_rate(brand: str, face_fen: int, expires: date, bonus: int, tier_bp: int) -> int:
    bands = POLICY.rates[brand]
    base = next(b.rate_bp for b in bands if b.max_face_fen is None or face_fen <= b.max_face_fen)
    expiry = (
        POLICY.expiry_adjust_for(brand)
        if (expires - TODAY).days <= POLICY.expiry_window_days
        else 0
    )
    return min(max(base + expiry + bonus + tier_bp, 0), 10_000)


def reference_gross(balance_fen: int, rate_bp: int) -> int:
    exact = Decimal(balance_fen) * Decimal(rate_bp) / Decimal(10_000)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def reference_total(cards: list[BatchCardFacts], tier_bp: int) -> tuple[int, set[int]]:
    """Sum of per-card nets; the bonus on every card while the cards that can be bought number
    at least batch_min_cards; a card is bought when its net reaches the minimum payout."""
    taken = list(cards)
    while True:
        bonus = POLICY.batch_bonus_bp if len(taken) >= POLICY.batch_min_cards else 0
        nets = {
            c.key: reference_gross(
                c.balance_fen,
                reference_rate(c.brand, c.face_value_fen, c.expires, bonus, tier_bp),
            )
            - POLICY.fee_fen
            for c in taken
        }
        kept = [c for c in taken if nets[c.key] >= POLICY.min_payout_fen]
        if len(kept) == len(taken):
            return sum(nets.values()), {c.key for c in kept}
        taken = kept


brands = st.sampled_from(sorted(POLICY.rates))
one_card = st.builds(
    lambda brand, face, spent, days: (brand, face, max(face - spent, 0), days),
    brands,
    st.integers(1, 200_000),
    st.integers(0, 200_000),
    st.integers(0, 400),
)


@settings(max_examples=300)
@given(st.lists(one_card, min_size=1, max_size=30), st.sampled_from([None, *POLICY.tiers]))
def test_the_batch_total_is_the_sum_of_the_card_nets_with_the_bonus_applied_per_card(
    raw: list[tuple[str, int, int, int]], tier: Tier | None
) -> None:
    cards = [
        BatchCardFacts(n, brand, face, balance, TODAY + timedelta(days=days))
        for n, (brand, face, balance, days) in enumerate(raw)
    ]
    priced = price_batch(POLICY, cards, TODAY, tier=tier)
    total, kept = reference_total(cards, tier.bonus_bp if tier else 0)
    assert priced.payout_fen == total
    assert {c.key for c in priced.cards} == kept
    assert len(priced.cards) + len(priced.refused) == len(cards)
    assert priced.payout_fen == sum(c.priced.payout_fen for c in priced.cards)
    assert priced.balance_fen == sum(c.balance_fen for c in cards if c.key in kept)
    assert priced.fee_fen == POLICY.fee_fen * len(kept)
    bonus_applies = len(kept) >= POLICY.batch_min_cards
    assert (priced.bonus_bp > 0) == bonus_applies
    assert all(
        ("quote.batch_bonus" in [line.key for line in c.priced.lines]) == bonus_applies
        for c in priced.cards
    )
    assert priced.bonus_fen >= 0 and (priced.bonus_fen > 0) <= bonus_applies
