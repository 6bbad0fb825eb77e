"""Ports: everything outside the business, as Protocols.

Adapters live in vision/, storage/ and bot/; test doubles in tests/fakes.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from types import TracebackType
from typing import Protocol, Self

from core.messages import Reply
from core.model import (
    AuditEvent,
    Batch,
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
    Role,
    User,
)
from core.tickets import Ticket, TicketMessage

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

    async def language_of(self, channel: str, external_id: str) -> str | None:
        """The language of the user behind a channel identity; None if none exists (nothing
        is created)."""
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

    async def lock_card(self, card_fp: str) -> None:
        """Hold a lock on one card (by fingerprint) until the unit of work ends, so that two
        people accepting the same card are decided one after the other."""
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

    async def for_batch(self, batch_id: int) -> Sequence[Order]:
        """The orders of a batch sale, in the order they were opened."""
        ...


class BatchRepository(Protocol):
    async def add(self, batch: Batch) -> Batch:
        """Insert a batch sale; returns it with its id."""
        ...

    async def get(self, batch_id: int) -> Batch:
        """A batch by id; raises KeyError."""
        ...

    async def update(self, batch: Batch) -> None:
        """Store changed fields (submitted_at)."""
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


# --------------------------------------------------------------------------------------------
# The outbox: everything said to a person that is not the direct reply to their own message
# (a payout outcome, a review decision, a ticket relay, a staff alert, a WeChat answer that
# missed the 5 s window). Written in the same transaction as its cause; delivered by whichever
# process serves the recipient's channel, in order per recipient (bot/outbox.py).


class OutboxKind(StrEnum):
    """Why a message is in the outbox: ``notice`` — said outside the person's conversation
    turn (outcomes, decisions, relays, alerts); ``reply`` — part of the answer to their own
    message that could not go back on the request (WeChat's 5 s window, an overflow)."""

    NOTICE = "notice"
    REPLY = "reply"


class OutboxState(StrEnum):
    """``pending``: to send; ``held``: the channel will not take it now, it goes with the
    person's next message (WeChat); ``sent``; ``failed``: given up after many tries."""

    PENDING = "pending"
    HELD = "held"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class OutboxMessage:
    """One message in the outbox (masked values only), delivered per recipient in ``id``
    order. ``via`` says how it left: a channel's own word (``custom``, ``template``,
    ``passive``, ``message``)."""

    channel: str
    recipient: str
    kind: OutboxKind
    reply: Reply
    state: OutboxState
    created_at: datetime
    not_before: datetime
    attempts: int = 0
    sent_at: datetime | None = None
    via: str | None = None
    last_error: str | None = None
    id: int | None = None


class OutboxRepository(Protocol):
    async def add(
        self,
        channel: str,
        recipient: str,
        replies: Sequence[Reply],
        at: datetime,
        kind: OutboxKind = OutboxKind.NOTICE,
        not_before: datetime | None = None,
    ) -> Sequence[OutboxMessage]:
        """Queue messages for a recipient, in this order (due at ``not_before`` or now)."""
        ...

    async def claim_due(
        self, channel: str, now: datetime, lease_until: datetime, limit: int
    ) -> Sequence[OutboxMessage]:
        """Lease, per recipient of ``channel``, the oldest undelivered message when it is
        pending and due (with the same kind's due messages right behind it); no other
        process takes them until ``lease_until``, and a crash makes them due again then."""
        ...

    async def mark_sent(self, message_id: int, via: str, at: datetime) -> None:
        """A leased message was delivered."""
        ...

    async def hold(self, message_id: int, reason: str) -> None:
        """Keep the message for the recipient's next message."""
        ...

    async def retry_later(self, message_id: int, not_before: datetime, reason: str) -> None:
        """Release the lease; try again from ``not_before``."""
        ...

    async def give_up(self, message_id: int, at: datetime, reason: str) -> None:
        """Never to be tried again (it no longer holds back the recipient's later messages)."""
        ...

    async def take_undelivered(
        self, channel: str, recipient: str, at: datetime
    ) -> Sequence[OutboxMessage]:
        """Pending (due or not) and held messages of a recipient that nobody is sending,
        oldest first, now marked sent ``passive``: they go with the answer being made."""
        ...

    async def record_sent(
        self, channel: str, recipient: str, reply: Reply, via: str, at: datetime
    ) -> None:
        """Keep a message sent outside the outbox (a broadcast's customer-service message) as
        sent, so that what a channel counts (WeChat's quota) is worked out from one place."""
        ...

    async def sent_since(self, channel: str, recipient: str, via: str, since: datetime) -> int:
        """How many messages left for a recipient ``via`` this way at or after ``since``."""
        ...

    async def for_recipient(self, channel: str, recipient: str) -> Sequence[OutboxMessage]:
        """A recipient's messages, oldest first."""
        ...


class OrderClaimRepository(Protocol):
    """Who is settling an order now: a lease with an owner and an expiry, so that resuming
    is only for work nobody is doing and a provider is never asked twice at once."""

    async def claim(self, order_id: int, owner: str, now: datetime, until: datetime) -> bool:
        """Take (or extend) the order for ``owner`` until ``until``; False while another
        owner's lease has not expired."""
        ...

    async def release(self, order_id: int, owner: str) -> None:
        """Give the order back (only ``owner``'s lease)."""
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
    tickets: TicketRepository
    outbox: OutboxRepository
    order_claims: OrderClaimRepository
    role_grants: RoleGrantRepository
    batches: BatchRepository

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


# How a WeChat customer-service message is recorded in the outbox (``via``); WeChat's quota
# counts these since the user's last message (storage works the count out).
WECHAT_CUSTOM = "custom"


@dataclass(frozen=True)
class ContactWindow:
    """When a WeChat user last wrote or clicked/followed (stored), and how many
    customer-service messages were sent to them since each (worked out from the outbox)."""

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


class WeChatContactRepository(Protocol):
    async def get(self, openid: str) -> ContactWindow | None:
        """A user's delivery window, or None before their first message."""
        ...

    async def touch(self, openid: str, at: datetime, by_message: bool) -> None:
        """The user wrote (``by_message``) or clicked/followed at ``at``: a new window opens."""
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


class WeChatPushStampRepository(Protocol):
    """The (timestamp, nonce) pairs that signed WeChat's requests, within the replay window."""

    async def admit(self, timestamp: int, nonce: str, binding: str, expires_at: datetime) -> bool:
        """Record the pair bound to ``binding``; True if it is new or was bound to the same
        ``binding`` before (a retry), False if it signed something else (a replay)."""
        ...

    async def prune(self, before: datetime) -> int:
        """Forget pairs that expired before ``before``; how many were forgotten."""
        ...


class WeChatUnitOfWork(UnitOfWork, Protocol):
    """A unit of work that also reaches the WeChat channel's tables."""

    wechat_contacts: WeChatContactRepository
    wechat_tokens: WeChatTokenRepository
    wechat_push_stamps: WeChatPushStampRepository


class WeChatUnitOfWorkFactory(Protocol):
    def __call__(self) -> WeChatUnitOfWork:
        """A fresh unit of work."""
        ...


# --------------------------------------------------------------------------------------------
# The desk (handlers/desk.py): tickets, notices to people other than the sender, granted roles.


class TicketRepository(Protocol):
    async def add(self, ticket: Ticket) -> Ticket:
        """Store a new ticket; returns it with its id."""
        ...

    async def get(self, ticket_id: int, lock: bool = False) -> Ticket | None:
        """A ticket by id; ``lock`` holds its row until the unit of work ends."""
        ...

    async def update(self, ticket: Ticket) -> None:
        """Store the ticket's new state."""
        ...

    async def active_for_user(self, user_id: int) -> Ticket | None:
        """The user's open or taken ticket, if any."""
        ...

    async def current_for(self, staff: str) -> Ticket | None:
        """The ticket this staff member most recently took up and still holds."""
        ...

    async def active(self) -> Sequence[Ticket]:
        """Every open or taken ticket."""
        ...

    async def add_message(self, message: TicketMessage) -> None:
        """Record a line of the ticket."""
        ...

    async def messages(self, ticket_id: int) -> Sequence[TicketMessage]:
        """The ticket's lines, oldest first."""
        ...


class RoleGrantRepository(Protocol):
    async def role_of(self, actor: str) -> Role | None:
        """The role granted to ``actor`` in chat, if any."""
        ...

    async def grant(self, actor: str, role: Role, by: str, at: datetime) -> None:
        """Grant (or change) a role."""
        ...

    async def revoke(self, actor: str) -> bool:
        """Take a granted role away; False if none was granted."""
        ...

    async def holders(self) -> Sequence[tuple[str, Role]]:
        """Every granted (actor, role)."""
        ...


# --------------------------------------------------------------------------------------------
# Broadcasts (core/broadcast.py): the broadcasts, their per-recipient outbox, and who wants to
# hear what.

import typing  # noqa: E402 - this block is self-contained

if typing.TYPE_CHECKING:  # core.broadcast imports this module for its unit of work
    from core.broadcast import (
        Audience,
        Broadcast,
        BroadcastState,
        Delivery,
        DeliveryReport,
        Outcome,
    )


class BroadcastRepository(Protocol):
    async def add(self, broadcast: Broadcast) -> Broadcast:
        """Insert; returns it with its id."""
        ...

    async def get(self, broadcast_id: int) -> Broadcast:
        """A broadcast by id; raises KeyError."""
        ...

    async def drafts_of(self, actor: str) -> Sequence[Broadcast]:
        """An admin's unconfirmed drafts, oldest first."""
        ...

    async def set_image(self, broadcast_id: int, image: bytes) -> None:
        """Attach a picture to a draft."""
        ...

    async def set_state(
        self, broadcast_id: int, state: BroadcastState, at: datetime, actor: str | None = None
    ) -> None:
        """Move a broadcast to ``state`` (cancelled: by ``actor``; finished: ends now)."""
        ...

    async def confirm(
        self, broadcast_id: int, recipients: int, send_at: datetime, at: datetime
    ) -> None:
        """A draft becomes scheduled for ``send_at`` with this many recipients."""
        ...

    async def count_audience(self, audience: Audience) -> int:
        """How many people an audience reaches now."""
        ...

    async def materialise(self, broadcast_id: int, audience: Audience, at: datetime) -> int:
        """One pending delivery per recipient of the audience (a snapshot of the channel and
        chat it goes to), in bulk; how many."""
        ...

    async def skip_pending(self, broadcast_id: int, reason: str, at: datetime) -> int:
        """Every pending delivery of a broadcast becomes skipped; how many."""
        ...

    async def report(self, broadcast_id: int) -> DeliveryReport:
        """Counts of a broadcast's deliveries per state."""
        ...

    async def recent(self, limit: int) -> Sequence[Broadcast]:
        """The latest broadcasts that are not drafts, newest first (images not loaded)."""
        ...

    async def deliveries(self, broadcast_id: int) -> Sequence[Delivery]:
        """A broadcast's deliveries, in id order."""
        ...

    async def claim(
        self, channel: str, worker: str, now: datetime, limit: int
    ) -> Sequence[Delivery]:
        """Mark up to ``limit`` due pending deliveries of a channel ``sending`` by ``worker``
        (oldest broadcast first, in id order) and return them; scheduled broadcasts whose time
        has come start sending. A delivery is claimed by one worker only."""
        ...

    async def record(
        self, worker: str, outcomes: Sequence[tuple[int, Outcome]], at: datetime
    ) -> int:
        """Store what became of deliveries this worker claimed (``pending``: the request
        surely never left, it may be claimed again); how many rows changed."""
        ...

    async def start(self, delivery_id: int, worker: str, at: datetime) -> bool:
        """A claimed delivery about to be requested becomes ``sending``; False if it is no
        longer this worker's claim (then it must not be sent)."""
        ...

    async def expire_claims(self, channel: str, worker: str, before: datetime) -> int:
        """Deliveries of a channel another worker claimed before ``before`` and never started
        go back to ``pending``; those it left ``sending`` (a crash mid-request) become
        ``unknown``; how many became unknown."""
        ...

    async def finish_done(self, at: datetime) -> Sequence[int]:
        """Sending broadcasts with no pending or sending delivery left become finished; ids."""
        ...


class SubscriptionRepository(Protocol):
    async def add(self, user_id: int, brand: str, at: datetime) -> bool:
        """Subscribe a user to a brand's rate alerts; False if subscribed already."""
        ...

    async def remove(self, user_id: int, brand: str) -> int:
        """End one subscription; how many ended (0 or 1)."""
        ...

    async def remove_all(self, user_id: int) -> int:
        """End every subscription of a user; how many."""
        ...

    async def brands_of(self, user_id: int) -> Sequence[str]:
        """The brands a user follows, in code order."""
        ...

    async def opt_out(self, user_id: int, at: datetime) -> None:
        """The user wants no broadcasts at all."""
        ...

    async def opt_in(self, user_id: int) -> bool:
        """Undo an opt-out; False if the user had not opted out."""
        ...

    async def opted_out(self, user_id: int) -> bool:
        """Whether the user opted out of broadcasts."""
        ...


class BroadcastUnitOfWork(UnitOfWork, Protocol):
    """A unit of work that also reaches broadcasts and subscriptions."""

    broadcasts: BroadcastRepository
    subscriptions: SubscriptionRepository


class BroadcastUnitOfWorkFactory(Protocol):
    def __call__(self) -> BroadcastUnitOfWork:
        """A fresh unit of work."""
        ...


# --------------------------------------------------------------------------------------------
# Inbound queue: updates a channel delivered, confirmed to it at once and handled later, so one
# person's backlog never holds up anyone else (bot/inflow.py).


@dataclass(frozen=True)
class TakenUpdate:
    """One update as a channel delivered it: its dedupe key, the chat whose order it keeps,
    and the raw payload (JSON text)."""

    update_key: str
    chat_key: str
    payload: str


@dataclass(frozen=True)
class QueuedUpdate:
    """A queued update leased to one process for handling."""

    id: int
    channel: str
    update_key: str
    chat_key: str
    payload: str
    attempts: int


class InboundQueue(Protocol):
    async def put(self, channel: str, updates: Sequence[TakenUpdate], at: datetime) -> int:
        """Keep updates durably (sealed) in one transaction; a key already queued is skipped.
        Returns how many were new. Raises when storage fails: nothing is then confirmed."""
        ...

    async def claim_heads(
        self,
        channel: str,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        chat_key: str | None = None,
        busy: frozenset[str] = frozenset(),
    ) -> Sequence[QueuedUpdate]:
        """Lease the oldest update of up to ``limit`` chats (or of ``chat_key`` only) whose
        oldest update is due and not leased by a live process; later updates of a chat wait.
        Chats in ``busy`` (this process is working them: it claims their next one itself)
        are left out."""
        ...

    async def renew(self, item_ids: Sequence[int], owner: str, lease_until: datetime) -> None:
        """Extend leases this process holds while it is still handling them."""
        ...

    async def done(self, item_id: int, owner: str) -> None:
        """The update was handled: forget it."""
        ...

    async def retry_later(self, item_id: int, owner: str, not_before: datetime) -> None:
        """Handling failed for a reason that may pass (the database was unreachable): release
        the lease; the chat's head is tried again from ``not_before``."""
        ...

    async def pending(self, channel: str) -> int:
        """How many updates wait (for metrics and tests)."""
        ...
