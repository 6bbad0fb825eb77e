"""Reconciliation of a provider statement with our payouts and ledger (core/reconcile.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import ledger
from core.model import LedgerTransaction, OrderStatus, Payout, PayoutMethod, PayoutState
from core.reconcile import (
    BookedPayout,
    Kind,
    LedgerState,
    Reconciliation,
    StatementRow,
    book,
    format_statement,
    ledger_views,
    parse_statement,
    reconcile,
    summary,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
GRACE = timedelta(minutes=15)
LONG_AGO = NOW - timedelta(hours=2)
USER = 7

S, F, P = PayoutState.SUCCEEDED, PayoutState.FAILED, PayoutState.PROCESSING


def reference(order_id: int, attempt: int) -> str:
    return f"CBP{order_id:010d}N{attempt:02d}"


@dataclass
class World:
    """Our payouts and ledger, and the statement a faithful provider would send for them."""

    payouts: list[Payout]
    transactions: list[LedgerTransaction]
    rows: list[StatementRow]

    def booked(self) -> list[BookedPayout]:
        return book(self.payouts, self.transactions)

    def run(self, **kwargs: object) -> Reconciliation:
        options: dict[str, object] = {"now": NOW, "grace": GRACE, **kwargs}
        return reconcile(self.rows, self.booked(), **options)  # type: ignore[arg-type]


def make_world(orders: list[list[tuple[PayoutState, PayoutMethod, int]]]) -> World:
    """Each order: its attempts (state, method, amount), oldest first."""
    world = World([], [], [])
    at = LONG_AGO - timedelta(days=1)
    payout_id = 0
    for order_id, attempts in enumerate(orders, start=1):
        for attempt, (state, method, amount) in enumerate(attempts, start=1):
            payout_id += 1
            at += timedelta(minutes=1)
            ref = reference(order_id, attempt)
            txn_id = None if state is F else f"T{ref}"
            world.payouts.append(
                Payout(
                    order_id=order_id,
                    reference=ref,
                    method=method,
                    payout_account_id=1,
                    amount_fen=amount,
                    state=state,
                    created_at=at,
                    updated_at=at,
                    provider_txn_id=txn_id,
                    id=payout_id,
                )
            )
            world.transactions.append(ledger.payout_reserve(order_id, USER, method, amount, at))
            if state is S:
                world.transactions.append(ledger.payout_post(order_id, USER, method, amount, at))
            elif state is F:
                world.transactions.append(ledger.payout_void(order_id, USER, method, amount, at))
            world.rows.append(
                StatementRow(
                    reference=ref,
                    method=method,
                    amount_fen=amount,
                    state=state,
                    provider_txn_id=txn_id,
                    created_at=at,
                    completed_at=None if state is P else at,
                    failure_reason="PAYEE_NOT_EXIST" if state is F else None,
                    line=len(world.rows) + 2,
                )
            )
    return world


def found(result: Reconciliation) -> list[tuple[Kind, str]]:
    return [(d.kind, d.reference) for d in result.differences]


methods = st.sampled_from(list(PayoutMethod))
amounts = st.integers(min_value=1, max_value=10_000_000)
orders = st.lists(
    st.tuples(
        st.lists(st.tuples(methods, amounts), min_size=0, max_size=2),  # failed attempts
        st.tuples(st.sampled_from([S, F, P]), methods, amounts),  # the last attempt
    ).map(lambda o: [(F, m, a) for m, a in o[0]] + [o[1]]),
    min_size=1,
    max_size=8,
)


# --------------------------------------------------------------------------------------------
# A faithful statement matches; each single change to it is exactly one difference


@settings(max_examples=150, deadline=None)
@given(orders)
def test_a_statement_made_from_the_books_matches_them_exactly(
    spec: list[list[tuple[PayoutState, PayoutMethod, int]]],
) -> None:
    world = make_world(spec)
    result = world.run()
    assert result.differences == ()
    processing = [p for p in world.payouts if p.state is P]
    assert result.matched_count == len(world.payouts) - len(processing)
    assert result.matched_fen == sum(p.amount_fen for p in world.payouts if p.state is S)
    assert [r["reference"] for r in result.in_flight] == [p.reference for p in processing]
    assert result.provider_paid_fen == result.books_posted_fen


EXPECTED_STATE_KIND = {
    (S, F): Kind.PAID_NOT_SETTLED,
    (S, P): Kind.PAID_NOT_SETTLED,
    (F, S): Kind.SETTLED_NOT_PAID,
    (F, P): Kind.FAILED_NOT_RECORDED,
    (P, S): Kind.SETTLED_NOT_PAID,
    (P, F): Kind.VOIDED_BUT_PROCESSING,
}  # (the provider's state, ours) → the difference


@settings(max_examples=300, deadline=None)
@given(
    orders,
    st.sampled_from(["remove", "amount", "method", "txn_id", "extra", "duplicate", "state"]),
    st.data(),
)
def test_each_single_change_to_the_statement_is_reported_as_exactly_one_difference(
    spec: list[list[tuple[PayoutState, PayoutMethod, int]]], change: str, data: st.DataObject
) -> None:
    world = make_world(spec)
    index = data.draw(st.integers(0, len(world.rows) - 1), label="row")
    row, ours = world.rows[index], world.payouts[index]
    expected: list[tuple[Kind, str]]
    if change == "remove":
        del world.rows[index]
        kind = Kind.SETTLED_NOT_PAID if ours.state is S else Kind.MISSING_AT_PROVIDER
        expected = [(kind, ours.reference)]
    elif change == "amount":
        delta = data.draw(st.integers(1, 5000), label="delta")
        world.rows[index] = replace(row, amount_fen=row.amount_fen + delta)
        expected = [(Kind.AMOUNT_DIFFERS, ours.reference)]
    elif change == "method":
        other = data.draw(st.sampled_from([m for m in PayoutMethod if m is not row.method]))
        world.rows[index] = replace(row, method=other)
        expected = [(Kind.METHOD_DIFFERS, ours.reference)]
    elif change == "txn_id":
        if row.provider_txn_id is None:
            world.rows[index] = replace(row, provider_txn_id="SOMETHING-NEW")
            expected = []  # we recorded none for a refused transfer: nothing to compare
        else:
            world.rows[index] = replace(row, provider_txn_id=row.provider_txn_id + "0")
            expected = [(Kind.TXN_ID_DIFFERS, ours.reference)]
    elif change == "extra":
        stranger = replace(row, reference="ZZ" + row.reference, line=999)
        world.rows.append(stranger)
        expected = [(Kind.UNKNOWN_REFERENCE, stranger.reference)]
    elif change == "duplicate":
        world.rows.append(replace(row, line=999))
        expected = [(Kind.DUPLICATE_ROW, row.reference)]
    else:
        new_state = data.draw(st.sampled_from([s for s in (S, F, P) if s is not row.state]))
        world.rows[index] = replace(row, state=new_state)
        other_success = any(
            p.order_id == ours.order_id and p.state is S and p is not ours for p in world.payouts
        )
        if new_state is S and other_success:
            expected = [(Kind.DOUBLE_PAYMENT, f"CB{ours.order_id:08d}")]
        else:
            expected = [(EXPECTED_STATE_KIND[(new_state, ours.state)], ours.reference)]
    assert found(world.run()) == expected


# --------------------------------------------------------------------------------------------
# Each kind, by hand


def one_order(*attempts: tuple[PayoutState, int]) -> World:
    return make_world([[(state, PayoutMethod.ALIPAY, amount) for state, amount in attempts]])


def test_money_paid_while_our_books_still_hold_it_is_the_dangerous_difference() -> None:
    world = one_order((P, 18_000))
    world.rows[0] = replace(world.rows[0], state=S)
    [difference] = world.run().differences
    assert difference.kind is Kind.PAID_NOT_SETTLED
    assert difference.amount_fen == 18_000
    assert difference.ours[0]["ledger"] == "reserved" and difference.theirs[0]["state"] == S
    assert "unsettled" in difference.note


def test_money_paid_that_our_books_released_as_failed_warns_of_paying_twice() -> None:
    world = one_order((F, 5_000))
    world.rows[0] = replace(world.rows[0], state=S)
    [difference] = world.run().differences
    assert difference.kind is Kind.PAID_NOT_SETTLED and "twice" in difference.note


def test_a_settled_payout_the_provider_never_saw_is_settled_not_paid() -> None:
    world = one_order((S, 9_900))
    world.rows.clear()
    [difference] = world.run().differences
    assert (difference.kind, difference.amount_fen) == (Kind.SETTLED_NOT_PAID, 9_900)
    assert difference.theirs == ()


def test_an_unfinished_payout_the_provider_never_saw_needs_a_query_not_a_resend() -> None:
    world = one_order((P, 100))
    world.payouts[0] = replace(world.payouts[0], state=PayoutState.UNKNOWN)
    world.rows.clear()
    [difference] = world.run().differences
    assert difference.kind is Kind.MISSING_AT_PROVIDER
    assert "query" in difference.note and "never resend" in difference.note


def test_a_young_unfinished_payout_missing_from_the_statement_is_in_flight_not_a_difference() -> (
    None
):
    world = one_order((P, 100))
    young = NOW - GRACE + timedelta(minutes=1)
    world.payouts[0] = replace(world.payouts[0], state=PayoutState.PENDING, created_at=young)
    world.rows.clear()
    result = world.run()
    assert result.differences == () and result.clean
    assert [r["reference"] for r in result.in_flight] == [world.payouts[0].reference]
    assert found(world.run(now=NOW + timedelta(minutes=2))) == [
        (Kind.MISSING_AT_PROVIDER, world.payouts[0].reference)
    ]


def test_a_young_unknown_payout_the_provider_already_paid_is_in_flight() -> None:
    world = one_order((P, 100))
    young = NOW - timedelta(minutes=1)
    world.payouts[0] = replace(world.payouts[0], state=PayoutState.UNKNOWN, created_at=young)
    world.rows[0] = replace(world.rows[0], state=S)
    result = world.run()
    assert result.clean and len(result.in_flight) == 1
    assert found(world.run(now=NOW + GRACE)) == [
        (Kind.PAID_NOT_SETTLED, world.payouts[0].reference)
    ]


def test_two_provider_successes_for_one_order_are_one_double_payment() -> None:
    world = one_order((F, 4_000), (S, 4_000))
    world.rows[0] = replace(world.rows[0], state=S, provider_txn_id="T1")
    world.payouts[0] = replace(world.payouts[0], provider_txn_id=None)
    [difference] = world.run().differences
    assert difference.kind is Kind.DOUBLE_PAYMENT
    assert difference.reference == "CB00000001" and difference.order_id == 1
    assert difference.amount_fen == 4_000  # paid once too often
    assert len(difference.ours) == len(difference.theirs) == 2


def test_a_transfer_under_a_reference_we_never_issued_is_reported_with_its_amount() -> None:
    world = one_order((S, 500))
    world.rows.append(replace(world.rows[0], reference="CBP9999999999N01", amount_fen=777))
    [difference] = world.run().differences
    assert (difference.kind, difference.amount_fen) == (Kind.UNKNOWN_REFERENCE, 777)
    assert difference.ours == ()


def test_an_unknown_reference_that_looks_like_an_account_number_is_masked() -> None:
    world = one_order((S, 500))
    world.rows.append(replace(world.rows[0], reference="6222021234567890123"))
    [difference] = world.run().differences
    assert "6222021234567890123" not in repr(difference)
    assert difference.reference.endswith("0123")


def test_a_payout_whose_ledger_disagrees_with_it_is_reported_as_books_inconsistent() -> None:
    world = one_order((S, 2_500))
    del world.transactions[1]  # the post: the ledger still holds the money
    result = world.run()
    assert found(result) == [
        (Kind.PAID_NOT_SETTLED, world.payouts[0].reference),
        (Kind.BOOKS_INCONSISTENT, world.payouts[0].reference),
    ]
    assert "ledger has it reserved" in result.differences[1].note


def test_differences_are_listed_most_dangerous_first_with_totals_per_kind() -> None:
    world = make_world(
        [
            [(S, PayoutMethod.ALIPAY, 100)],
            [(S, PayoutMethod.WECHAT, 200)],
            [(P, PayoutMethod.BANK, 300)],
        ]
    )
    world.rows[0] = replace(world.rows[0], amount_fen=150)
    del world.rows[1]
    world.rows[1] = replace(world.rows[1], state=S)
    result = world.run()
    assert [d.kind for d in result.differences] == [
        Kind.PAID_NOT_SETTLED,
        Kind.SETTLED_NOT_PAID,
        Kind.AMOUNT_DIFFERS,
    ]
    assert result.by_kind[Kind.AMOUNT_DIFFERS].amount_fen == 50
    assert result.by_kind[Kind.SETTLED_NOT_PAID].count == 1
    assert result.matched_count == 0
    record = summary(result)
    assert record["differences"] == 3 and "CBP" not in repr(record)


# --------------------------------------------------------------------------------------------
# A statement of one day


def test_a_day_statement_checks_only_that_days_payouts_for_absence() -> None:
    world = make_world([[(S, PayoutMethod.ALIPAY, 100)], [(S, PayoutMethod.ALIPAY, 200)]])
    first, second = world.payouts
    world.rows = [world.rows[1]]  # the statement of the second payout's day
    period = (second.created_at, second.created_at + timedelta(days=1))
    result = world.run(period=period)
    assert result.clean and result.payouts_checked == 1 and result.matched_count == 1
    # a row of an earlier day is still matched, not an unknown reference
    earlier = make_world([[(S, first.method, 100)]]).rows[0]
    world.rows = [replace(world.rows[0], amount_fen=1), earlier]
    assert found(world.run(period=period)) == [(Kind.AMOUNT_DIFFERS, second.reference)]


def test_a_payout_made_just_before_the_day_ended_may_be_on_the_next_days_statement() -> None:
    world = one_order((S, 100))
    p = world.payouts[0]
    world.rows.clear()
    period = (p.created_at - timedelta(hours=1), p.created_at + timedelta(minutes=5))
    result = world.run(period=period)
    assert result.clean and len(result.in_flight) == 1


# --------------------------------------------------------------------------------------------
# The ledger's view of each payout


def test_an_orders_reserves_posts_and_voids_are_attributed_to_its_payouts_in_turn() -> None:
    world = one_order((F, 100), (F, 100), (S, 100))
    views = ledger_views(world.payouts, world.transactions)
    assert [views[p.reference].state for p in world.payouts] == [
        LedgerState.VOIDED,
        LedgerState.VOIDED,
        LedgerState.POSTED,
    ]


def test_a_post_without_a_reserve_or_twice_is_a_ledger_conflict() -> None:
    world = one_order((S, 100))
    twice = [*world.transactions, world.transactions[1]]
    view = ledger_views(world.payouts, twice)[world.payouts[0].reference]
    assert view.state is LedgerState.CONFLICT and "already posted" in (view.problem or "")
    orphan = ledger_views(world.payouts, world.transactions[1:])[world.payouts[0].reference]
    assert orphan.state is LedgerState.CONFLICT and "before any reserve" in (orphan.problem or "")


def test_a_post_of_another_amount_than_reserved_is_a_ledger_conflict() -> None:
    world = one_order((S, 100))
    p = world.payouts[0]
    txns = [world.transactions[0], ledger.payout_post(1, USER, p.method, 99, p.created_at)]
    view = ledger_views(world.payouts, txns)[p.reference]
    assert view.state is LedgerState.CONFLICT
    assert found(reconcile(world.rows, book(world.payouts, txns), now=NOW, grace=GRACE)) == [
        (Kind.BOOKS_INCONSISTENT, p.reference)
    ]


def test_the_order_status_travels_with_our_record() -> None:
    world = one_order((S, 100))
    world.rows.clear()
    booked = book(world.payouts, world.transactions, {1: OrderStatus.SETTLED})
    [difference] = reconcile(world.rows, booked, now=NOW, grace=GRACE).differences
    assert difference.ours[0]["order_status"] == "settled"


# --------------------------------------------------------------------------------------------
# The statement file

HEADER = "reference,provider_txn_id,method,amount_fen,state,created_at,completed_at"


def test_the_header_may_come_in_any_order_with_provider_names_and_extra_columns() -> None:
    text = (
        "\ufeffState,Amount_Fen,note,OUT_BIZ_NO,method,completed_at,transfer_bill_no\n"
        "SUCCESS,1234,hello,CBP0000000001N01,alipay,2026-11-22 10:00:00,T1\n"
        "dealing,5,,CBP0000000002N01,WeChat,,\n"
    )
    statement = parse_statement(text)
    assert statement.errors == ()
    first, second = statement.rows
    assert (first.reference, first.amount_fen, first.state) == ("CBP0000000001N01", 1234, S)
    assert first.provider_txn_id == "T1" and first.line == 2
    assert first.completed_at == datetime(2026, 11, 22, 2, 0, tzinfo=UTC)  # Shanghai time
    assert (second.method, second.state, second.completed_at) == (PayoutMethod.WECHAT, P, None)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("CBP1,T,alipay,12.50,succeeded,,", "amount_fen '12.50' is not a positive whole"),
        ("CBP1,T,alipay,-5,succeeded,,", "amount_fen '-5'"),
        ("CBP1,T,alipay,0,succeeded,,", "amount_fen '0'"),
        ("CBP1,T,paypal,5,succeeded,,", "method 'paypal' is not one of alipay, wechat, bank"),
        ("CBP1,T,alipay,5,refunded,,", "state 'refunded'"),
        (",T,alipay,5,succeeded,,", "reference is empty"),
        ("CBP1,T,alipay,5,succeeded,yesterday,", "created_at 'yesterday' is not an ISO 8601"),
        ("CBP1,T,alipay,5", "expected 7 fields, found 4"),
        ("X" * 65 + ",T,alipay,5,succeeded,,", "longer than 64"),
    ],
)
def test_a_malformed_row_is_reported_by_its_line_number(row: str, message: str) -> None:
    text = f"{HEADER}\nCBP0,T,alipay,1,succeeded,,\n\n{row}\nCBP2,T,bank,2,failed,,\n"
    statement = parse_statement(text)
    [error] = statement.errors
    assert error.line == 4 and message in error.message, error
    assert [r.reference for r in statement.rows] == ["CBP0", "CBP2"]


def test_line_numbers_count_physical_lines_when_a_field_spans_two() -> None:
    text = (
        f"{HEADER},failure_reason\n"
        'CBP0,T,alipay,1,failed,,,"two\nlines"\n'
        "CBP1,T,alipay,x,failed,,,\n"
    )
    [error] = parse_statement(text).errors
    assert error.line == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("reference,method,amount_fen,state\n", "missing column(s) provider_txn_id, completed_at"),
        (f"{HEADER},out_biz_no\n", "column(s) given twice: reference"),
    ],
)
def test_a_bad_header_is_one_error_on_line_one(text: str, message: str) -> None:
    statement = parse_statement(text)
    assert statement.rows == ()
    [error] = statement.errors
    assert error.line == 1 and message in error.message


def test_a_header_alone_is_an_empty_statement() -> None:
    assert parse_statement(HEADER + "\n") == parse_statement(HEADER)
    assert parse_statement(HEADER).rows == () and parse_statement(HEADER).errors == ()


@settings(max_examples=100, deadline=None)
@given(orders)
def test_a_written_statement_reads_back_the_same(
    spec: list[list[tuple[PayoutState, PayoutMethod, int]]],
) -> None:
    rows = make_world(spec).rows
    statement = parse_statement(format_statement(rows))
    assert statement.errors == ()
    assert [replace(r, line=0) for r in statement.rows] == [replace(r, line=0) for r in rows]
    assert [r.line for r in statement.rows] == list(range(2, len(rows) + 2))


def test_a_statement_without_a_transaction_id_is_not_a_txn_id_difference() -> None:
    world = one_order((S, 100))
    world.rows[0] = replace(world.rows[0], provider_txn_id=None)
    assert world.run().clean
    world.rows[0] = replace(world.rows[0], provider_txn_id="T-OTHER")
    assert found(world.run()) == [(Kind.TXN_ID_DIFFERS, world.payouts[0].reference)]
