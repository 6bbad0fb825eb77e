"""Ports: everything outside the business, as Protocols.

Adapters live in vision/, storage/ and bot/; test doubles in tests/fakes.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from types import TracebackType
from typing import Protocol, Self

from core.messages import Reply
from core.model import (
    AuditEvent,
    Card,
    CardStatus,
    ChannelIdentity,
    Consent,
    ConversationState,
    LedgerTransaction,
    Order,
    OrderStatus,
    Payout,
    PayoutAccount,
    PayoutMethod,
    PayoutState,
    Quote,
    RateTable,
    User,
)

# --------------------------------------------------------------------------------------------
# Vision


@dataclass(frozen=True)
class Barcode:
    symbology: str  # "EAN13", "EAN8", "UPCA", "UPCE", "CODE128", "CODE39", "I25", "QRCODE"
    text: str


@dataclass(frozen=True)
class CardReading:
    """What a photo says: decoded barcodes (most trustworthy first), digit runs read by OCR,
    and photo-quality hints (``dark``, ``bright``, ``blurred``, ``too_small``, ``no_card``,
    ``animated``, ``not_an_image``, ``too_large``) when nothing could be read."""

    barcodes: tuple[Barcode, ...] = ()
    digits: tuple[str, ...] = ()
    hints: tuple[str, ...] = ()
    ms: float = 0.0

    @property
    def candidates(self) -> tuple[str, ...]:
        """Card-number candidates in order of trust: barcodes first, then OCR digits."""
        seen: dict[str, None] = {}
        for text in [b.text for b in self.barcodes] + list(self.digits):
            seen.setdefault(text, None)
        return tuple(seen)


class CardReader(Protocol):
    async def read(self, image: bytes) -> CardReading:
        """Read barcodes / printed digits from image bytes; never raises on bad images."""
        ...


# --------------------------------------------------------------------------------------------
# Issuer


@dataclass(frozen=True)
class CardVerification:
    status: CardStatus
    face_value_fen: int
    balance_fen: int
    expires: date
    used_at: datetime | None = None


@dataclass(frozen=True)
class Redemption:
    reference: str
    amount_fen: int
    redeemed_at: datetime


class CardIssuer(Protocol):
    async def verify(self, brand: str, number: str, secret: str | None) -> CardVerification:
        """Status, balance and expiry; raises CardNotFound, WrongSecret, IssuerUnavailable."""
        ...

    async def redeem(
        self, brand: str, number: str, secret: str | None, amount_fen: int, reference: str
    ) -> Redemption:
        """Take the balance off the card; idempotent per ``reference``."""
        ...


# --------------------------------------------------------------------------------------------
# Payouts


@dataclass(frozen=True)
class PayoutRequest:
    reference: str
    method: PayoutMethod
    account: str  # plaintext, only in memory on the way to the provider
    holder_name: str
    amount_fen: int


@dataclass(frozen=True)
class PayoutResult:
    reference: str
    state: PayoutState  # SUCCEEDED, FAILED, PROCESSING; UNKNOWN when the provider has no record
    provider_txn_id: str | None = None
    failure_reason: str | None = None
    completed_at: datetime | None = None


class PayoutGateway(Protocol):
    async def transfer(self, request: PayoutRequest) -> PayoutResult:
        """Send money; idempotent per reference; raises PayoutOutcomeUnknown when unsure."""
        ...

    async def query(self, reference: str) -> PayoutResult:
        """The provider's view of a transfer; raises PayoutOutcomeUnknown when unreachable."""
        ...


# --------------------------------------------------------------------------------------------
# Secrets at rest


class Vault(Protocol):
    def encrypt(self, plaintext: str, context: str) -> bytes:
        """AEAD-encrypt; ``context`` (e.g. "card.number:42") is bound as associated data."""
        ...

    def decrypt(self, blob: bytes, context: str) -> str:
        """Open a blob made by encrypt with the same context; raises DecryptionError."""
        ...

    def fingerprint(self, kind: str, value: str) -> str:
        """Keyed HMAC of a normalised value, for equality lookups without plaintext."""
        ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


@dataclass(frozen=True)
class BankCardCheck:
    """A bank-card four-element check (name, resident ID, phone, card): does the card belong to
    this person? ``reason`` when not: ``name_mismatch``, ``id_mismatch``, ``phone_mismatch``,
    ``card_invalid`` or ``card_unknown``."""

    matched: bool
    reason: str | None = None


class KycProvider(Protocol):
    async def verify_bank_card(
        self, name: str, id_number: str, phone: str, card_number: str
    ) -> BankCardCheck:
        """Ask the real-name service; raises KycUnavailable when it cannot answer."""
        ...


class Notifier(Protocol):
    async def notify(self, channel: str, user_key: str, reply: Reply) -> None:
        """Send a message to a user outside the request/response of a conversation."""
        ...


# --------------------------------------------------------------------------------------------
# Repositories and the unit of work. Repositories never commit.


class InboxRepository(Protocol):
    async def claim(self, channel: str, external_id: str, at: datetime) -> bool:
        """Record an inbound message id; False if it was already recorded (a redelivery)."""
        ...


class ConversationRepository(Protocol):
    async def get(
        self, channel: str, user_key: str, lock: bool = False
    ) -> ConversationState | None:
        """The conversation of a channel user, or None; ``lock`` holds it (serialising the
        person's messages) until the unit of work ends."""
        ...

    async def save(self, state: ConversationState) -> ConversationState:
        """Insert or update; the stored version must equal ``state.version`` (else
        ConcurrentUpdate); returns the state with version + 1."""
        ...


class UserRepository(Protocol):
    async def for_channel(
        self, channel: str, external_id: str, chat_id: str, language: str, at: datetime
    ) -> tuple[User, ChannelIdentity]:
        """The user behind a channel identity, created on first contact."""
        ...

    async def get(self, user_id: int) -> User:
        """A user by id; raises KeyError."""
        ...

    async def update(self, user: User) -> None:
        """Store changed fields of a user."""
        ...

    async def identities(self, user_id: int) -> Sequence[ChannelIdentity]:
        """Every channel identity of a user."""
        ...

    async def with_id_fp(self, id_number_fp: str) -> Sequence[int]:
        """Ids of every account verified with this resident ID (one person, all channels)."""
        ...

    async def set_reachable(self, channel: str, external_id: str, reachable: bool) -> bool:
        """Mark a channel identity (un)reachable — blocked the bot, unfollowed; the next message
        from it makes it reachable again. False when no such identity exists."""
        ...


class ConsentRepository(Protocol):
    async def add(self, consent: Consent) -> Consent:
        """Record a consent (append-only)."""
        ...

    async def has(self, user_id: int, kind: str, version: str) -> bool:
        """Whether the user gave this consent."""
        ...


class CardRepository(Protocol):
    async def add(self, card: Card) -> Card:
        """Insert a card; returns it with its id."""
        ...

    async def get(self, card_id: int) -> Card:
        """A card by id; raises KeyError."""
        ...

    async def update(self, card: Card) -> None:
        """Store changed fields of a card."""
        ...


class QuoteRepository(Protocol):
    async def add(self, quote: Quote) -> Quote:
        """Insert a quote; returns it with its id."""
        ...

    async def get(self, quote_id: int) -> Quote:
        """A quote by id; raises KeyError."""
        ...


class OrderRepository(Protocol):
    async def add(self, order: Order) -> Order:
        """Insert an order; returns it with its id."""
        ...

    async def get(self, order_id: int) -> Order:
        """An order by id; raises KeyError."""
        ...

    async def lock(self, order_id: int) -> Order:
        """An order, freshly read and locked against other processes until the unit of work
        ends: every change to an order's status after the quote goes through this."""
        ...

    async def with_status(self, statuses: Sequence[OrderStatus]) -> Sequence[Order]:
        """Every order in one of the statuses, oldest first."""
        ...

    async def update(self, order: Order) -> None:
        """Store changed fields (status, risk, payout account, timestamps)."""
        ...

    async def for_user(self, user_id: int, limit: int = 10) -> Sequence[Order]:
        """A user's orders, newest first."""
        ...

    async def recent(self, limit: int = 50) -> Sequence[Order]:
        """All orders, newest first."""
        ...

    async def with_card_fp(self, card_fp: str, statuses: Sequence[OrderStatus]) -> Sequence[Order]:
        """Orders for the same physical card in any of the given statuses."""
        ...

    async def payouts_since(
        self, user_ids: Sequence[int], since: datetime, statuses: Sequence[OrderStatus]
    ) -> Sequence[tuple[datetime, int]]:
        """(created_at, payout_fen) of the users' orders created since, in those statuses."""
        ...

    async def count_since(self, user_ids: Sequence[int], since: datetime) -> int:
        """How many orders (cards quoted) the users opened since, whatever became of them."""
        ...

    async def undisclosed_reviews(self) -> Sequence[Order]:
        """Orders with a review decision the user has not been told yet, oldest first."""
        ...


class PayoutAccountRepository(Protocol):
    async def add(self, account: PayoutAccount) -> PayoutAccount:
        """Insert; returns it with its id."""
        ...

    async def get(self, account_id: int) -> PayoutAccount:
        """By id; raises KeyError."""
        ...

    async def update(self, account: PayoutAccount) -> None:
        """Store last_used_at."""
        ...

    async def for_user(self, user_id: int) -> Sequence[PayoutAccount]:
        """A user's payout accounts, most recently used first."""
        ...

    async def find(
        self, user_id: int, method: PayoutMethod, account_fp: str
    ) -> PayoutAccount | None:
        """A user's existing account with this method and fingerprint."""
        ...

    async def holders(self, account_fp: str) -> Sequence[tuple[int, str | None]]:
        """(user id, resident ID fingerprint) of everyone who saved this payout account."""
        ...


class PayoutRepository(Protocol):
    async def add(self, payout: Payout) -> Payout:
        """Insert; the reference is unique, and an order has at most one payout that has not
        FAILED (a second one is refused with ConcurrentUpdate)."""
        ...

    async def for_order(self, order_id: int) -> Payout | None:
        """The latest payout of an order."""
        ...

    async def update(self, payout: Payout) -> None:
        """Store state, attempts, provider ids."""
        ...

    async def for_reconciliation(
        self, since: datetime | None, until: datetime | None, references: Sequence[str]
    ) -> Sequence[tuple[Payout, Order]]:
        """Every payout, with its order, of each order that has a payout created in
        ``[since, until)`` or one under a reference listed; every payout when both bounds are
        None. Oldest first."""
        ...


class LedgerRepository(Protocol):
    async def post(self, txn: LedgerTransaction) -> LedgerTransaction:
        """Append a balanced transaction (append-only); returns it with its id."""
        ...

    async def balance(self, account: str) -> int:
        """Sum of an account's postings (debit positive)."""
        ...

    async def transactions(self, order_id: int | None = None) -> Sequence[LedgerTransaction]:
        """Transactions, oldest first, optionally for one order."""
        ...

    async def for_orders(self, order_ids: Sequence[int]) -> Sequence[LedgerTransaction]:
        """The transactions of some orders, oldest first."""
        ...


class AuditRepository(Protocol):
    async def append(
        self, at: datetime, actor: str, action: str, subject: str, details: dict[str, object]
    ) -> AuditEvent:
        """Append an event chained to the previous one (serialised across processes)."""
        ...

    async def all(self) -> Sequence[AuditEvent]:
        """Every event, in order."""
        ...

    async def by_actor(
        self, actor: str, actions: Sequence[str], since: datetime
    ) -> Sequence[AuditEvent]:
        """What one actor did since a time, among some actions, in order."""
        ...

    async def head(self) -> AuditEvent | None:
        """The newest event: its hash stands for the whole chain."""
        ...

    async def for_subject(self, subject: str) -> Sequence[AuditEvent]:
        """The events about one subject (e.g. ``order:12``), in order."""
        ...


class RiskListRepository(Protocol):
    async def add(self, kind: str, fp: str, reason: str, added_by: str, at: datetime) -> bool:
        """List a fingerprint (kind: id_number, payout_account, card); False if listed."""
        ...

    async def remove(self, kind: str, fp: str) -> bool:
        """Unlist a fingerprint; False if it was not listed."""
        ...

    async def hits(self, candidates: Mapping[str, str | None]) -> tuple[str, ...]:
        """Which of the kinds (kind → fingerprint) are listed, in the order given."""
        ...

    async def entries(self) -> Sequence[tuple[str, str, str, str, datetime]]:
        """(kind, fingerprint, reason, added_by, added_at), newest first."""
        ...


class RateTableRepository(Protocol):
    async def add(self, table: RateTable) -> bool:
        """Store a rate table; False if its version exists already (versions are immutable)."""
        ...

    async def in_force(self, at: datetime) -> RateTable | None:
        """The table in force at a time: the latest effective at or before it."""
        ...

    async def all(self) -> Sequence[RateTable]:
        """Every table, by the time it takes effect, newest first."""
        ...


class UnitOfWork(Protocol):
    inbox: InboxRepository
    conversations: ConversationRepository
    users: UserRepository
    consents: ConsentRepository
    cards: CardRepository
    quotes: QuoteRepository
    orders: OrderRepository
    payout_accounts: PayoutAccountRepository
    payouts: PayoutRepository
    ledger: LedgerRepository
    audit: AuditRepository
    risk_list: RiskListRepository
    rates: RateTableRepository

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Roll back whatever was not committed."""
        ...

    async def commit(self) -> None:
        """Make the work durable."""
        ...

    async def rollback(self) -> None:
        """Discard the work since the last commit."""
        ...


class UnitOfWorkFactory(Protocol):
    def __call__(self) -> UnitOfWork:
        """A fresh unit of work."""
        ...


__all__ = [
    "AuditEvent",
    "BankCardCheck",
    "Barcode",
    "CardIssuer",
    "CardReader",
    "CardReading",
    "CardVerification",
    "Clock",
    "KycProvider",
    "LedgerTransaction",
    "Notifier",
    "PayoutGateway",
    "PayoutRequest",
    "PayoutResult",
    "Redemption",
    "UnitOfWork",
    "UnitOfWorkFactory",
    "Vault",
]


# --------------------------------------------------------------------------------------------
# The WeChat channel's memory (bot/wechat/): outbound messages that are not a passive reply,
# each user's customer-service window, and the account's shared access token.


@dataclass(frozen=True)
class OutboundMessage:
    """A message waiting for (or done with) delivery to a WeChat user, in ``id`` order.

    ``kind``: ``reply`` (an answer that could not go back passively) or ``notice`` (sent outside
    a conversation). ``state``: ``pending``, ``held`` (kept for the user's next message) or
    ``sent``; ``via`` says how it left: ``custom``, ``template`` or ``passive``."""

    openid: str
    kind: str
    text: str
    state: str
    created_at: datetime
    not_before: datetime
    attempts: int = 0
    sent_at: datetime | None = None
    via: str | None = None
    last_error: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class ContactWindow:
    """When a WeChat user last wrote or clicked/followed, and how many customer-service
    messages were sent to them since each."""

    openid: str
    last_message_at: datetime | None = None
    message_sends: int = 0
    last_event_at: datetime | None = None
    event_sends: int = 0


@dataclass(frozen=True)
class CachedAccessToken:
    """An access token as stored for every process: encrypted, with its expiry."""

    app_id: str
    token_enc: bytes
    expires_at: datetime
    fetched_at: datetime


class WeChatOutboxRepository(Protocol):
    async def add(
        self,
        openid: str,
        kind: str,
        texts: Sequence[str],
        at: datetime,
        not_before: datetime | None = None,
    ) -> Sequence[OutboundMessage]:
        """Queue messages for a user (pending, due at ``not_before`` or now), in this order."""
        ...

    async def claim_due(
        self, now: datetime, lease_until: datetime, limit: int
    ) -> Sequence[OutboundMessage]:
        """Lease the oldest undelivered message of each user when it is pending and due —
        never a later one while an earlier one waits — so that only one process sends it;
        with it, the same user's due pending messages of the same kind behind it (in order)."""
        ...

    async def mark_sent(self, message_id: int, via: str, at: datetime) -> None:
        """A leased message was delivered."""
        ...

    async def hold(self, message_id: int, reason: str) -> None:
        """WeChat will not take the message now: keep it for the user's next message."""
        ...

    async def retry_later(self, message_id: int, not_before: datetime, reason: str) -> None:
        """Delivery failed for a passing reason: release the lease, try again later."""
        ...

    async def take_undelivered(self, openid: str, at: datetime) -> Sequence[OutboundMessage]:
        """Every message of a user that is held or pending and not being sent right now,
        oldest first, marked sent (``via='passive'``): they go out with the passive reply."""
        ...

    async def for_openid(self, openid: str) -> Sequence[OutboundMessage]:
        """A user's messages, oldest first."""
        ...


class WeChatContactRepository(Protocol):
    async def get(self, openid: str) -> ContactWindow | None:
        """A user's delivery window, or None before their first message."""
        ...

    async def touch(self, openid: str, at: datetime, by_message: bool) -> None:
        """The user wrote (``by_message``) or clicked/followed at ``at``: a new window opens."""
        ...

    async def record_send(self, openid: str, window: str) -> None:
        """One customer-service message was sent in the ``message`` or ``event`` window."""
        ...

    async def exhaust(self, openid: str, message_quota: int, event_quota: int) -> None:
        """WeChat refused for time or count: count both windows as used up."""
        ...

    async def language(self, openid: str) -> str | None:
        """The language of the cardbot user behind a WeChat openid, or None if unknown."""
        ...


class WeChatTokenRepository(Protocol):
    async def get(self, app_id: str) -> CachedAccessToken | None:
        """The stored token of an account, or None."""
        ...

    async def put(self, token: CachedAccessToken) -> None:
        """Store (insert or replace) an account's token."""
        ...

    async def discard(self, app_id: str) -> None:
        """Forget an account's token (WeChat said it is invalid or expired)."""
        ...


class WeChatUnitOfWork(UnitOfWork, Protocol):
    """A unit of work that also reaches the WeChat channel's tables."""

    wechat_outbox: WeChatOutboxRepository
    wechat_contacts: WeChatContactRepository
    wechat_tokens: WeChatTokenRepository


class WeChatUnitOfWorkFactory(Protocol):
    def __call__(self) -> WeChatUnitOfWork:
        """A fresh unit of work."""
        ...
