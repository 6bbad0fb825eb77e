"""The database schema, as SQLAlchemy 2 declarative classes (``*Row``). Repositories map these
rows to and from the frozen records of ``core.model``; nothing outside ``storage/`` sees them.

Rules the schema keeps:

- money is ``BigInteger`` fen; rates are integer basis points;
- timestamps are timezone-aware and stored in UTC (``UtcDateTime``);
- card numbers, card secrets, ID numbers, bank/payout accounts and phones exist only as
  ciphertext (``*_enc``), keyed fingerprints (``*_fp``, indexed) and masks (``*_masked``);
- the ledger and the audit log are append-only (repositories never update or delete them);
- the migration in ``storage/migrations/versions`` mirrors this module (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-assigns INTEGER PRIMARY KEY (the rowid), not BIGINT.
IdType = BigInteger().with_variant(Integer(), "sqlite")

# Payouts in these states may be followed by a new payout for the same order.
PAYOUT_CLOSED_STATE = "failed"


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp stored in UTC. SQLite has no time zones, so the value is
    stored as naive UTC there and comes back with ``tzinfo=UTC``; naive input is refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute as is
        datetime: UtcDateTime(),
        date: Date(),
        bytes: LargeBinary(),
        bool: Boolean(),
        int: BigInteger(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    created_at: Mapped[datetime]
    language: Mapped[str] = mapped_column(String(8))
    real_name_enc: Mapped[bytes | None]
    real_name_masked: Mapped[str | None] = mapped_column(String(64))
    id_number_enc: Mapped[bytes | None]
    id_number_fp: Mapped[str | None] = mapped_column(String(64), index=True)
    id_number_masked: Mapped[str | None] = mapped_column(String(32))
    phone_enc: Mapped[bytes | None]
    phone_masked: Mapped[str | None] = mapped_column(String(32))
    verified_at: Mapped[datetime | None]
    kyc_level: Mapped[int] = mapped_column(Integer)
    suspended_until: Mapped[datetime | None]


class ChannelIdentityRow(Base):
    __tablename__ = "channel_identities"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    chat_id: Mapped[str] = mapped_column(String(128))
    reachable: Mapped[bool]
    created_at: Mapped[datetime]


class ConsentRow(Base):
    __tablename__ = "consents"
    __table_args__ = (Index("ix_consents_user_id_kind_version", "user_id", "kind", "version"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(32))
    given_at: Mapped[datetime]
    channel: Mapped[str] = mapped_column(String(16))


class CardRow(Base):
    __tablename__ = "cards"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    brand: Mapped[str] = mapped_column(String(32))
    number_enc: Mapped[bytes]
    number_fp: Mapped[str] = mapped_column(String(64), index=True)
    number_masked: Mapped[str] = mapped_column(String(40))
    secret_enc: Mapped[bytes | None]
    status: Mapped[str | None] = mapped_column(String(16))
    face_value_fen: Mapped[int | None]
    balance_fen: Mapped[int | None]
    expires: Mapped[date | None]
    verified_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class QuoteRow(Base):
    __tablename__ = "quotes"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id"), index=True)
    brand: Mapped[str] = mapped_column(String(32))
    face_value_fen: Mapped[int]
    balance_fen: Mapped[int]
    rate_bp: Mapped[int] = mapped_column(Integer)
    gross_fen: Mapped[int]
    fee_fen: Mapped[int]
    payout_fen: Mapped[int]
    lines: Mapped[list[Any]]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    rates_version: Mapped[str] = mapped_column(String(64))


# Orders that own their card (core.sale.CARD_HOLDING_STATUSES): at most one per card.
CARD_HOLDING_STATES = (
    "accepted",
    "review",
    "approved",
    "redeemed",
    "paying",
    "settled",
    "payout_failed",
)
_CARD_HOLDING_WHERE = "status IN ({})".format(", ".join(f"'{s}'" for s in CARD_HOLDING_STATES))


class OrderRow(Base):
    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_user_id_created_at", "user_id", "created_at"),
        # One owner per card, decided when a quote is accepted (the sale also locks the card).
        Index(
            "uq_orders_card_fp_holding",
            "card_fp",
            unique=True,
            sqlite_where=text(_CARD_HOLDING_WHERE),
            postgresql_where=text(_CARD_HOLDING_WHERE),
        ),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    channel: Mapped[str] = mapped_column(String(16))
    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id"), index=True)
    quote_id: Mapped[int] = mapped_column(ForeignKey("quotes.id"), index=True)
    brand: Mapped[str] = mapped_column(String(32))
    card_fp: Mapped[str] = mapped_column(String(64), index=True)
    card_masked: Mapped[str] = mapped_column(String(40))
    face_value_fen: Mapped[int]
    balance_fen: Mapped[int]
    payout_fen: Mapped[int]
    fee_fen: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), index=True)
    risk_outcome: Mapped[str | None] = mapped_column(String(16))
    risk_reasons: Mapped[list[Any]]
    risk_version: Mapped[str | None] = mapped_column(String(64))
    payout_account_id: Mapped[int | None] = mapped_column(
        ForeignKey("payout_accounts.id"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime]
    settled_at: Mapped[datetime | None]
    reviewed_at: Mapped[datetime | None]
    reviewed_by: Mapped[str | None] = mapped_column(String(64))
    review_note: Mapped[str | None] = mapped_column(String(500))
    review_announced_at: Mapped[datetime | None]
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"), index=True)


class PayoutAccountRow(Base):
    __tablename__ = "payout_accounts"
    __table_args__ = (UniqueConstraint("user_id", "method", "account_fp"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    method: Mapped[str] = mapped_column(String(16))
    account_enc: Mapped[bytes]
    account_fp: Mapped[str] = mapped_column(String(64), index=True)
    account_masked: Mapped[str] = mapped_column(String(64))
    holder_name_enc: Mapped[bytes]
    holder_name_masked: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]


class PayoutRow(Base):
    __tablename__ = "payouts"
    __table_args__ = (
        # At most one live payout per order: a new one only after a provider-confirmed failure.
        Index(
            "uq_payouts_order_id_open",
            "order_id",
            unique=True,
            sqlite_where=text(f"state <> '{PAYOUT_CLOSED_STATE}'"),
            postgresql_where=text(f"state <> '{PAYOUT_CLOSED_STATE}'"),
        ),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    reference: Mapped[str] = mapped_column(String(64), unique=True)
    method: Mapped[str] = mapped_column(String(16))
    payout_account_id: Mapped[int] = mapped_column(ForeignKey("payout_accounts.id"), index=True)
    amount_fen: Mapped[int]
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer)
    provider_txn_id: Mapped[str | None] = mapped_column(String(128))
    failure_reason: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class LedgerTransactionRow(Base):
    """Append-only. ``seq`` orders transactions; ``id`` is the uuid the domain sees."""

    __tablename__ = "ledger_transactions"

    seq: Mapped[int] = mapped_column(IdType, primary_key=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
    created_at: Mapped[datetime]


class LedgerPostingRow(Base):
    """Append-only. Positive = debit, negative = credit; a transaction's postings sum to 0."""

    __tablename__ = "ledger_postings"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("ledger_transactions.id"), index=True)
    account: Mapped[str] = mapped_column(String(64), index=True)
    amount_fen: Mapped[int]


class AuditEventRow(Base):
    """Append-only and hash-chained: each row's ``prev_hash`` is the previous row's ``hash``
    (unique, so two writers can never fork the chain)."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(IdType, primary_key=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(128), index=True)
    details: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class RiskListRow(Base):
    """The blacklist: fingerprints (never plaintext) of IDs, payout accounts and cards."""

    __tablename__ = "risk_blacklist"
    __table_args__ = (UniqueConstraint("kind", "fp"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    fp: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(200))
    added_by: Mapped[str] = mapped_column(String(64))
    added_at: Mapped[datetime]


class RateTableRow(Base):
    """A rate table (a pricing policy's data form), in force from ``effective_from``."""

    __tablename__ = "rate_tables"
    __table_args__ = (UniqueConstraint("version"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    effective_from: Mapped[datetime] = mapped_column(index=True)
    content: Mapped[dict[str, Any]]
    sha256: Mapped[str] = mapped_column(String(64))
    imported_by: Mapped[str] = mapped_column(String(64))
    imported_at: Mapped[datetime]


class ConversationRow(Base):
    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("channel", "user_key"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    user_key: Mapped[str] = mapped_column(String(128))
    step: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]]
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime]


class ProcessedInboundRow(Base):
    """Inbound message ids already acted on (dedupe of redeliveries)."""

    __tablename__ = "processed_inbound"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(128))
    processed_at: Mapped[datetime] = mapped_column(index=True)


metadata = Base.metadata


# --------------------------------------------------------------------------------------------
# WeChat channel (bot/wechat/): what the channel must remember across processes and restarts.


class WeChatContactRow(Base):
    """When a user last wrote (or clicked/followed): WeChat's customer-service quota is worked
    out from these times and the outbox's messages sent since."""

    __tablename__ = "wechat_contacts"

    openid: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_message_at: Mapped[datetime | None]
    last_event_at: Mapped[datetime | None]


class WeChatAccessTokenRow(Base):
    """The account's access token, shared by every process; kept encrypted like other
    credentials at rest."""

    __tablename__ = "wechat_access_tokens"

    app_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_enc: Mapped[bytes]
    expires_at: Mapped[datetime]
    fetched_at: Mapped[datetime]


class WeChatPushStampRow(Base):
    """A (timestamp, nonce) pair that signed a request from WeChat, bound to what it signed
    (``binding``: a hash of the push's XML, or of the handshake's echostr), kept until its
    timestamp leaves the accepted window (``expires_at``): the pair authenticates that again
    (WeChat's retries) and nothing else (bot/wechat/replay.py)."""

    __tablename__ = "wechat_push_stamps"

    timestamp: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    binding: Mapped[str] = mapped_column(String(80))
    expires_at: Mapped[datetime] = mapped_column(index=True)


# --------------------------------------------------------------------------------------------
# Batch sale: many cards sold together, each its own order (orders.batch_id).


class BatchRow(Base):
    """A batch sale: one quote, one confirmation and one receipt over many orders."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    submitted_at: Mapped[datetime | None]


# --------------------------------------------------------------------------------------------
# The desk (handlers/desk.py): support tickets, what staff and users said in them, and roles
# granted in chat; the outbox every process delivers from; settlement claims.


class TicketRow(Base):
    """A user's request for a person. ``detail`` and ``evidence`` hold masked values only."""

    __tablename__ = "tickets"
    __table_args__ = (
        Index("ix_tickets_status_priority_opened", "status", "priority", "opened_at"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    user_key: Mapped[str] = mapped_column(String(128))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
    reason: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(String(500))
    priority: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    assignee: Mapped[str | None] = mapped_column(String(160), index=True)
    opened_at: Mapped[datetime]
    taken_at: Mapped[datetime | None]
    first_response_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(16))
    resolution_note: Mapped[str | None] = mapped_column(String(500))
    evidence: Mapped[dict[str, Any]]
    alerts: Mapped[dict[str, Any]]


class TicketMessageRow(Base):
    """What was said in a ticket: the user's words (redacted), staff replies and private notes."""

    __tablename__ = "ticket_messages"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    at: Mapped[datetime]
    author: Mapped[str] = mapped_column(String(160))
    text: Mapped[str] = mapped_column(Text)
    private: Mapped[bool]


class OutboxRow(Base):
    """Everything said to a person that is not the direct reply to their own message (a payout
    outcome, a review decision, a relay, an alert, a WeChat answer that missed its window),
    written in the same transaction as its cause and delivered per recipient in id order by
    the process that serves ``channel``. ``state``: pending, held, sent, failed. Texts are what
    the person reads: masked values only."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_channel_recipient_state_id", "channel", "recipient", "state", "id"),
        Index("ix_outbox_channel_state_not_before", "channel", "state", "not_before"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    options: Mapped[list[Any]]
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    not_before: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    via: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(String(128))


class OrderClaimRow(Base):
    """Who settles an order now (a process's id) and until when: resuming is only for orders
    nobody holds, so a payout in flight is never requested a second time."""

    __tablename__ = "order_claims"

    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    until: Mapped[datetime]


class RoleGrantRow(Base):
    """A staff or admin role granted in chat by an admin (``actor``: ``<channel>:<user id>``)."""

    __tablename__ = "role_grants"

    actor: Mapped[str] = mapped_column(String(160), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    granted_by: Mapped[str] = mapped_column(String(160))
    granted_at: Mapped[datetime]


# --------------------------------------------------------------------------------------------
# Broadcasts (core/broadcast.py): an admin's message, one delivery row per recipient (the
# durable outbox the broadcast worker sends from), and who wants to hear what.


class BroadcastRow(Base):
    """A broadcast: ``audience`` is ``all``, ``holders:<brand>`` or ``alerts:<brand>``;
    ``state`` draft → scheduled → sending → finished, or cancelled."""

    __tablename__ = "broadcasts"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    created_by: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime]
    audience: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    image: Mapped[bytes | None]
    state: Mapped[str] = mapped_column(String(16), index=True)
    send_at: Mapped[datetime | None]
    recipients: Mapped[int]
    confirmed_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    cancelled_by: Mapped[str | None] = mapped_column(String(128))


class BroadcastDeliveryRow(Base):
    """One recipient's copy of a broadcast: the channel and chat as they were at confirmation.
    ``state`` pending → sending (committed before the request) → sent / failed / unreachable /
    skipped, or unknown when left sending by a crash. ``claimed_by`` names the worker."""

    __tablename__ = "broadcast_deliveries"
    __table_args__ = (
        UniqueConstraint("broadcast_id", "user_id"),
        # The worker's question: the due pending rows of a channel, broadcast by broadcast.
        Index(
            "ix_broadcast_deliveries_channel_state_broadcast_id_id",
            "channel",
            "state",
            "broadcast_id",
            "id",
        ),
        Index("ix_broadcast_deliveries_broadcast_id_state", "broadcast_id", "state"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    broadcast_id: Mapped[int] = mapped_column(ForeignKey("broadcasts.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    channel: Mapped[str] = mapped_column(String(16))
    chat_id: Mapped[str] = mapped_column(String(128))
    language: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    error: Mapped[str | None] = mapped_column(String(128))


class RateAlertSubscriptionRow(Base):
    """A user follows a brand's rate changes (``/subscribe BRAND``)."""

    __tablename__ = "rate_alert_subscriptions"
    __table_args__ = (UniqueConstraint("user_id", "brand"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    brand: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime]


class BroadcastOptOutRow(Base):
    """A user who wants no broadcasts at all (``/unsubscribe`` without a brand)."""

    __tablename__ = "broadcast_opt_outs"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    opted_out_at: Mapped[datetime]


# --------------------------------------------------------------------------------------------
# Data-key generations (storage/keyring.py): which key every process seals with, and which
# processes hold which generation, so that rotation and pruning never strand a sealed value.


class KeyGenerationRow(Base):
    """One announced key generation: the key new values are sealed with (``primary_key_id``)
    and the keys that open values at that point. Key ids are public one-way names of keys
    (``storage.crypto.key_id``), never key material. The newest row is the marker."""

    __tablename__ = "key_generations"

    generation: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    primary_key_id: Mapped[str] = mapped_column(String(16))
    key_ids: Mapped[str] = mapped_column(String(400))
    reason: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]


class KeyHolderRow(Base):
    """A running process that seals values: the generation it has caught up with (every
    unit of work it began before switching has ended), the key it seals with, when it last
    confirmed (``heartbeat_at``). Removed when the process stops."""

    __tablename__ = "key_holders"

    holder_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    sealing_key_id: Mapped[str] = mapped_column(String(16))
    key_ids: Mapped[str] = mapped_column(String(400))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]


# Inbound queue (bot/inflow.py): updates taken from a channel, confirmed to it, handled later.


class InboundQueueRow(Base):
    """An update a channel delivered that is confirmed to the channel (getUpdates advanced, the
    webhook answered) and not yet handled. Handled per chat in id order; the row is deleted once
    handled. ``payload`` is the update as the channel sent it, sealed (it can hold a card secret
    or an ID number); ``owner``/``lease_until`` say which process is handling the chat's head."""

    __tablename__ = "inbound_queue"
    __table_args__ = (
        UniqueConstraint("channel", "update_key"),
        Index("ix_inbound_queue_channel_chat_key_id", "channel", "chat_key", "id"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    update_key: Mapped[str] = mapped_column(String(64))
    chat_key: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes]
    received_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer)
    not_before: Mapped[datetime]
    owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
