"""Domain records. Frozen dataclasses; sensitive values appear only as ciphertext (``*_enc``),
keyed fingerprints (``*_fp``) and masks (``*_masked``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any


class CardStatus(StrEnum):
    ACTIVE = "active"
    USED = "used"
    FROZEN = "frozen"
    EXPIRED = "expired"


class OrderStatus(StrEnum):
    QUOTED = "quoted"  # quote shown, waiting for the user's yes
    ACCEPTED = "accepted"  # user agreed to the locked quote; identity / payout method next
    REVIEW = "review"  # risk sent it to manual review
    APPROVED = "approved"  # risk passed (or staff approved); card to be redeemed
    REDEEMED = "redeemed"  # card balance taken at the issuer; payout to be made
    PAYING = "paying"  # payout sent (or outcome unknown), waiting for the provider
    SETTLED = "settled"  # payout confirmed
    PAYOUT_FAILED = "payout_failed"  # provider confirmed failure; funds released back to payable
    REJECTED = "rejected"  # risk or staff refused
    CANCELLED = "cancelled"  # the user withdrew before payout
    EXPIRED = "expired"  # the quote lapsed and was not renewed


class PayoutMethod(StrEnum):
    ALIPAY = "alipay"
    WECHAT = "wechat"
    BANK = "bank"


class PayoutState(StrEnum):
    PENDING = "pending"  # reference stored, provider not yet called (or call in flight)
    UNKNOWN = "unknown"  # provider called, outcome not known: query, never re-send anew
    PROCESSING = "processing"  # provider accepted, not final
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # provider-confirmed failure


class RiskOutcome(StrEnum):
    APPROVE = "approve"
    REVIEW = "review"
    REJECT = "reject"


class Role(StrEnum):
    """What a person may do: an admin is also staff; everyone else is a customer."""

    CUSTOMER = "customer"
    STAFF = "staff"
    ADMIN = "admin"


@dataclass(frozen=True)
class User:
    id: int
    created_at: datetime
    language: str = "zh"
    real_name_enc: bytes | None = None  # sealed (user_context "real_name"), like the ID number
    real_name_masked: str | None = None  # 王*
    id_number_enc: bytes | None = None
    id_number_fp: str | None = None
    id_number_masked: str | None = None
    phone_enc: bytes | None = None
    phone_masked: str | None = None
    verified_at: datetime | None = None
    kyc_level: int = 0
    suspended_until: datetime | None = None  # set by a risk streak; no new cards until then

    @property
    def is_verified(self) -> bool:
        return self.verified_at is not None and self.kyc_level >= 1


@dataclass(frozen=True)
class ChannelIdentity:
    channel: str
    external_id: str
    user_id: int
    chat_id: str
    reachable: bool = True


@dataclass(frozen=True)
class Consent:
    user_id: int
    kind: str  # e.g. "identity"
    version: str
    given_at: datetime
    channel: str
    id: int | None = None


@dataclass(frozen=True)
class Card:
    user_id: int
    brand: str
    number_enc: bytes
    number_fp: str
    number_masked: str
    created_at: datetime
    secret_enc: bytes | None = None
    status: str | None = None  # issuer's answer at verification (CardStatus value)
    face_value_fen: int | None = None
    balance_fen: int | None = None
    expires: date | None = None
    verified_at: datetime | None = None
    id: int | None = None


@dataclass(frozen=True)
class QuoteLine:
    """One line of a quote's arithmetic. ``key`` names it in the message catalog."""

    key: str
    amount_fen: int | None = None
    rate_bp: int | None = None
    label: str | None = None  # a name the line shows (e.g. the membership tier)


@dataclass(frozen=True)
class Quote:
    user_id: int
    card_id: int
    brand: str
    face_value_fen: int
    balance_fen: int
    rate_bp: int  # effective rate after every adjustment
    gross_fen: int
    fee_fen: int
    payout_fen: int
    lines: tuple[QuoteLine, ...]
    created_at: datetime
    expires_at: datetime
    rates_version: str
    id: int | None = None

    def is_locked_at(self, now: datetime) -> bool:
        """True while the quote's price still holds."""
        return now < self.expires_at


@dataclass(frozen=True)
class Order:
    user_id: int
    channel: str
    card_id: int
    quote_id: int
    brand: str
    card_fp: str
    card_masked: str
    face_value_fen: int
    balance_fen: int
    payout_fen: int
    fee_fen: int
    status: OrderStatus
    created_at: datetime
    updated_at: datetime
    risk_outcome: str | None = None
    risk_reasons: tuple[str, ...] = ()
    risk_version: str | None = None
    payout_account_id: int | None = None
    settled_at: datetime | None = None
    # A manual review's decision: when, by whom, the note, and when the user was told.
    reviewed_at: datetime | None = None
    reviewed_by: str | None = None
    review_note: str | None = None
    review_announced_at: datetime | None = None
    batch_id: int | None = None  # the batch sale it belongs to (one order per card)
    id: int | None = None

    @property
    def number(self) -> str:
        """The order number shown to people: CB + zero-padded id."""
        return f"CB{self.id:08d}" if self.id is not None else "CB--------"


@dataclass(frozen=True)
class Batch:
    """Many cards sold together: each card is its own order (``orders.batch_id``); the batch
    groups them for one quote, one confirmation and one receipt. ``source``: ``text``, ``file``
    or ``photos``; ``submitted_at``: when the user confirmed the payout."""

    user_id: int
    channel: str
    source: str
    created_at: datetime
    submitted_at: datetime | None = None
    id: int | None = None

    @property
    def number(self) -> str:
        """The batch number shown to people: PB + zero-padded id."""
        return batch_number(self.id) if self.id is not None else "PB--------"


def batch_number(batch_id: int) -> str:
    """A batch's number as people see it (PB00000012), from its id."""
    return f"PB{batch_id:08d}"


@dataclass(frozen=True)
class PayoutAccount:
    user_id: int
    method: PayoutMethod
    account_enc: bytes
    account_fp: str
    account_masked: str
    holder_name_enc: bytes  # sealed (holder_context), the verified real name
    holder_name_masked: str  # 王*
    created_at: datetime
    last_used_at: datetime | None = None
    id: int | None = None


@dataclass(frozen=True)
class Payout:
    order_id: int
    reference: str  # the one provider reference, stored before the provider is called
    method: PayoutMethod
    payout_account_id: int
    amount_fen: int
    state: PayoutState
    created_at: datetime
    updated_at: datetime
    attempts: int = 0
    provider_txn_id: str | None = None
    failure_reason: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class Posting:
    """One leg of a ledger transaction: positive = debit, negative = credit."""

    account: str
    amount_fen: int


@dataclass(frozen=True)
class LedgerTransaction:
    kind: str
    postings: tuple[Posting, ...]
    created_at: datetime
    order_id: int | None = None
    id: str | None = None  # uuid, assigned on posting


@dataclass(frozen=True)
class AuditEvent:
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str
    hash: str
    seq: int | None = None


@dataclass(frozen=True)
class RateTable:
    """A stored rate table: a pricing policy's data form, in force from ``effective_from``."""

    version: str
    effective_from: datetime
    content: dict[str, Any]
    sha256: str  # of the file it was imported from
    imported_by: str
    imported_at: datetime


@dataclass(frozen=True)
class ConversationState:
    channel: str
    user_key: str  # the channel's user id
    step: str
    data: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    updated_at: datetime | None = None
