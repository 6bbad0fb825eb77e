"""Pricing: what we pay for a card, and every line of that arithmetic.

A brand has rate bands chosen by the card's FACE value (≤ 50 CNY, ≤ 100 CNY, above). Points are
added to that base rate: a card close to expiry loses a few (per brand, or the table's
default); an order of many cards earns a batch bonus; a person's membership tier — earned by
what they have sold with us before — earns a few more. The effective rate is applied once,
with :func:`core.money.apply_rate`, to the card's remaining BALANCE (a partly spent card is
worth its balance); a flat fee per card is taken off; what is left is the payout, which must
reach a minimum. All integers: fen and basis points.

Rate tables are versioned and take effect at a stated time (``rate_table_*`` below read and
write them as TOML or CSV); a quote records the version it was priced with and keeps its
amounts while it is locked, whatever tables come later.
"""

from __future__ import annotations

import csv
import io
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from types import MappingProxyType
from typing import Any

from core.catalog import Brand, Catalog
from core.errors import BrandNotBought, CardUnusable
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
class Tier:
    """A membership tier: people whose settled sales total at least ``min_lifetime_fen`` get
    ``bonus_bp`` more on every card."""

    name: str
    min_lifetime_fen: int
    bonus_bp: int


@dataclass(frozen=True)
class PricingPolicy:
    """A versioned rate table with the fee, adjustments, minimum payout and lock time."""

    rates: Mapping[str, tuple[RateBand, ...]]
    fee_fen: int
    expiry_window_days: int
    expiry_adjust_bp: int
    min_payout_fen: int
    lock_minutes: int
    version: str
    expiry_adjust_by_brand: Mapping[str, int] = field(default_factory=dict)
    batch_min_cards: int = 11  # "more than 10 cards in one order"
    batch_bonus_bp: int = 300
    tiers: tuple[Tier, ...] = ()
    effective_from: datetime | None = None  # None: the shipped default, in force from the start

    def expiry_adjust_for(self, brand: str) -> int:
        """The points a card of this brand loses within the expiry window."""
        return self.expiry_adjust_by_brand.get(brand, self.expiry_adjust_bp)

    def tier_for(self, lifetime_fen: int) -> Tier | None:
        """The best tier someone who has sold ``lifetime_fen`` with us has earned."""
        earned = [t for t in self.tiers if lifetime_fen >= t.min_lifetime_fen]
        return max(earned, key=lambda t: t.min_lifetime_fen, default=None)

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
        if self.batch_min_cards < 2:
            raise ValueError("batch_min_cards must be at least 2")
        for code in self.expiry_adjust_by_brand:
            if code not in frozen:
                raise ValueError(f"{code}: an expiry adjustment for a brand without rates")
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names) or any(not n for n in names):
            raise ValueError("tiers need distinct, non-empty names")
        if any(t.min_lifetime_fen < 0 for t in self.tiers):
            raise ValueError("a tier's min_lifetime_fen must not be negative")
        object.__setattr__(self, "rates", MappingProxyType(frozen))
        object.__setattr__(
            self, "expiry_adjust_by_brand", MappingProxyType(dict(self.expiry_adjust_by_brand))
        )
        object.__setattr__(
            self, "tiers", tuple(sorted(self.tiers, key=lambda t: t.min_lifetime_fen))
        )

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
        **more: Any,
    ) -> PricingPolicy:
        """A policy built from per-brand rate lists (``more``: the other fields)."""
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
            **more,
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
    """The band a card's face value falls in; BrandNotBought when the brand has no rates (a
    refusal the user is told, never a crash)."""
    code = _code(brand)
    if code not in policy.rates:
        raise BrandNotBought(brand=code)
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
    *,
    cards_in_order: int = 1,
    tier: Tier | None = None,
) -> PricedCard:
    """Price a card: base rate by face value, plus expiry, batch and tier points, applied once
    to the balance, minus the fee."""
    if face_value_fen <= 0 or balance_fen < 0:
        raise ValueError("face value must be positive and balance non-negative")
    days_left = (expires - today).days
    if days_left < 0:
        raise CardUnusable("error.card_expired", expires=expires.isoformat())
    code = _code(brand)
    base = band_for(policy, code, face_value_fen).rate_bp
    expiry = policy.expiry_adjust_for(code) if days_left <= policy.expiry_window_days else 0
    batch = policy.batch_bonus_bp if cards_in_order >= policy.batch_min_cards else 0
    member = tier.bonus_bp if tier is not None else 0
    rate = min(max(base + expiry + batch + member, 0), BP_SCALE)
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
    if expiry:
        lines.append(QuoteLine("quote.expiry_adjustment", rate_bp=expiry))
    if batch:
        lines.append(QuoteLine("quote.batch_bonus", rate_bp=batch))
    if member:
        lines.append(
            QuoteLine("quote.tier_bonus", rate_bp=member, label=tier.name if tier else "")
        )
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
    """The shipped rates: fuel and JD highest, Starbucks lowest, ¥1 fee, −3 points near expiry,
    +3 points for more than 10 cards in one order, silver (¥5,000 sold) +1 and gold (¥20,000
    sold) +2.5 points. ``bot/rates.toml`` is the same table as a file to start from."""
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
        batch_min_cards=11,
        batch_bonus_bp=300,
        tiers=(Tier("silver", 500_000, 100), Tier("gold", 2_000_000, 250)),
    )


# --------------------------------------------------------------------------------------------
# Rate tables as files (TOML, CSV) and as stored data


class RateTableError(ValueError):
    """A rate table cannot be used: which entry, and what was expected."""


def _need_int(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RateTableError(f"{where}: expected a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise RateTableError(f"{where}: must be at least {minimum}, got {value}")
    return int(value)


def _when(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise RateTableError(f"{where}: not an ISO time: {value!r}") from None
    else:
        raise RateTableError(f"{where}: expected a time with its offset, got {value!r}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise RateTableError(f"{where}: give the time zone, e.g. 2026-12-01T00:00:00+08:00")
    return moment


def _bands_from(entries: Any, where: str) -> tuple[RateBand, ...]:
    if not isinstance(entries, list) or not entries:
        raise RateTableError(f"{where}.bands: a list of {{up_to_fen, rate_bp}} is required")
    bands = []
    for n, entry in enumerate(entries, start=1):
        if not isinstance(entry, Mapping) or set(entry) - {"up_to_fen", "rate_bp"}:
            raise RateTableError(f"{where}.bands[{n}]: expected up_to_fen and rate_bp")
        up_to = entry.get("up_to_fen")
        bands.append(
            RateBand(
                None if up_to is None else _need_int(up_to, f"{where}.bands[{n}].up_to_fen", 1),
                _need_int(entry.get("rate_bp"), f"{where}.bands[{n}].rate_bp", 0),
            )
        )
    return tuple(bands)


def pricing_from_dict(data: Mapping[str, Any]) -> PricingPolicy:
    """A policy from its data form (a parsed TOML rate table, or what :func:`pricing_to_dict`
    stored); RateTableError names what is wrong."""
    known = {
        "version", "effective_from", "fee_fen", "min_payout_fen", "lock_minutes", "expiry",
        "batch", "tiers", "brands",
    }  # fmt: skip
    unknown = set(data) - known
    if unknown:
        raise RateTableError(f"unknown keys {sorted(unknown)}")
    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        raise RateTableError("version: a non-empty string is required (quotes record it)")
    brands = data.get("brands")
    if not isinstance(brands, Mapping) or not brands:
        raise RateTableError("[brands.<code>]: at least one brand with bands is required")
    rates: dict[str, tuple[RateBand, ...]] = {}
    adjust_by_brand: dict[str, int] = {}
    for code, entry in brands.items():
        where = f"brands.{code}"
        if not isinstance(entry, Mapping) or set(entry) - {"bands", "expiry_adjust_bp"}:
            raise RateTableError(f"{where}: expected bands (and optionally expiry_adjust_bp)")
        rates[str(code)] = _bands_from(entry.get("bands"), where)
        if "expiry_adjust_bp" in entry:
            adjust_by_brand[str(code)] = _need_int(
                entry["expiry_adjust_bp"], f"{where}.expiry_adjust_bp"
            )
    expiry = data.get("expiry", {})
    batch = data.get("batch", {})
    tiers_data = data.get("tiers", {})
    if not all(isinstance(x, Mapping) for x in (expiry, batch, tiers_data)):
        raise RateTableError("[expiry], [batch] and [tiers] must be tables")
    tiers = []
    for name, tier in tiers_data.items():
        if not isinstance(tier, Mapping) or set(tier) != {"min_lifetime_fen", "bonus_bp"}:
            raise RateTableError(f"tiers.{name}: expected min_lifetime_fen and bonus_bp")
        tiers.append(
            Tier(
                str(name),
                _need_int(tier["min_lifetime_fen"], f"tiers.{name}.min_lifetime_fen", 0),
                _need_int(tier["bonus_bp"], f"tiers.{name}.bonus_bp"),
            )
        )
    effective = data.get("effective_from")
    try:
        return PricingPolicy(
            rates=rates,
            fee_fen=_need_int(data.get("fee_fen", 0), "fee_fen", 0),
            expiry_window_days=_need_int(expiry.get("window_days", 30), "expiry.window_days", 0),
            expiry_adjust_bp=_need_int(expiry.get("adjust_bp", 0), "expiry.adjust_bp"),
            min_payout_fen=_need_int(data.get("min_payout_fen", 1_000), "min_payout_fen", 1),
            lock_minutes=_need_int(data.get("lock_minutes", 10), "lock_minutes", 1),
            version=version.strip(),
            expiry_adjust_by_brand=adjust_by_brand,
            batch_min_cards=_need_int(batch.get("min_cards", 11), "batch.min_cards", 2),
            batch_bonus_bp=_need_int(batch.get("bonus_bp", 0), "batch.bonus_bp"),
            tiers=tuple(tiers),
            effective_from=None if effective is None else _when(effective, "effective_from"),
        )
    except ValueError as exc:
        if isinstance(exc, RateTableError):
            raise
        raise RateTableError(str(exc)) from None


def pricing_to_dict(policy: PricingPolicy) -> dict[str, Any]:
    """The data form of a policy (what a TOML rate table holds), for storage."""
    brands: dict[str, Any] = {}
    for code, bands in policy.rates.items():
        entry: dict[str, Any] = {
            "bands": [
                {"rate_bp": b.rate_bp}
                if b.max_face_fen is None
                else {"up_to_fen": b.max_face_fen, "rate_bp": b.rate_bp}
                for b in bands
            ]
        }
        if code in policy.expiry_adjust_by_brand:
            entry["expiry_adjust_bp"] = policy.expiry_adjust_by_brand[code]
        brands[code] = entry
    data: dict[str, Any] = {
        "version": policy.version,
        "fee_fen": policy.fee_fen,
        "min_payout_fen": policy.min_payout_fen,
        "lock_minutes": policy.lock_minutes,
        "expiry": {
            "window_days": policy.expiry_window_days,
            "adjust_bp": policy.expiry_adjust_bp,
        },
        "batch": {"min_cards": policy.batch_min_cards, "bonus_bp": policy.batch_bonus_bp},
        "tiers": {
            t.name: {"min_lifetime_fen": t.min_lifetime_fen, "bonus_bp": t.bonus_bp}
            for t in policy.tiers
        },
        "brands": brands,
    }
    if policy.effective_from is not None:
        data["effective_from"] = policy.effective_from.isoformat()
    return data


def merged_into(policy: PricingPolicy, base: PricingPolicy) -> PricingPolicy:
    """``policy`` with every brand it does not list taken from ``base`` (bands and expiry
    adjustment): an import that names some brands changes those and keeps the others."""
    rates = dict(base.rates)
    rates.update(policy.rates)
    adjust = {
        code: points for code, points in base.expiry_adjust_by_brand.items() if code in rates
    }
    for code in policy.rates:
        adjust.pop(code, None)
    adjust.update(policy.expiry_adjust_by_brand)
    return replace(policy, rates=rates, expiry_adjust_by_brand=adjust)


def dropped_brands(policy: PricingPolicy, base: PricingPolicy) -> list[str]:
    """Brands ``base`` buys that ``policy`` would no longer buy, sorted."""
    return sorted(set(base.rates) - set(policy.rates))


def rate_table_from_toml(text: str) -> PricingPolicy:
    """A whole rate table from TOML (see ``bot/rates.toml``)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RateTableError(f"not valid TOML: {exc}") from None
    return pricing_from_dict(data)


def rate_table_from_csv(
    text: str, base: PricingPolicy, version: str, effective_from: datetime | None
) -> PricingPolicy:
    """New rates from CSV (header ``brand,up_to_fen,rate_bp``; an empty ``up_to_fen`` is the
    open-ended top band), keeping the fee, adjustments, tiers and lock of ``base``. Every row
    that is wrong is reported, with its line number."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or set(reader.fieldnames) != {"brand", "up_to_fen", "rate_bp"}:
        raise RateTableError("the CSV header must be: brand,up_to_fen,rate_bp")
    bands: dict[str, list[dict[str, int | None]]] = {}
    problems: list[str] = []
    for row in reader:
        line = reader.line_num
        brand = (row.get("brand") or "").strip()
        up_to_text = (row.get("up_to_fen") or "").strip()
        rate_text = (row.get("rate_bp") or "").strip()
        if not brand:
            problems.append(f"line {line}: no brand")
            continue
        try:
            up_to = int(up_to_text) if up_to_text else None
            rate = int(rate_text)
        except ValueError:
            problems.append(f"line {line}: up_to_fen and rate_bp must be whole numbers")
            continue
        bands.setdefault(brand, []).append({"up_to_fen": up_to, "rate_bp": rate})
    if problems:
        raise RateTableError("; ".join(problems))
    data = pricing_to_dict(base)
    data["version"] = version
    data.pop("effective_from", None)
    if effective_from is not None:
        data["effective_from"] = effective_from.isoformat()
    data["brands"] = {
        code: {
            "bands": sorted(rows, key=lambda b: (b["up_to_fen"] is None, b["up_to_fen"] or 0)),
            **(
                {"expiry_adjust_bp": base.expiry_adjust_by_brand[code]}
                if code in base.expiry_adjust_by_brand
                else {}
            ),
        }
        for code, rows in bands.items()
    }
    for entry in data["brands"].values():
        entry["bands"] = [
            {"rate_bp": b["rate_bp"]}
            if b["up_to_fen"] is None
            else {"up_to_fen": b["up_to_fen"], "rate_bp": b["rate_bp"]}
            for b in entry["bands"]
        ]
    return pricing_from_dict(data)


_NUMBER = r"\d+(?:\.\d+)?"
_BAND_UPTO = re.compile(rf"^(?:≤|<=|<|-|至|到)?\s*(?:{_NUMBER}\s*[-~–至到]\s*)?({_NUMBER})$")
_BAND_TOP = re.compile(rf"^(?:>|＞|above|over|max|top|以上)\s*(?:{_NUMBER})?$|^{_NUMBER}\+$")
MIN_RATE_BP = 1_000  # below 10 % is a typo, not a price


def with_band_rate(
    policy: PricingPolicy,
    brand: str,
    band: str,
    rate_bp: int,
    version: str,
    effective_from: datetime,
) -> PricingPolicy:
    """The policy with one band of one brand at a new rate, as a new version in force from a
    time. ``band`` names the band by its upper bound in yuan (``50``, ``≤50``, ``51-100``) or
    the open-ended top band (``>100``, ``top``); RateTableError when it names none."""
    if not MIN_RATE_BP <= rate_bp <= 10_000:
        raise RateTableError(f"rate {rate_bp // 100}.{rate_bp % 100:02d}% is outside 10%–100%")
    bands = policy.rates.get(brand)
    if bands is None:
        raise RateTableError(f"no rates for {brand}")
    text = band.strip().lower().replace("元", "").replace("yuan", "").strip()
    index: int | None = None
    if _BAND_TOP.match(text):
        index = len(bands) - 1 if bands[-1].max_face_fen is None else None
    elif (match := _BAND_UPTO.match(text)) is not None:
        whole, _, cents = match.group(1).partition(".")
        up_to_fen = int(whole) * 100 + int((cents + "00")[:2])
        index = next((i for i, b in enumerate(bands) if b.max_face_fen == up_to_fen), None)
    if index is None:
        raise RateTableError(f"{brand} has no band {band!r}")
    changed = list(bands)
    changed[index] = RateBand(bands[index].max_face_fen, rate_bp)
    rates = dict(policy.rates)
    rates[brand] = tuple(changed)
    return replace(policy, rates=rates, version=version, effective_from=effective_from)
