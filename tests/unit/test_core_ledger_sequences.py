"""Ledger invariants after any sequence of sales, payouts, failures and reversals: every
transaction balances, the whole ledger sums to zero, no one's payable is ever overdrawn, and
the books always say exactly what is owed, in flight and paid."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from core import ledger
from core.errors import LedgerError
from core.model import LedgerTransaction, PayoutMethod

AT = datetime(2026, 11, 22, tzinfo=UTC)
METHODS = list(PayoutMethod)

# An operation: (kind, order index, amount, method). Orders are created by "sale".
operations = st.lists(
    st.tuples(
        st.sampled_from(["sale", "reserve", "post", "void", "reserve_again"]),
        st.integers(0, 7),
        st.integers(1, 10_000_000),
        st.sampled_from(METHODS),
    ),
    max_size=60,
)


class Books:
    """The ledger as the application keeps it, and a model of what it must say."""

    def __init__(self) -> None:
        self.txns: list[LedgerTransaction] = []
        self.balances: Counter[str] = Counter()
        # model: per order (user, payout, state) with state in owed|reserved|paid
        self.orders: list[dict[str, object]] = []

    def post(self, txn: LedgerTransaction) -> None:
        after = Counter(self.balances)
        for p in txn.postings:
            after[p.account] += p.amount_fen
        for p in txn.postings:
            ledger.check_no_overdraft(p.account, after[p.account])
        self.txns.append(txn)
        self.balances = after


@settings(max_examples=300)
@given(operations)
def test_any_sequence_keeps_the_ledger_balanced_and_no_one_overdrawn(ops: list) -> None:  # type: ignore[type-arg]
    books = Books()
    for kind, index, amount, method in ops:
        if kind == "sale":
            user = index % 3
            payout = amount
            balance = payout + amount // 10
            order_id = len(books.orders) + 1
            books.post(ledger.purchase(order_id, user, balance, payout, AT))
            books.orders.append(
                {"id": order_id, "user": user, "payout": payout, "state": "owed", "method": method}
            )
            continue
        if not books.orders:
            continue
        order = books.orders[index % len(books.orders)]
        oid, user, payout = int(order["id"]), int(order["user"]), int(order["payout"])  # type: ignore[call-overload]
        paid_with = order["method"]
        if kind in ("reserve", "reserve_again"):
            txn = ledger.payout_reserve(oid, user, method, payout, AT)
            if order["state"] == "owed":
                books.post(txn)
                order["state"], order["method"] = "reserved", method
            else:
                # Reserving money already reserved or paid would overdraw what we owe the user
                # — unless another order of theirs still leaves enough owed (then the ledger
                # allows it: the guard is the balance, order state is the app's job).
                owed_elsewhere = sum(
                    int(o["payout"])  # type: ignore[call-overload]
                    for o in books.orders
                    if o["user"] == user and o["state"] == "owed"
                )
                if owed_elsewhere < payout:
                    try:
                        books.post(txn)
                    except LedgerError:
                        pass
                    else:
                        raise AssertionError("an overdraft of a payable went through")
                continue
        elif kind == "post" and order["state"] == "reserved":
            books.post(ledger.payout_post(oid, user, paid_with, payout, AT))  # type: ignore[arg-type]
            order["state"] = "paid"
        elif kind == "void" and order["state"] == "reserved":
            books.post(ledger.payout_void(oid, user, paid_with, payout, AT))  # type: ignore[arg-type]
            order["state"] = "owed"
        # Invariants after every step.
        for txn in books.txns:
            assert sum(p.amount_fen for p in txn.postings) == 0
        assert sum(books.balances.values()) == 0
        for account, balance in books.balances.items():
            ledger.check_no_overdraft(account, balance)

    # The books say exactly what the model says: owed per user, in flight per method, paid.
    if not books.txns:
        return
    for user in range(3):
        owed = sum(
            int(o["payout"])  # type: ignore[call-overload]
            for o in books.orders
            if o["user"] == user and o["state"] == "owed"
        )
        assert -books.balances[ledger.user_payable(user)] == owed
    in_flight = sum(int(o["payout"]) for o in books.orders if o["state"] == "reserved")  # type: ignore[call-overload]
    assert -sum(books.balances[ledger.payout_clearing(m)] for m in METHODS) == in_flight
    paid = sum(int(o["payout"]) for o in books.orders if o["state"] == "paid")  # type: ignore[call-overload]
    assert -sum(books.balances[ledger.provider_funds(m)] for m in METHODS) == paid
