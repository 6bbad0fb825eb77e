"""Reconciliation: a payout provider's statement against our payouts and our ledger.

The provider keeps its own record of every transfer; we keep payouts (one provider reference
each) and a double-entry ledger that reserves a payout's money, then posts it (the provider paid)
or voids it (the provider refused). :func:`reconcile` lists every way the two disagree, each
difference with its kind, our record and theirs, and the money at stake:

=========================  ===============================================================
kind                       meaning
=========================  ===============================================================
``double_payment``         the provider paid one order more than once (several successes)
``paid_not_settled``       the provider paid; our books still hold or released the money
                           (the dangerous one: money left, books say unknown or failed)
``settled_not_paid``       our books say paid; the provider failed it, is still processing,
                           or never saw it
``voided_but_processing``  we released the money, the provider may still pay
``failed_not_recorded``    the provider refused; our books still hold the reserve
``amount_differs``         the provider moved another amount than we asked for
``method_differs``         the provider paid through another channel than we asked for
``txn_id_differs``         the provider's transaction id is not the one we recorded
``unknown_reference``      a provider transfer under a reference we never issued
``missing_at_provider``    our unfinished or failed payout the provider has no record of:
                           query it under the same reference — never resend under a new one
``duplicate_row``          the statement lists one reference more than once
``books_inconsistent``     our payout and our ledger disagree (state, amount or method)
=========================  ===============================================================

A payout of ours still in flight (created less than ``grace`` ago and not final on both sides)
is listed apart, not as a difference. Pure: the statement arrives as text, the records as
values; nothing here reads a file or a database.

The statement is CSV with a header, columns in any order (unknown columns are ignored)::

    reference,provider_txn_id,method,amount_fen,state,created_at,completed_at,failure_reason

``reference``, ``provider_txn_id``, ``method``, ``amount_fen``, ``state`` and ``completed_at``
are required in the header (``provider_txn_id`` and ``completed_at`` may be empty in a row: a
refused transfer has no transaction id, an unfinished one no completion time). See
``bot/sandbox/PAYOUTS.md`` for the full format.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from core import ledger
from core.masking import redact
from core.model import (
    LedgerTransaction,
    OrderStatus,
    Payout,
    PayoutMethod,
    PayoutState,
)
from core.risk import SHANGHAI

# --------------------------------------------------------------------------------------------
# The statement format

STATEMENT_COLUMNS = (
    "reference",
    "provider_txn_id",
    "method",
    "amount_fen",
    "state",
    "created_at",
    "completed_at",
    "failure_reason",
)
REQUIRED_COLUMNS = (
    "reference",
    "provider_txn_id",
    "method",
    "amount_fen",
    "state",
    "completed_at",
)

# Names providers use for the same columns (Alipay, WeChat Pay v2 / v3).
_COLUMN_ALIASES = {
    "out_biz_no": "reference",
    "out_bill_no": "reference",
    "partner_trade_no": "reference",
    "transfer_bill_no": "provider_txn_id",
    "payment_no": "provider_txn_id",
    "txn_id": "provider_txn_id",
}

_STATE_WORDS = {
    "succeeded": PayoutState.SUCCEEDED,
    "success": PayoutState.SUCCEEDED,
    "failed": PayoutState.FAILED,
    "fail": PayoutState.FAILED,
    "processing": PayoutState.PROCESSING,
    "dealing": PayoutState.PROCESSING,
}

MAX_REFERENCE_LENGTH = 64
_FEN = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class StatementRow:
    """One transfer as the provider reports it."""

    reference: str
    method: PayoutMethod
    amount_fen: int
    state: PayoutState  # SUCCEEDED, FAILED or PROCESSING
    provider_txn_id: str | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None
    failure_reason: str | None = None
    line: int = 0  # where it stands in the statement file (0: not from a file)


@dataclass(frozen=True)
class StatementError:
    """A row (or the header) that could not be read, by line number in the file."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Statement:
    rows: tuple[StatementRow, ...]
    errors: tuple[StatementError, ...]


def _time(text: str, column: str) -> datetime | None:
    """An ISO 8601 time; one without an offset is Asia/Shanghai time, as Chinese providers
    write it. Raises ValueError with a readable message."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{column} {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=SHANGHAI)
    return moment


def _row(values: Mapping[str, str], line: int) -> StatementRow:
    """One statement row from its cells; raises ValueError naming the bad cell."""
    reference = values["reference"]
    if not reference:
        raise ValueError("reference is empty")
    if len(reference) > MAX_REFERENCE_LENGTH:
        raise ValueError(f"reference is longer than {MAX_REFERENCE_LENGTH} characters")
    try:
        method = PayoutMethod(values["method"].lower())
    except ValueError:
        choices = ", ".join(m.value for m in PayoutMethod)
        raise ValueError(f"method {values['method']!r} is not one of {choices}") from None
    amount_text = values["amount_fen"]
    if not _FEN.fullmatch(amount_text) or int(amount_text) == 0:
        raise ValueError(f"amount_fen {amount_text!r} is not a positive whole number of fen")
    state = _STATE_WORDS.get(values["state"].lower())
    if state is None:
        raise ValueError(f"state {values['state']!r} is not one of succeeded, failed, processing")
    return StatementRow(
        reference=reference,
        method=method,
        amount_fen=int(amount_text),
        state=state,
        provider_txn_id=values.get("provider_txn_id") or None,
        created_at=_time(values.get("created_at", ""), "created_at"),
        completed_at=_time(values.get("completed_at", ""), "completed_at"),
        failure_reason=values.get("failure_reason") or None,
        line=line,
    )


def parse_statement(text: str) -> Statement:
    """Read a statement (CSV text with a header, columns in any order). Every row that cannot
    be read is reported by its line number; the rows that can are returned."""
    text = text.removeprefix("\ufeff")  # a byte-order mark, as spreadsheets write
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    errors: list[StatementError] = []
    try:
        header = next(reader, None)
    except csv.Error as exc:
        return Statement((), (StatementError(1, f"unreadable header: {exc}"),))
    if header is None or not any(cell.strip() for cell in header):
        return Statement((), (StatementError(1, "the statement is empty: no header"),))
    names = [_COLUMN_ALIASES.get(c.strip().lower(), c.strip().lower()) for c in header]
    doubled = sorted({n for n in names if n and names.count(n) > 1})
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if doubled or missing:
        problems = []
        if missing:
            problems.append("missing column(s) " + ", ".join(missing))
        if doubled:
            problems.append("column(s) given twice: " + ", ".join(doubled))
        return Statement((), (StatementError(1, "; ".join(problems)),))
    rows: list[StatementRow] = []
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(StatementError(line, f"unreadable row: {exc}"))
            line = reader.line_num + 1
            continue
        if not any(cell.strip() for cell in cells):
            line = reader.line_num + 1
            continue
        if len(cells) != len(names):
            errors.append(
                StatementError(line, f"expected {len(names)} fields, found {len(cells)}")
            )
        else:
            values = {n: c.strip() for n, c in zip(names, cells, strict=True) if n}
            try:
                rows.append(_row(values, line))
            except ValueError as exc:
                errors.append(StatementError(line, str(exc)))
        line = reader.line_num + 1
    return Statement(tuple(rows), tuple(errors))


def _iso(moment: datetime | None) -> str:
    return moment.astimezone(SHANGHAI).isoformat(timespec="seconds") if moment else ""


def format_statement(rows: Iterable[StatementRow]) -> str:
    """Write rows as statement CSV (times in Asia/Shanghai with their offset)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(STATEMENT_COLUMNS)
    for row in rows:
        writer.writerow(
            (
                row.reference,
                row.provider_txn_id or "",
                row.method.value,
                row.amount_fen,
                row.state.value,
                _iso(row.created_at),
                _iso(row.completed_at),
                row.failure_reason or "",
            )
        )
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# Our books: each payout with the ledger's view of it


class LedgerState(StrEnum):
    NONE = "none"  # no reserve found: the books never held this payout's money
    RESERVED = "reserved"  # held in payout clearing, waiting for the provider
    POSTED = "posted"  # paid out
    VOIDED = "voided"  # released back to what we owe the person
    CONFLICT = "conflict"  # transactions that do not fit one reserve → post | void


@dataclass(frozen=True)
class LedgerView:
    """What the ledger says about one payout."""

    state: LedgerState
    amount_fen: int | None = None
    method: str | None = None
    problem: str | None = None


@dataclass(frozen=True)
class BookedPayout:
    """One of our payouts, with its order's status and the ledger's view of it."""

    payout: Payout
    ledger: LedgerView
    order_status: OrderStatus | None = None


_PAYOUT_KINDS = (ledger.PAYOUT_RESERVE, ledger.PAYOUT_POST, ledger.PAYOUT_VOID)


def _clearing_leg(txn: LedgerTransaction) -> tuple[int, str | None]:
    """The amount through payout clearing and the method its account names."""
    for posting in txn.postings:
        if posting.account.startswith("payout_clearing:"):
            return abs(posting.amount_fen), posting.account.split(":", 1)[1]
    return 0, None


def ledger_views(
    payouts: Sequence[Payout], transactions: Sequence[LedgerTransaction]
) -> dict[str, LedgerView]:
    """The ledger's view of each payout (by reference). The ledger names orders, not payouts:
    an order's payouts are taken oldest first, each reserve starting the next one and each
    post or void resolving the one reserved last — the only order settlement posts them in.
    ``transactions`` must be oldest first and hold every payout transaction of these orders."""
    by_order: dict[int, list[Payout]] = defaultdict(list)
    for payout in payouts:
        by_order[payout.order_id].append(payout)
    for attempts in by_order.values():
        attempts.sort(key=lambda p: (p.created_at, p.id or 0, p.reference))
    views = {p.reference: LedgerView(LedgerState.NONE) for p in payouts}
    position: dict[int, int] = defaultdict(lambda: -1)

    def conflict(reference: str, problem: str) -> None:
        views[reference] = _conflicting(views[reference], LedgerState.CONFLICT, problem)

    for txn in transactions:
        if txn.kind not in _PAYOUT_KINDS or txn.order_id not in by_order:
            continue
        attempts = by_order[txn.order_id]
        amount, method = _clearing_leg(txn)
        if txn.kind == ledger.PAYOUT_RESERVE:
            position[txn.order_id] += 1
            if position[txn.order_id] >= len(attempts):
                conflict(attempts[-1].reference, "a reserve with no payout behind it")
                continue
            reference = attempts[position[txn.order_id]].reference
            if views[reference].state is LedgerState.NONE:
                views[reference] = LedgerView(LedgerState.RESERVED, amount, method)
            continue
        if position[txn.order_id] < 0:
            conflict(attempts[0].reference, f"{txn.kind} before any reserve")
            continue
        reference = attempts[position[txn.order_id]].reference
        view = views[reference]
        if view.state is not LedgerState.RESERVED:
            if view.state is not LedgerState.CONFLICT:
                conflict(reference, f"{txn.kind} of a payout already {view.state.value}")
            continue
        if (amount, method) != (view.amount_fen, view.method):
            conflict(reference, f"{txn.kind} of another amount or method than reserved")
            continue
        final = LedgerState.POSTED if txn.kind == ledger.PAYOUT_POST else LedgerState.VOIDED
        views[reference] = LedgerView(final, amount, method)
    return views


def _conflicting(view: LedgerView, state: LedgerState, problem: str) -> LedgerView:
    """The view marked as conflicting, keeping the first problem found."""
    return LedgerView(state, view.amount_fen, view.method, view.problem or problem)


def book(
    payouts: Sequence[Payout],
    transactions: Sequence[LedgerTransaction],
    order_statuses: Mapping[int, OrderStatus] | None = None,
) -> list[BookedPayout]:
    """Our payouts with the ledger's view of each, ready for :func:`reconcile`."""
    views = ledger_views(payouts, transactions)
    statuses = order_statuses or {}
    return [BookedPayout(p, views[p.reference], statuses.get(p.order_id)) for p in payouts]


# --------------------------------------------------------------------------------------------
# Differences


class Kind(StrEnum):
    DOUBLE_PAYMENT = "double_payment"
    PAID_NOT_SETTLED = "paid_not_settled"
    SETTLED_NOT_PAID = "settled_not_paid"
    VOIDED_BUT_PROCESSING = "voided_but_processing"
    FAILED_NOT_RECORDED = "failed_not_recorded"
    AMOUNT_DIFFERS = "amount_differs"
    METHOD_DIFFERS = "method_differs"
    TXN_ID_DIFFERS = "txn_id_differs"
    UNKNOWN_REFERENCE = "unknown_reference"
    MISSING_AT_PROVIDER = "missing_at_provider"
    DUPLICATE_ROW = "duplicate_row"
    BOOKS_INCONSISTENT = "books_inconsistent"


KIND_ORDER = tuple(Kind)  # most dangerous first: the order differences are listed in


@dataclass(frozen=True)
class Difference:
    kind: Kind
    reference: str  # ours, or the statement's (masked when it looks like an account number)
    amount_fen: int  # the money at stake
    note: str
    ours: tuple[dict[str, Any], ...] = ()
    theirs: tuple[dict[str, Any], ...] = ()
    order_id: int | None = None


@dataclass(frozen=True)
class KindTotal:
    count: int = 0
    amount_fen: int = 0


@dataclass(frozen=True)
class Reconciliation:
    """Every difference, what matched, and what is still in flight."""

    differences: tuple[Difference, ...]
    matched_count: int  # payouts both sides agree on, paid or failed
    matched_fen: int  # the money paid out by those (failed ones moved none)
    in_flight: tuple[dict[str, Any], ...]
    statement_rows: int
    payouts_checked: int
    provider_paid_fen: int  # successes in the statement
    books_posted_fen: int  # payouts our ledger posted, among those checked
    by_kind: dict[str, KindTotal] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.differences


def display_reference(text: str) -> str:
    """A statement's reference as it may be shown: an all-digit value could be an account
    number put in the wrong column, so it is masked."""
    compact = text.replace(" ", "").replace("-", "")
    return redact(text) if compact.isdigit() else text


def ours_record(booked: BookedPayout) -> dict[str, Any]:
    """Our side of a difference (no account, masked or not)."""
    p = booked.payout
    return {
        "order": f"CB{p.order_id:08d}",
        "reference": p.reference,
        "method": p.method.value,
        "amount_fen": p.amount_fen,
        "state": p.state.value,
        "ledger": booked.ledger.state.value,
        "provider_txn_id": p.provider_txn_id,
        "order_status": booked.order_status.value if booked.order_status else None,
        "created_at": p.created_at.isoformat(),
    }


def theirs_record(row: StatementRow) -> dict[str, Any]:
    """The provider's side of a difference."""
    return {
        "line": row.line,
        "reference": display_reference(row.reference),
        "method": row.method.value,
        "amount_fen": row.amount_fen,
        "state": row.state.value,
        "provider_txn_id": row.provider_txn_id,
        "completed_at": row.completed_at.isoformat() if row.completed_at else None,
        "failure_reason": row.failure_reason,
    }


class _Books(StrEnum):
    """Where our books leave a payout: paid out, released, or still held."""

    SETTLED = "settled"
    RELEASED = "released"
    OPEN = "open"


def _books(booked: BookedPayout) -> _Books:
    state = booked.ledger.state
    if state is LedgerState.POSTED:
        return _Books.SETTLED
    if state is LedgerState.VOIDED:
        return _Books.RELEASED
    if state is LedgerState.RESERVED:
        return _Books.OPEN
    # No usable ledger view (reported apart): go by the payout's own state.
    if booked.payout.state is PayoutState.SUCCEEDED:
        return _Books.SETTLED
    if booked.payout.state is PayoutState.FAILED:
        return _Books.RELEASED
    return _Books.OPEN


_EXPECTED_LEDGER = {
    PayoutState.SUCCEEDED: LedgerState.POSTED,
    PayoutState.FAILED: LedgerState.VOIDED,
}


def _books_problem(booked: BookedPayout) -> str | None:
    """How our payout record and our ledger disagree, if they do."""
    view, p = booked.ledger, booked.payout
    if view.state is LedgerState.CONFLICT:
        return f"ledger: {view.problem}"
    expected = _EXPECTED_LEDGER.get(p.state, LedgerState.RESERVED)
    if view.state is not expected:
        return f"payout is {p.state.value} but the ledger has it {view.state.value}"
    if view.amount_fen != p.amount_fen:
        return f"ledger moved {view.amount_fen} fen for a payout of {p.amount_fen} fen"
    if view.method != p.method.value:
        return f"ledger cleared it through {view.method}, the payout is {p.method.value}"
    return None


# What a provider state against our books means: (kind, note), None when they agree.
_STATE_DIFFERENCES: dict[tuple[PayoutState, _Books], tuple[Kind, str] | None] = {
    (PayoutState.SUCCEEDED, _Books.SETTLED): None,
    (PayoutState.SUCCEEDED, _Books.OPEN): (
        Kind.PAID_NOT_SETTLED,
        "the provider paid; our books still hold the money as unsettled: record the outcome",
    ),
    (PayoutState.SUCCEEDED, _Books.RELEASED): (
        Kind.PAID_NOT_SETTLED,
        "the provider paid; our books released the money as failed: the person may be paid twice",
    ),
    (PayoutState.FAILED, _Books.RELEASED): None,
    (PayoutState.FAILED, _Books.SETTLED): (
        Kind.SETTLED_NOT_PAID,
        "our books say paid; the provider refused the transfer",
    ),
    (PayoutState.FAILED, _Books.OPEN): (
        Kind.FAILED_NOT_RECORDED,
        "the provider refused; our books still hold the reserve: record the failure",
    ),
    (PayoutState.PROCESSING, _Books.OPEN): None,
    (PayoutState.PROCESSING, _Books.SETTLED): (
        Kind.SETTLED_NOT_PAID,
        "our books say paid; the provider has not finished the transfer",
    ),
    (PayoutState.PROCESSING, _Books.RELEASED): (
        Kind.VOIDED_BUT_PROCESSING,
        "our books released the money; the provider is still processing and may pay",
    ),
}


def _pair(booked: BookedPayout, row: StatementRow) -> dict[str, Any]:
    """Both sides of a difference about one payout (built only when there is one)."""
    return {
        "ours": (ours_record(booked),),
        "theirs": (theirs_record(row),),
        "order_id": booked.payout.order_id,
    }


def reconcile(
    statement: Sequence[StatementRow],
    payouts: Sequence[BookedPayout],
    *,
    now: datetime,
    grace: timedelta,
    period: tuple[datetime, datetime] | None = None,
) -> Reconciliation:
    """Compare a provider statement with our payouts and list every difference.

    ``payouts`` holds ours for the period (``[start, end)`` of their creation; all when None)
    and any other payout a statement row names. Every statement row is checked; a payout of
    ours outside the period is checked only when the statement lists it. A payout created
    less than ``grace`` before the period's end (or now) is in flight while neither side has
    finished it, and a payout of the period the statement does not list is in flight when
    created that late: the provider may list it on the next statement."""
    by_reference = {b.payout.reference: b for b in payouts}
    cutoff = min(now, period[1]) if period else now

    def in_period(b: BookedPayout) -> bool:
        return period is None or period[0] <= b.payout.created_at < period[1]

    def young(b: BookedPayout, until: datetime) -> bool:
        return b.payout.created_at > until - grace

    differences: list[Difference] = []
    in_flight: list[dict[str, Any]] = []
    seen: dict[str, StatementRow] = {}
    troubled: set[str] = set()  # references with a difference (not matched)

    def differ(kind: Kind, reference: str, amount: int, note: str, **parts: Any) -> None:
        differences.append(Difference(kind, reference, amount, note, **parts))
        troubled.add(reference)

    for row in statement:
        if row.reference in seen:
            first = seen[row.reference]
            differ(
                Kind.DUPLICATE_ROW,
                display_reference(row.reference),
                row.amount_fen,
                f"the statement lists this reference again (first on line {first.line})",
                theirs=(theirs_record(first), theirs_record(row)),
            )
            continue
        seen[row.reference] = row

    # Several provider successes for one order: one finding, covering each success's state.
    successes: dict[int, list[tuple[BookedPayout, StatementRow]]] = defaultdict(list)
    for reference, row in seen.items():
        booked = by_reference.get(reference)
        if booked is not None and row.state is PayoutState.SUCCEEDED:
            successes[booked.payout.order_id].append((booked, row))
    doubly_paid = {order for order, paid in successes.items() if len(paid) > 1}
    paid_twice: set[str] = set()  # the references of those successes
    for order_id in sorted(doubly_paid):
        paid = successes[order_id]
        amounts = [row.amount_fen for _, row in paid]
        differ(
            Kind.DOUBLE_PAYMENT,
            f"CB{order_id:08d}",
            sum(amounts) - max(amounts),
            f"the provider paid this order {len(paid)} times",
            ours=tuple(ours_record(b) for b, _ in paid),
            theirs=tuple(theirs_record(r) for _, r in paid),
            order_id=order_id,
        )
        paid_twice.update(b.payout.reference for b, _ in paid)
        troubled.update(paid_twice)

    matched_count = matched_fen = 0
    for reference, row in seen.items():
        booked = by_reference.get(reference)
        if booked is None:
            differ(
                Kind.UNKNOWN_REFERENCE,
                display_reference(reference),
                row.amount_fen,
                f"a {row.state.value} transfer under a reference we never issued",
                theirs=(theirs_record(row),),
            )
            continue
        p = booked.payout
        if row.amount_fen != p.amount_fen:
            differ(
                Kind.AMOUNT_DIFFERS,
                reference,
                abs(row.amount_fen - p.amount_fen),
                f"we asked for {p.amount_fen} fen, the provider moved {row.amount_fen} fen",
                **_pair(booked, row),
            )
        if row.method is not p.method:
            differ(
                Kind.METHOD_DIFFERS,
                reference,
                row.amount_fen,
                f"we asked for {p.method.value}, the provider used {row.method.value}",
                **_pair(booked, row),
            )
        if row.provider_txn_id and p.provider_txn_id and row.provider_txn_id != p.provider_txn_id:
            differ(
                Kind.TXN_ID_DIFFERS,
                reference,
                row.amount_fen,
                "the provider's transaction id is not the one we recorded",
                **_pair(booked, row),
            )
        problem = _books_problem(booked)
        if problem is not None:
            differ(Kind.BOOKS_INCONSISTENT, reference, p.amount_fen, problem, **_pair(booked, row))
        books = _books(booked)
        state_difference = _STATE_DIFFERENCES[(row.state, books)]
        if state_difference is not None and reference not in paid_twice:
            kind, note = state_difference
            if books is _Books.OPEN and young(booked, now):
                in_flight.append(ours_record(booked))
                troubled.add(reference)
            else:
                amount = p.amount_fen if kind is Kind.SETTLED_NOT_PAID else row.amount_fen
                differ(kind, reference, amount, note, **_pair(booked, row))
        elif books is _Books.OPEN and row.state is PayoutState.PROCESSING:
            in_flight.append(ours_record(booked))
            troubled.add(reference)
        if reference not in troubled:
            matched_count += 1
            if row.state is PayoutState.SUCCEEDED:
                matched_fen += p.amount_fen

    checked = [b for b in payouts if b.payout.reference in seen or in_period(b)]
    for booked in checked:
        reference = booked.payout.reference
        if reference in seen:
            continue
        problem = _books_problem(booked)
        if problem is not None:
            differ(
                Kind.BOOKS_INCONSISTENT,
                reference,
                booked.payout.amount_fen,
                problem,
                ours=(ours_record(booked),),
                order_id=booked.payout.order_id,
            )
        books = _books(booked)
        if young(booked, cutoff):
            # Sent after the statement was cut, or to be listed on the next one.
            in_flight.append(ours_record(booked))
        elif books is _Books.SETTLED:
            differ(
                Kind.SETTLED_NOT_PAID,
                reference,
                booked.payout.amount_fen,
                "our books say paid; the provider has no record of the transfer",
                ours=(ours_record(booked),),
                order_id=booked.payout.order_id,
            )
        else:
            note = (
                "the provider has no record of this transfer: query it under the same"
                " reference, never resend under a new one"
                if books is _Books.OPEN
                else "we recorded a provider failure; the provider has no record of it"
            )
            differ(
                Kind.MISSING_AT_PROVIDER,
                reference,
                booked.payout.amount_fen,
                note,
                ours=(ours_record(booked),),
                order_id=booked.payout.order_id,
            )

    differences.sort(key=lambda d: (KIND_ORDER.index(d.kind), d.reference))
    totals: dict[str, KindTotal] = {}
    for d in differences:
        t = totals.get(d.kind.value, KindTotal())
        totals[d.kind.value] = KindTotal(t.count + 1, t.amount_fen + d.amount_fen)
    return Reconciliation(
        differences=tuple(differences),
        matched_count=matched_count,
        matched_fen=matched_fen,
        in_flight=tuple(in_flight),
        statement_rows=len(statement),
        payouts_checked=len(checked),
        provider_paid_fen=sum(
            r.amount_fen for r in seen.values() if r.state is PayoutState.SUCCEEDED
        ),
        books_posted_fen=sum(
            b.payout.amount_fen for b in checked if b.ledger.state is LedgerState.POSTED
        ),
        by_kind=totals,
    )


def summary(result: Reconciliation) -> dict[str, Any]:
    """Counts and amounts only (no row contents): what the audit log keeps of a run."""
    return {
        "statement_rows": result.statement_rows,
        "payouts_checked": result.payouts_checked,
        "matched": result.matched_count,
        "matched_fen": result.matched_fen,
        "in_flight": len(result.in_flight),
        "differences": len(result.differences),
        "by_kind": {
            k: {"count": t.count, "amount_fen": t.amount_fen} for k, t in result.by_kind.items()
        },
        "provider_paid_fen": result.provider_paid_fen,
        "books_posted_fen": result.books_posted_fen,
    }
