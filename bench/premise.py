"""What every benchmark checks before it reports: that it measured what it says it measured.

A figure from a run whose premise failed (sales that never settled, reads of the wrong images,
a broadcast that did not finish) is worse than none: :func:`require` stops the run loudly —
``PREMISE FAILED`` and the reason on stderr, exit status 2 — instead of printing it.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from datetime import date, timedelta
from typing import NoReturn

from core.identity import id_check_character, parse_resident_id
from core.model import Order, OrderStatus

PREMISE_FAILED = 2  # the exit status of a run whose figures would not mean anything


class PremiseFailed(SystemExit):
    """Raised by :func:`require`; a SystemExit, so a script just lets it through."""


def fail(reason: str) -> NoReturn:
    print(f"PREMISE FAILED: {reason}", file=sys.stderr)
    raise PremiseFailed(PREMISE_FAILED)


def require(condition: bool, reason: str) -> None:
    """Stop the benchmark (exit 2, reason on stderr) unless ``condition`` holds."""
    if not condition:
        fail(reason)


def seller_id_number(n: int) -> str:
    """A valid resident ID (GB 11643) of its own for simulated seller ``n``: Beijing Chaoyang,
    born on a day counted from 1 January 1970, a sequence number; distinct for n < 3,650,000."""
    born = date(1970, 1, 1) + timedelta(days=n % 10_000)
    body = f"110105{born:%Y%m%d}{n // 10_000 % 1000:03d}"
    number = body + id_check_character(body)
    parse_resident_id(number, date(2026, 1, 1))  # raises if it is not a valid ID after all
    return number


def seller_phone(n: int) -> str:
    """A distinct mainland mobile number per seller."""
    return f"139{n:08d}"


def require_all_settled(orders: Iterable[Order], sales: int) -> None:
    """Every simulated sale ended ``settled``; else say how they ended, and why risk held them."""
    orders = list(orders)
    statuses = Counter(o.status.value for o in orders)
    settled = statuses.get(OrderStatus.SETTLED.value, 0)
    if settled == sales and len(orders) == sales:
        return
    reasons = Counter(
        r for o in orders if o.status is not OrderStatus.SETTLED for r in o.risk_reasons
    )
    fail(
        f"{settled} of {sales} sales settled ({len(orders)} orders: {dict(statuses)}); "
        f"risk reasons on the others: {dict(reasons) or 'none'}"
    )
