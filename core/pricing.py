"""Pricing: what we pay for a card, and every line of that arithmetic.

A brand has rate bands chosen by the card's FACE value (≤ 50 CNY, ≤ 100 CNY, above); the rate is
applied once, with :func:`core.money.apply_rate`, to the card's remaining BALANCE (a partly spent
card is worth its balance). A card close to expiry loses a few points; a flat fee per card is
taken off; what is left is the payout, which must reach a minimum. All integers: fen and basis
points.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from types import MappingProxyType

from core.catalog import Brand, Catalog
from core.errors import CardUnusable
from core.model import QuoteLine
from core.money import BP_SCALE, apply_rate


@dataclass(frozen=True)
class RateBand:
    """Rate for cards whose face value is at most ``max_face_fen`` (None: no upper bound)."""

    max_face_fen: int | None
    rate_bp: int


@dataclass(frozen=True)
class BrandRates:
    """A brand's bands, ascending by face value, the last one open-ended."""

    brand: str
    bands: tuple[RateBand, ...]


def _check_bands(brand: str, bands: tuple[RateBand, ...]) -> None:
    if not bands:
        raise ValueError(f"{brand}: no rate bands")
    if bands[-1].max_face_fen is not None:
        raise ValueError(f"{brand}: the last band must be open-ended (max_face_fen None)")
    previous = 0
    for band in bands[:-1]:
        if band.max_face_fen is None or band.max_face_fen <= previous:
            raise ValueError(f"{brand}: band limits must be positive and ascending")
        previous = band.max_face_fen
    for band in bands:
        if not 0 <= band.rate_bp <= BP_SCALE:
            raise ValueError(f"{brand}: a rate must lie between 0 and {BP_SCALE} bp")


@dataclass(frozen=True)
class PricingPolicy:
    """A versioned rate table with the fee, expiry adjustment, minimum payout and lock time."""

    rates: Mapping[str, tuple[RateBand, ...]]
    fee_fen: int
    expiry_window_days: int
    expiry_adjust_bp: int
    min_payout_fen: int
    lock_minutes: int
    version: str

    def __post_init__(self) -> None:
        frozen = {code: tuple(bands) for code, bands in self.rates.items()}
        for code, bands in frozen.items():
            _check_bands(code, bands)
        if self.fee_fen < 0:
            raise ValueError("fee_fen must not be negative")
        if self.expiry_window_days < 0:
            raise ValueError("expiry_window_days must not be negative")
        if self.min_payout_fen < 1:
            raise ValueError("min_payout_fen must be at least 1 fen")
        if self.lock_minutes < 1:
            raise ValueError("lock_minutes must be at least 1")
        if not self.version:
            raise ValueError("a pricing policy needs a version")
        object.__setattr__(self, "rates", MappingProxyType(frozen))

    @classmethod
    def from_brand_rates(
        cls,
        brand_rates: Iterable[BrandRates],
        *,
        fee_fen: int,
        expiry_window_days: int,
        expiry_adjust_bp: int,
        min_payout_fen: int,
        lock_minutes: int,
        version: str,
    ) -> PricingPolicy:
        """A policy built from per-brand rate lists."""
        rates: dict[str, tuple[RateBand, ...]] = {}
        for entry in brand_rates:
            if entry.brand in rates:
                raise ValueError(f"{entry.brand}: rates listed twice")
            rates[entry.brand] = entry.bands
        return cls(
            rates=rates,
            fee_fen=fee_fen,
            expiry_window_days=expiry_window_days,
            expiry_adjust_bp=expiry_adjust_bp,
            min_payout_fen=min_payout_fen,
            lock_minutes=lock_minutes,
            version=version,
        )


@dataclass(frozen=True)
class PricedCard:
    """The price of one card: effective rate, gross, fee, payout and the lines that explain it."""

    rate_bp: int
    gross_fen: int
    fee_fen: int
    payout_fen: int
    lines: tuple[QuoteLine, ...]


@dataclass(frozen=True)
class PriceRow:
    """One row of the public price list: a brand, a face-value band (above, up to], a rate."""

    brand: Brand
    above_fen: int | None  # exclusive lower bound; None for the first band
    up_to_fen: int | None  # inclusive upper bound; None for the open-ended last band
    rate_bp: int


def _code(brand: Brand | str) -> str:
    return brand.code if isinstance(brand, Brand) else brand


def band_for(policy: PricingPolicy, brand: Brand | str, face_value_fen: int) -> RateBand:
    """The band a card's face value falls in; KeyError when the brand has no rates."""
    code = _code(brand)
    if code not in policy.rates:
        raise KeyError(f"no rates for brand {code}")
    for band in policy.rates[code]:
        if band.max_face_fen is None or face_value_fen <= band.max_face_fen:
            return band
    raise AssertionError("unreachable: the last band is open-ended")


def quote_card(
    policy: PricingPolicy,
    brand: Brand | str,
    face_value_fen: int,
    balance_fen: int,
    expires: date,
    today: date,
) -> PricedCard:
    """Price a card: rate by face value, applied once to the balance, minus the fee."""
    if face_value_fen <= 0 or balance_fen < 0:
        raise ValueError("face value must be positive and balance non-negative")
    days_left = (expires - today).days
    if days_left < 0:
        raise CardUnusable("error.card_expired", expires=expires.isoformat())
    base = band_for(policy, brand, face_value_fen).rate_bp
    adjust = policy.expiry_adjust_bp if days_left <= policy.expiry_window_days else 0
    rate = min(max(base + adjust, 0), BP_SCALE)
    gross = apply_rate(balance_fen, rate)
    payout = gross - policy.fee_fen
    if payout < policy.min_payout_fen:
        raise CardUnusable(
            "error.balance_too_low",
            balance_fen=balance_fen,
            min_payout_fen=policy.min_payout_fen,
        )
    lines = [
        QuoteLine("quote.face_value", amount_fen=face_value_fen),
        QuoteLine("quote.balance", amount_fen=balance_fen),
        QuoteLine("quote.base_rate", rate_bp=base),
    ]
    if adjust:
        lines.append(QuoteLine("quote.expiry_adjustment", rate_bp=adjust))
    lines += [
        QuoteLine("quote.effective_rate", rate_bp=rate),
        QuoteLine("quote.gross", amount_fen=gross),
        QuoteLine("quote.fee", amount_fen=policy.fee_fen),
        QuoteLine("quote.payout", amount_fen=payout),
    ]
    return PricedCard(
        rate_bp=rate,
        gross_fen=gross,
        fee_fen=policy.fee_fen,
        payout_fen=payout,
        lines=tuple(lines),
    )


def price_list(policy: PricingPolicy, catalog: Catalog) -> tuple[PriceRow, ...]:
    """Rows for a /prices command: every catalog brand with rates, band by band."""
    rows: list[PriceRow] = []
    for brand in catalog.brands():
        bands = policy.rates.get(brand.code)
        if bands is None:
            continue
        above: int | None = None
        for band in bands:
            rows.append(PriceRow(brand, above, band.max_face_fen, band.rate_bp))
            above = band.max_face_fen
    return tuple(rows)


def _bands(small: int, medium: int, large: int) -> tuple[RateBand, ...]:
    """≤ 50 CNY, 50–100 CNY, above 100 CNY."""
    return (RateBand(5_000, small), RateBand(10_000, medium), RateBand(None, large))


def default_pricing() -> PricingPolicy:
    """The shipped rates: fuel and JD highest, Starbucks lowest, ¥1 fee, −3 points near expiry."""
    # Fee ¥1.00 per card; −3 points within 30 days of expiry; payouts from ¥10.00; 10-minute lock.
    supermarket = _bands(8_500, 8_800, 9_200)
    fuel = _bands(9_000, 9_300, 9_500)
    return PricingPolicy.from_brand_rates(
        [
            BrandRates("walmart", supermarket),
            BrandRates("carrefour", _bands(8_200, 8_500, 8_800)),
            BrandRates("jd_ecard", _bands(8_800, 9_100, 9_400)),
            BrandRates("tmall", _bands(8_600, 8_900, 9_200)),
            BrandRates("yonghui", supermarket),
            BrandRates("rtmart", supermarket),
            BrandRates("wumart", supermarket),
            BrandRates("suning", _bands(8_000, 8_300, 8_600)),
            BrandRates("sinopec", fuel),
            BrandRates("petrochina", fuel),
            BrandRates("ctrip", _bands(8_300, 8_600, 9_000)),
            BrandRates("starbucks", _bands(7_500, 7_800, 8_000)),
            BrandRates("crvanguard", supermarket),
            BrandRates("okcard", _bands(8_400, 8_700, 9_100)),
        ],
        fee_fen=100,
        expiry_window_days=30,
        expiry_adjust_bp=-300,
        min_payout_fen=1_000,
        lock_minutes=10,
        version="default-1",
    )
