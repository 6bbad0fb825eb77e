"""Money is integer fen. Rates are integer basis points (1 bp = 0.01 %). One rounding rule."""

from __future__ import annotations

BP_SCALE = 10_000


def apply_rate(amount_fen: int, rate_bp: int) -> int:
    """Amount × rate, rounded once, half up (ROUND_HALF_UP on non-negative amounts)."""
    if amount_fen < 0 or rate_bp < 0:
        raise ValueError("amount and rate must be non-negative")
    return (amount_fen * rate_bp * 2 + BP_SCALE) // (2 * BP_SCALE)


def yuan(amount_fen: int) -> str:
    """Render fen as yuan with two decimals: 12345 -> '123.45' (no float on the way)."""
    sign = "-" if amount_fen < 0 else ""
    whole, cents = divmod(abs(amount_fen), 100)
    return f"{sign}{whole:,}.{cents:02d}"


def percent(rate_bp: int) -> str:
    """Render basis points as a percentage: 9250 -> '92.5%', 9200 -> '92%', -250 -> '-2.5%'."""
    sign = "-" if rate_bp < 0 else ""
    whole, frac = divmod(abs(rate_bp), 100)
    text = f"{whole}.{frac:02d}".rstrip("0").rstrip(".")
    return f"{sign}{text}%"
