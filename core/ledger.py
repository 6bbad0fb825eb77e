"""Double-entry ledger: account names, invariants, and the transactions settlement posts.

A posting's amount is positive for a debit and negative for a credit; an account's balance is
the sum of its postings. Every transaction sums to zero, so the whole ledger always does.

Accounts and their normal side::

    card_inventory             debit-normal   cards bought, at their balance; never below zero
    user_payable:<user>        credit-normal  what we owe a person; never overdrawn (> 0)
    margin_revenue             credit-normal  balance − payout of each card (rate spread + fee)
    payout_clearing:<method>   credit-normal  payouts sent, not yet confirmed by the provider
    provider_funds:<method>    money held at the provider; the only account that may go either
                               way (it is the source of every payout)

A payout is two-phase (TigerBeetle style): reserve (payable → clearing) when the payout is
stored, then post (clearing → provider funds) on the provider's success, or void (clearing →
payable) on its confirmed failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from core.errors import LedgerError
from core.model import LedgerTransaction, PayoutMethod, Posting

CARD_INVENTORY = "card_inventory"
MARGIN_REVENUE = "margin_revenue"

_USER_PAYABLE = "user_payable:"
_PAYOUT_CLEARING = "payout_clearing:"
_PROVIDER_FUNDS = "provider_funds:"

PURCHASE = "purchase"
PAYOUT_RESERVE = "payout_reserve"
PAYOUT_POST = "payout_post"
PAYOUT_VOID = "payout_void"


def user_payable(user_id: int) -> str:
    """The account of what we owe one person."""
    return f"{_USER_PAYABLE}{user_id}"


def payout_clearing(method: PayoutMethod | str) -> str:
    """The account of payouts in flight through one method."""
    return f"{_PAYOUT_CLEARING}{PayoutMethod(method).value}"


def provider_funds(method: PayoutMethod | str) -> str:
    """The account of money held at the provider of one method."""
    return f"{_PROVIDER_FUNDS}{PayoutMethod(method).value}"


def is_debit_normal(account: str) -> bool:
    """Whether an account normally carries a debit balance (raises LedgerError if unknown)."""
    if account == CARD_INVENTORY or account.startswith(_PROVIDER_FUNDS):
        return True
    if account == MARGIN_REVENUE or account.startswith((_USER_PAYABLE, _PAYOUT_CLEARING)):
        return False
    raise LedgerError(f"unknown account {account!r}")


def may_go_negative(account: str) -> bool:
    """Whether an account may be overdrawn: only ``provider_funds:*``."""
    is_debit_normal(account)
    return account.startswith(_PROVIDER_FUNDS)


def check_no_overdraft(account: str, balance_after: int) -> None:
    """Raise LedgerError if ``balance_after`` (debit positive) overdraws ``account``."""
    if may_go_negative(account):
        return
    overdrawn = balance_after < 0 if is_debit_normal(account) else balance_after > 0
    if overdrawn:
        raise LedgerError(f"{account} would be overdrawn ({balance_after} fen)")


def check_balanced(postings: Sequence[Posting]) -> None:
    """Raise LedgerError unless there are ≥ 2 legs, none zero, summing to zero."""
    if len(postings) < 2:
        raise LedgerError("a transaction needs at least two postings")
    if any(p.amount_fen == 0 for p in postings):
        raise LedgerError("a posting must not be zero")
    for p in postings:
        is_debit_normal(p.account)
    total = sum(p.amount_fen for p in postings)
    if total != 0:
        raise LedgerError(f"postings do not balance (sum {total} fen)")


def _transaction(
    kind: str, order_id: int, at: datetime, postings: list[Posting]
) -> LedgerTransaction:
    check_balanced(postings)
    return LedgerTransaction(kind=kind, postings=tuple(postings), created_at=at, order_id=order_id)


def _positive(amount_fen: int) -> None:
    if amount_fen <= 0:
        raise LedgerError(f"amount must be positive ({amount_fen} fen)")


def purchase(
    order_id: int, user_id: int, balance_fen: int, payout_fen: int, at: datetime
) -> LedgerTransaction:
    """Dr card_inventory balance; Cr user_payable payout; Cr margin_revenue the rest (if any)."""
    _positive(payout_fen)
    if payout_fen > balance_fen:
        raise LedgerError("a payout cannot exceed the card's balance")
    postings = [
        Posting(CARD_INVENTORY, balance_fen),
        Posting(user_payable(user_id), -payout_fen),
    ]
    if balance_fen > payout_fen:
        postings.append(Posting(MARGIN_REVENUE, payout_fen - balance_fen))
    return _transaction(PURCHASE, order_id, at, postings)


def payout_reserve(
    order_id: int, user_id: int, method: PayoutMethod | str, amount_fen: int, at: datetime
) -> LedgerTransaction:
    """A payout stored: Dr user_payable, Cr payout_clearing."""
    _positive(amount_fen)
    return _transaction(
        PAYOUT_RESERVE,
        order_id,
        at,
        [
            Posting(user_payable(user_id), amount_fen),
            Posting(payout_clearing(method), -amount_fen),
        ],
    )


def payout_post(
    order_id: int, user_id: int, method: PayoutMethod | str, amount_fen: int, at: datetime
) -> LedgerTransaction:
    """A payout confirmed by the provider: Dr payout_clearing, Cr provider_funds."""
    del user_id  # same signature as the other payout builders; the legs do not name the person
    _positive(amount_fen)
    return _transaction(
        PAYOUT_POST,
        order_id,
        at,
        [
            Posting(payout_clearing(method), amount_fen),
            Posting(provider_funds(method), -amount_fen),
        ],
    )


def payout_void(
    order_id: int, user_id: int, method: PayoutMethod | str, amount_fen: int, at: datetime
) -> LedgerTransaction:
    """A payout failed for sure: the reserve reversed (Dr payout_clearing, Cr user_payable)."""
    _positive(amount_fen)
    return _transaction(
        PAYOUT_VOID,
        order_id,
        at,
        [
            Posting(payout_clearing(method), amount_fen),
            Posting(user_payable(user_id), -amount_fen),
        ],
    )
