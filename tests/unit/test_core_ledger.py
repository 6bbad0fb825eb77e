"""The ledger: balanced transactions, overdraft rules, and settlement sequences."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from core import ledger
from core.errors import LedgerError
from core.model import LedgerTransaction, PayoutMethod, Posting

AT = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)


def legs(txn: LedgerTransaction) -> dict[str, int]:
    return {p.account: p.amount_fen for p in txn.postings}


def test_account_names() -> None:
    assert ledger.CARD_INVENTORY == "card_inventory"
    assert ledger.MARGIN_REVENUE == "margin_revenue"
    assert ledger.user_payable(7) == "user_payable:7"
    assert ledger.payout_clearing(PayoutMethod.ALIPAY) == "payout_clearing:alipay"
    assert ledger.payout_clearing("bank") == "payout_clearing:bank"
    assert ledger.provider_funds("wechat") == "provider_funds:wechat"


def test_a_purchase_debits_inventory_and_credits_the_person_and_the_margin() -> None:
    txn = ledger.purchase(42, 7, 50_000, 45_900, AT)
    assert (txn.kind, txn.order_id, txn.created_at) == ("purchase", 42, AT)
    assert legs(txn) == {
        "card_inventory": 50_000,
        "user_payable:7": -45_900,
        "margin_revenue": -4_100,
    }


def test_a_purchase_without_margin_omits_the_margin_leg() -> None:
    txn = ledger.purchase(42, 7, 50_000, 50_000, AT)
    assert legs(txn) == {"card_inventory": 50_000, "user_payable:7": -50_000}


@pytest.mark.parametrize(("balance", "payout"), [(50_000, 0), (50_000, 50_001), (50_000, -1)])
def test_a_purchase_paying_nothing_or_more_than_the_balance_is_refused(
    balance: int, payout: int
) -> None:
    with pytest.raises(LedgerError):
        ledger.purchase(42, 7, balance, payout, AT)


def test_a_reserve_moves_the_payable_into_clearing() -> None:
    txn = ledger.payout_reserve(42, 7, PayoutMethod.BANK, 45_900, AT)
    assert txn.kind == "payout_reserve"
    assert legs(txn) == {"user_payable:7": 45_900, "payout_clearing:bank": -45_900}


def test_a_post_moves_clearing_out_of_the_provider_funds() -> None:
    txn = ledger.payout_post(42, 7, "alipay", 45_900, AT)
    assert txn.kind == "payout_post"
    assert legs(txn) == {"payout_clearing:alipay": 45_900, "provider_funds:alipay": -45_900}


def test_a_void_reverses_the_reserve() -> None:
    reserve = ledger.payout_reserve(42, 7, "wechat", 45_900, AT)
    void = ledger.payout_void(42, 7, "wechat", 45_900, AT)
    assert void.kind == "payout_void"
    assert legs(void) == {k: -v for k, v in legs(reserve).items()}


@pytest.mark.parametrize(
    "builder", [ledger.payout_reserve, ledger.payout_post, ledger.payout_void]
)
@pytest.mark.parametrize("amount", [0, -5])
def test_payout_transactions_need_a_positive_amount(builder: object, amount: int) -> None:
    with pytest.raises(LedgerError):
        builder(42, 7, "bank", amount, AT)  # type: ignore[operator]


def test_an_unbalanced_transaction_is_refused() -> None:
    with pytest.raises(LedgerError, match="balance"):
        ledger.check_balanced([Posting("card_inventory", 10), Posting("margin_revenue", -9)])


def test_a_single_leg_transaction_is_refused() -> None:
    with pytest.raises(LedgerError, match="two"):
        ledger.check_balanced([Posting("card_inventory", 0)])


def test_a_zero_leg_is_refused() -> None:
    with pytest.raises(LedgerError, match="zero"):
        ledger.check_balanced(
            [
                Posting("card_inventory", 10),
                Posting("margin_revenue", -10),
                Posting("user_payable:1", 0),
            ]
        )


def test_a_posting_to_an_unknown_account_is_refused() -> None:
    with pytest.raises(LedgerError, match="unknown"):
        ledger.check_balanced([Posting("petty_cash", 10), Posting("margin_revenue", -10)])


def test_only_provider_funds_may_go_negative() -> None:
    assert ledger.may_go_negative("provider_funds:alipay")
    for account in ("card_inventory", "margin_revenue", "user_payable:7", "payout_clearing:bank"):
        assert not ledger.may_go_negative(account)
    with pytest.raises(LedgerError):
        ledger.may_go_negative("petty_cash")


@pytest.mark.parametrize(
    ("account", "balance_after", "ok"),
    [
        ("user_payable:7", -1, True),
        ("user_payable:7", 0, True),
        ("user_payable:7", 1, False),
        ("margin_revenue", 1, False),
        ("payout_clearing:bank", 1, False),
        ("payout_clearing:bank", -1, True),
        ("card_inventory", 0, True),
        ("card_inventory", -1, False),
        ("provider_funds:bank", -(10**12), True),
        ("provider_funds:bank", 10**12, True),
    ],
)
def test_overdraft_rules_follow_each_accounts_normal_side(
    account: str, balance_after: int, ok: bool
) -> None:
    if ok:
        ledger.check_no_overdraft(account, balance_after)
    else:
        with pytest.raises(LedgerError, match="overdrawn"):
            ledger.check_no_overdraft(account, balance_after)


@given(st.integers(1, 10**9), st.integers(1, 10**9), st.integers(1, 10**6))
def test_every_builder_returns_a_balanced_transaction(a: int, b: int, user: int) -> None:
    balance, payout = max(a, b), min(a, b)
    for txn in (
        ledger.purchase(1, user, balance, payout, AT),
        ledger.payout_reserve(1, user, "bank", payout, AT),
        ledger.payout_post(1, user, "bank", payout, AT),
        ledger.payout_void(1, user, "bank", payout, AT),
    ):
        ledger.check_balanced(txn.postings)
        assert sum(p.amount_fen for p in txn.postings) == 0


class Settlement(RuleBasedStateMachine):
    """Orders bought, payouts reserved, then posted or voided (and retried after a void), the
    way core.sale uses the builders; an over-reserve is refused by check_no_overdraft."""

    bought = Bundle("bought")
    reserved = Bundle("reserved")

    def __init__(self) -> None:
        super().__init__()
        self.balances: dict[str, int] = defaultdict(int)
        self.owed: dict[int, int] = defaultdict(int)
        self.next_order = 1

    def post(self, txn: LedgerTransaction) -> None:
        ledger.check_balanced(txn.postings)
        for p in txn.postings:
            ledger.check_no_overdraft(p.account, self.balances[p.account] + p.amount_fen)
        for p in txn.postings:
            self.balances[p.account] += p.amount_fen

    @rule(
        target=bought,
        user=st.integers(1, 3),
        balance=st.integers(1, 10**7),
        share=st.integers(1, 10_000),
    )
    def purchase(self, user: int, balance: int, share: int) -> tuple[int, int, int]:
        payout = max(1, balance * share // 10_000)
        order = self.next_order
        self.next_order += 1
        self.post(ledger.purchase(order, user, balance, payout, AT))
        self.owed[user] += payout
        return order, user, payout

    @rule(
        target=reserved,
        order=consumes(bought),
        method=st.sampled_from(list(PayoutMethod)),
    )
    def reserve(self, order: tuple[int, int, int], method: PayoutMethod) -> tuple[int, ...]:
        order_id, user, payout = order
        payable = ledger.user_payable(user)
        # What core.sale checks before it stores a payout:
        ledger.check_no_overdraft(payable, self.balances[payable] + payout)
        self.post(ledger.payout_reserve(order_id, user, method, payout, AT))
        self.owed[user] -= payout
        return order_id, user, payout, list(PayoutMethod).index(method)

    @rule(order=consumes(reserved))
    def succeed(self, order: tuple[int, int, int, int]) -> None:
        order_id, user, payout, method = order
        self.post(ledger.payout_post(order_id, user, list(PayoutMethod)[method], payout, AT))

    @rule(target=bought, order=consumes(reserved))
    def fail(self, order: tuple[int, int, int, int]) -> tuple[int, int, int]:
        order_id, user, payout, method = order
        self.post(ledger.payout_void(order_id, user, list(PayoutMethod)[method], payout, AT))
        self.owed[user] += payout
        return order_id, user, payout  # to be paid again, under a new reserve

    @rule(user=st.integers(1, 3), extra=st.integers(1, 10**6))
    def over_reserve_is_refused(self, user: int, extra: int) -> None:
        payable = ledger.user_payable(user)
        with pytest.raises(LedgerError):
            ledger.check_no_overdraft(payable, self.balances[payable] + self.owed[user] + extra)

    @invariant()
    def the_ledger_sums_to_zero(self) -> None:
        assert sum(self.balances.values()) == 0

    @invariant()
    def no_account_but_provider_funds_is_overdrawn(self) -> None:
        for account, balance in self.balances.items():
            ledger.check_no_overdraft(account, balance)

    @invariant()
    def each_person_is_owed_exactly_what_is_not_yet_reserved(self) -> None:
        for user, owed in self.owed.items():
            assert self.balances[ledger.user_payable(user)] == -owed


TestSettlement = Settlement.TestCase
