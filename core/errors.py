"""The error tree of cardbot. Each user-facing error carries a message-catalog key.

CardbotError
├── UserError                      bad input or a refusal the user can act on (key → message)
│   ├── CardNotRecognised          number matches no brand / fails its check digit
│   ├── CardNotFound               the issuer has no such card
│   ├── WrongSecret                secret does not match
│   ├── CardUnusable               used / frozen / expired / empty (reason in .key)
│   │   ├── CardLocked             this person got the card's secret wrong too often
│   │   ├── CardHeld               another order owns the card (accepted first)
│   │   ├── BrandNotBought         the rate table in force has no rate for the brand
│   │   └── IssuerInconsistent     the issuer's answer contradicts itself (balance > face)
│   ├── InvalidIdentity            name, resident ID or phone rejected
│   ├── InvalidPayoutAccount       payout account malformed
│   └── QuoteExpired               a locked quote ran out before it was accepted
├── ExternalError                  a port failed in a way that is not the user's fault
│   ├── IssuerUnavailable
│   └── PayoutOutcomeUnknown       timeout / 5xx / unknown code: query, never re-send anew
├── IntegrityError                 an invariant would break (unbalanced ledger, negative balance,
│                                  illegal state transition, concurrent update)
│   ├── LedgerError
│   ├── IllegalTransition
│   └── ConcurrentUpdate
└── DecryptionError                ciphertext does not open under any key / wrong row binding
"""

from __future__ import annotations

from typing import Any


class CardbotError(Exception):
    """Root of every error cardbot raises on purpose."""


class UserError(CardbotError):
    """A refusal the user can act on; ``key`` names its message in the catalog."""

    key = "error.generic"

    def __init__(self, key: str | None = None, **params: Any) -> None:
        if key is not None:
            self.key = key
        self.params = params
        super().__init__(self.key)


class CardNotRecognised(UserError):
    key = "error.card_not_recognised"


class CardNotFound(UserError):
    key = "error.card_not_found"


class WrongSecret(UserError):
    key = "error.wrong_secret"


class AccountSuspended(UserError):
    """Too many failed cards lately (wrong secrets, used cards): no new cards for a while."""

    key = "risk.suspended"


class KycMismatch(UserError):
    """The real-name check says the bank card is not the verified person's (``reason``)."""

    key = "kyc.mismatch"


class CardUnusable(UserError):
    key = "error.card_unusable"


class CardLocked(CardUnusable):
    key = "error.card_locked"


class CardHeld(CardUnusable):
    """Another order accepted this card first: it owns the card until it is withdrawn."""

    key = "error.card_held"


class BrandNotBought(CardUnusable):
    """The rate table in force has no rate for this brand: we do not buy it now."""

    key = "error.brand_not_bought"


class IssuerInconsistent(CardUnusable):
    """The issuer's data cannot be true (a balance above the face value): nothing is quoted
    on it. An issuer error, not the user's — the user is told to try later or ask a person."""

    key = "error.issuer_inconsistent"


class CannotCancel(UserError):
    key = "sell.cannot_cancel_paying"


class InvalidIdentity(UserError):
    key = "error.invalid_identity"


class InvalidPayoutAccount(UserError):
    key = "error.invalid_payout_account"


class QuoteExpired(UserError):
    key = "error.quote_expired"


class ExternalError(CardbotError):
    """A port failed; not the user's fault."""


class IssuerUnavailable(ExternalError):
    pass


class PayoutOutcomeUnknown(ExternalError):
    """The provider may or may not have executed the transfer; query under the same reference."""


class KycUnavailable(ExternalError):
    """The real-name check service did not answer; nothing was decided."""


class IntegrityError(CardbotError):
    """An invariant would break."""


class LedgerError(IntegrityError):
    pass


class IllegalTransition(IntegrityError):
    pass


class ConcurrentUpdate(IntegrityError):
    pass


class PreconditionFailed(IntegrityError):
    pass


class DecryptionError(CardbotError):
    pass
