"""SQLAlchemy implementations of the repository ports in ``core.ports``. Each maps rows of
``storage.tables`` to and from ``core.model`` records. Repositories flush but never commit: the
unit of work owns the transaction."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import CursorResult, Insert, Table, func, literal_column, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.audit import GENESIS_HASH, canonical_json, chain_hash
from core.errors import ConcurrentUpdate, LedgerError
from core.model import (
    AuditEvent,
    Batch,
    Card,
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
    Posting,
    Quote,
    QuoteLine,
    RateTable,
    User,
)
from core.ports import WECHAT_CUSTOM, CachedAccessToken, ContactWindow
from storage.tables import (
    AuditEventRow,
    Base,
    BatchRow,
    CardRow,
    ChannelIdentityRow,
    ConsentRow,
    ConversationRow,
    LedgerPostingRow,
    LedgerTransactionRow,
    OrderRow,
    OutboxRow,
    PayoutAccountRow,
    PayoutRow,
    ProcessedInboundRow,
    QuoteRow,
    RateTableRow,
    RiskListRow,
    UserRow,
    WeChatAccessTokenRow,
    WeChatContactRow,
    metadata,
)

RowT = TypeVar("RowT", bound=Base)
RecordT = TypeVar("RecordT")

# Core views of two tables that are used without the ORM (no identity map in the way).
CONVERSATIONS: Table = metadata.tables[ConversationRow.__tablename__]
PROCESSED_INBOUND: Table = metadata.tables[ProcessedInboundRow.__tablename__]

# Any constant works; it only has to be the same in every process that appends to the audit log.
AUDIT_LOCK_KEY = 0x0CA2DB07
# The key space (first key of the two-key form) of advisory locks on cards by fingerprint.
CARD_LOCK_CLASS = 0x0CA2D


def _utc(value: datetime) -> datetime:
    """Normalise to UTC, as the database returns it, so hashes and comparisons agree."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
    return value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _insert_or_ignore(
    session: AsyncSession, table: Table, values: dict[str, Any], unique: list[str]
) -> Insert:
    """INSERT … ON CONFLICT (unique) DO NOTHING for the session's dialect."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return (
            postgresql.insert(table).values(values).on_conflict_do_nothing(index_elements=unique)
        )
    if name == "sqlite":
        return sqlite.insert(table).values(values).on_conflict_do_nothing(index_elements=unique)
    raise NotImplementedError(f"unsupported database dialect {name!r}")


async def _get_row(session: AsyncSession, row_type: type[RowT], row_id: int, what: str) -> RowT:
    row = await session.get(row_type, row_id)
    if row is None:
        raise KeyError(f"{what} {row_id} not found")
    return row


def _require_id(record_id: int | None, what: str) -> int:
    if record_id is None:
        raise ValueError(f"{what} has no id: add it before updating")
    return record_id


class _Records(Generic[RecordT, RowT]):
    """Insert, get and update of one kind of record kept in one table, by id."""

    row_type: type[RowT]
    what: str

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def _record(self, row: RowT) -> RecordT:
        raise NotImplementedError

    def _values(self, record: RecordT) -> dict[str, Any]:
        raise NotImplementedError

    async def _insert(self, record: RecordT, conflict: str | None = None) -> RecordT:
        """Insert; with ``conflict``, a unique-constraint clash is ConcurrentUpdate(conflict)
        and the unit of work stays usable."""
        row = self.row_type(**self._values(record))
        if conflict is None:
            self._session.add(row)
            await self._session.flush()
            return self._record(row)
        try:
            async with self._session.begin_nested():
                self._session.add(row)
                await self._session.flush()
        except SqlIntegrityError as exc:
            raise ConcurrentUpdate(conflict) from exc
        return self._record(row)

    async def _row(self, record_id: int | None) -> RowT:
        return await _get_row(
            self._session, self.row_type, _require_id(record_id, self.what), self.what
        )

    async def get(self, record_id: int) -> RecordT:
        """A record by id; raises KeyError."""
        return self._record(await self._row(record_id))

    async def _store(self, record_id: int | None, values: dict[str, Any]) -> None:
        row = await self._row(record_id)
        for name, value in values.items():
            setattr(row, name, value)
        await self._session.flush()


# --------------------------------------------------------------------------------------------
# Inbox and conversations


class SqlAlchemyInboxRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def claim(self, channel: str, external_id: str, at: datetime) -> bool:
        """Record an inbound message id; False if it was already recorded (a redelivery)."""
        stmt = _insert_or_ignore(
            self._session,
            PROCESSED_INBOUND,
            {"channel": channel, "external_id": external_id, "processed_at": _utc(at)},
            ["channel", "external_id"],
        )
        result = await self._session.execute(stmt)
        assert isinstance(result, CursorResult)
        return result.rowcount == 1


def _conversation(row: Any) -> ConversationState:
    return ConversationState(
        channel=row.channel,
        user_key=row.user_key,
        step=row.step,
        data=dict(row.data),
        version=row.version,
        updated_at=row.updated_at,
    )


class SqlAlchemyConversationRepository:
    """Core statements only (no identity map), so a read always sees the stored version."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(
        self, channel: str, user_key: str, lock: bool = False
    ) -> ConversationState | None:
        """The conversation of a channel user, or None; ``lock`` holds it until the unit of
        work ends (PostgreSQL: FOR UPDATE; SQLite: every unit of work holds the write lock)."""
        table = CONVERSATIONS
        query = select(table).where(table.c.channel == channel, table.c.user_key == user_key)
        result = await self._session.execute(query.with_for_update() if lock else query)
        row = result.one_or_none()
        return None if row is None else _conversation(row)

    async def save(self, state: ConversationState) -> ConversationState:
        """Insert (version 0) or update under optimistic locking; returns version + 1."""
        table = CONVERSATIONS
        updated_at = _utc(state.updated_at) if state.updated_at else datetime.now(UTC)
        new_version = state.version + 1
        if state.version == 0:
            try:
                async with self._session.begin_nested():
                    await self._session.execute(
                        table.insert().values(
                            channel=state.channel,
                            user_key=state.user_key,
                            step=state.step,
                            data=state.data,
                            version=new_version,
                            updated_at=updated_at,
                        )
                    )
            except SqlIntegrityError as exc:
                raise ConcurrentUpdate(
                    f"conversation {state.channel}:{state.user_key} already exists"
                ) from exc
        else:
            result = await self._session.execute(
                update(table)
                .where(
                    table.c.channel == state.channel,
                    table.c.user_key == state.user_key,
                    table.c.version == state.version,
                )
                .values(
                    step=state.step, data=state.data, version=new_version, updated_at=updated_at
                )
            )
            assert isinstance(result, CursorResult)
            if result.rowcount != 1:
                raise ConcurrentUpdate(
                    f"conversation {state.channel}:{state.user_key} is no longer at version "
                    f"{state.version}"
                )
        return replace(state, version=new_version, updated_at=updated_at)


# --------------------------------------------------------------------------------------------
# People


def _user(row: UserRow) -> User:
    return User(
        id=row.id,
        created_at=row.created_at,
        language=row.language,
        real_name_enc=row.real_name_enc,
        real_name_masked=row.real_name_masked,
        id_number_enc=row.id_number_enc,
        id_number_fp=row.id_number_fp,
        id_number_masked=row.id_number_masked,
        phone_enc=row.phone_enc,
        phone_masked=row.phone_masked,
        verified_at=row.verified_at,
        kyc_level=row.kyc_level,
        suspended_until=row.suspended_until,
    )


def _identity(row: ChannelIdentityRow) -> ChannelIdentity:
    return ChannelIdentity(
        channel=row.channel,
        external_id=row.external_id,
        user_id=row.user_id,
        chat_id=row.chat_id,
        reachable=row.reachable,
    )


class SqlAlchemyUserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def language_of(self, channel: str, external_id: str) -> str | None:
        """The language of the user behind a channel identity; None if none exists (nothing
        is created)."""
        row = await self._identity_row(channel, external_id)
        if row is None:
            return None
        user = await self._session.get(UserRow, row.user_id)
        return None if user is None else user.language

    async def _identity_row(self, channel: str, external_id: str) -> ChannelIdentityRow | None:
        result = await self._session.execute(
            select(ChannelIdentityRow).where(
                ChannelIdentityRow.channel == channel,
                ChannelIdentityRow.external_id == external_id,
            )
        )
        return result.scalar_one_or_none()

    async def for_channel(
        self, channel: str, external_id: str, chat_id: str, language: str, at: datetime
    ) -> tuple[User, ChannelIdentity]:
        """The user behind a channel identity, created on first contact."""
        identity = await self._identity_row(channel, external_id)
        if identity is None:
            try:
                async with self._session.begin_nested():
                    user = UserRow(created_at=_utc(at), language=language, kyc_level=0)
                    self._session.add(user)
                    await self._session.flush()
                    identity = ChannelIdentityRow(
                        channel=channel,
                        external_id=external_id,
                        user_id=user.id,
                        chat_id=chat_id,
                        reachable=True,
                        created_at=_utc(at),
                    )
                    self._session.add(identity)
                    await self._session.flush()
                return _user(user), _identity(identity)
            except SqlIntegrityError:
                # Another process created this identity first (first contact, twice at once).
                identity = await self._identity_row(channel, external_id)
                if identity is None:
                    raise
        elif identity.chat_id != chat_id or not identity.reachable:
            identity.chat_id = chat_id
            identity.reachable = True
            await self._session.flush()
        user_row = await _get_row(self._session, UserRow, identity.user_id, "user")
        return _user(user_row), _identity(identity)

    async def get(self, user_id: int) -> User:
        """A user by id; raises KeyError."""
        return _user(await _get_row(self._session, UserRow, user_id, "user"))

    async def set_reachable(self, channel: str, external_id: str, reachable: bool) -> bool:
        """Mark a channel identity (un)reachable; False when no such identity exists."""
        identity = await self._identity_row(channel, external_id)
        if identity is None:
            return False
        if identity.reachable != reachable:
            identity.reachable = reachable
            await self._session.flush()
        return True

    async def update(self, user: User) -> None:
        """Store changed fields of a user."""
        row = await _get_row(self._session, UserRow, user.id, "user")
        row.language = user.language
        row.real_name_enc = user.real_name_enc
        row.real_name_masked = user.real_name_masked
        row.id_number_enc = user.id_number_enc
        row.id_number_fp = user.id_number_fp
        row.id_number_masked = user.id_number_masked
        row.phone_enc = user.phone_enc
        row.phone_masked = user.phone_masked
        row.verified_at = _utc_or_none(user.verified_at)
        row.kyc_level = user.kyc_level
        row.suspended_until = _utc_or_none(user.suspended_until)
        await self._session.flush()

    async def with_id_fp(self, id_number_fp: str) -> Sequence[int]:
        """Ids of every account verified with this resident ID (one person, all channels)."""
        result = await self._session.scalars(
            select(UserRow.id).where(UserRow.id_number_fp == id_number_fp).order_by(UserRow.id)
        )
        return list(result)

    async def identities(self, user_id: int) -> Sequence[ChannelIdentity]:
        """Every channel identity of a user, oldest first."""
        result = await self._session.scalars(
            select(ChannelIdentityRow)
            .where(ChannelIdentityRow.user_id == user_id)
            .order_by(ChannelIdentityRow.id)
        )
        return [_identity(row) for row in result]


def _consent(row: ConsentRow) -> Consent:
    return Consent(
        user_id=row.user_id,
        kind=row.kind,
        version=row.version,
        given_at=row.given_at,
        channel=row.channel,
        id=row.id,
    )


class SqlAlchemyConsentRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, consent: Consent) -> Consent:
        """Record a consent (append-only)."""
        row = ConsentRow(
            user_id=consent.user_id,
            kind=consent.kind,
            version=consent.version,
            given_at=_utc(consent.given_at),
            channel=consent.channel,
        )
        self._session.add(row)
        await self._session.flush()
        return _consent(row)

    async def has(self, user_id: int, kind: str, version: str) -> bool:
        """Whether the user gave this consent."""
        found = await self._session.scalar(
            select(ConsentRow.id)
            .where(
                ConsentRow.user_id == user_id,
                ConsentRow.kind == kind,
                ConsentRow.version == version,
            )
            .limit(1)
        )
        return found is not None


# --------------------------------------------------------------------------------------------
# Cards, quotes, orders


def _card(row: CardRow) -> Card:
    return Card(
        user_id=row.user_id,
        brand=row.brand,
        number_enc=row.number_enc,
        number_fp=row.number_fp,
        number_masked=row.number_masked,
        created_at=row.created_at,
        secret_enc=row.secret_enc,
        status=row.status,
        face_value_fen=row.face_value_fen,
        balance_fen=row.balance_fen,
        expires=row.expires,
        verified_at=row.verified_at,
        id=row.id,
    )


def _card_values(card: Card) -> dict[str, Any]:
    return {
        "user_id": card.user_id,
        "brand": card.brand,
        "number_enc": card.number_enc,
        "number_fp": card.number_fp,
        "number_masked": card.number_masked,
        "secret_enc": card.secret_enc,
        "status": card.status,
        "face_value_fen": card.face_value_fen,
        "balance_fen": card.balance_fen,
        "expires": card.expires,
        "verified_at": _utc_or_none(card.verified_at),
        "created_at": _utc(card.created_at),
    }


class SqlAlchemyCardRepository(_Records[Card, CardRow]):
    row_type, what = CardRow, "card"

    def _record(self, row: CardRow) -> Card:
        return _card(row)

    def _values(self, record: Card) -> dict[str, Any]:
        return _card_values(record)

    async def add(self, card: Card) -> Card:
        """Insert a card; returns it with its id."""
        return await self._insert(card)

    async def update(self, card: Card) -> None:
        """Store changed fields of a card."""
        await self._store(card.id, _card_values(card))


def _quote(row: QuoteRow) -> Quote:
    return Quote(
        user_id=row.user_id,
        card_id=row.card_id,
        brand=row.brand,
        face_value_fen=row.face_value_fen,
        balance_fen=row.balance_fen,
        rate_bp=row.rate_bp,
        gross_fen=row.gross_fen,
        fee_fen=row.fee_fen,
        payout_fen=row.payout_fen,
        lines=tuple(
            QuoteLine(
                key=line["key"],
                amount_fen=line["amount_fen"],
                rate_bp=line["rate_bp"],
                label=line.get("label"),
            )
            for line in row.lines
        ),
        created_at=row.created_at,
        expires_at=row.expires_at,
        rates_version=row.rates_version,
        id=row.id,
    )


class SqlAlchemyQuoteRepository(_Records[Quote, QuoteRow]):
    row_type, what = QuoteRow, "quote"

    def _record(self, row: QuoteRow) -> Quote:
        return _quote(row)

    async def add(self, quote: Quote) -> Quote:
        """Insert a quote; returns it with its id."""
        row = QuoteRow(
            user_id=quote.user_id,
            card_id=quote.card_id,
            brand=quote.brand,
            face_value_fen=quote.face_value_fen,
            balance_fen=quote.balance_fen,
            rate_bp=quote.rate_bp,
            gross_fen=quote.gross_fen,
            fee_fen=quote.fee_fen,
            payout_fen=quote.payout_fen,
            lines=[
                {
                    "key": line.key,
                    "amount_fen": line.amount_fen,
                    "rate_bp": line.rate_bp,
                    **({"label": line.label} if line.label else {}),
                }
                for line in quote.lines
            ],
            created_at=_utc(quote.created_at),
            expires_at=_utc(quote.expires_at),
            rates_version=quote.rates_version,
        )
        self._session.add(row)
        await self._session.flush()
        return _quote(row)


def _order(row: OrderRow) -> Order:
    return Order(
        user_id=row.user_id,
        channel=row.channel,
        card_id=row.card_id,
        quote_id=row.quote_id,
        brand=row.brand,
        card_fp=row.card_fp,
        card_masked=row.card_masked,
        face_value_fen=row.face_value_fen,
        balance_fen=row.balance_fen,
        payout_fen=row.payout_fen,
        fee_fen=row.fee_fen,
        status=OrderStatus(row.status),
        created_at=row.created_at,
        updated_at=row.updated_at,
        risk_outcome=row.risk_outcome,
        risk_reasons=tuple(row.risk_reasons),
        risk_version=row.risk_version,
        payout_account_id=row.payout_account_id,
        settled_at=row.settled_at,
        reviewed_at=row.reviewed_at,
        reviewed_by=row.reviewed_by,
        review_note=row.review_note,
        review_announced_at=row.review_announced_at,
        batch_id=row.batch_id,
        id=row.id,
    )


def _order_values(order: Order) -> dict[str, Any]:
    return {
        "user_id": order.user_id,
        "channel": order.channel,
        "card_id": order.card_id,
        "quote_id": order.quote_id,
        "brand": order.brand,
        "card_fp": order.card_fp,
        "card_masked": order.card_masked,
        "face_value_fen": order.face_value_fen,
        "balance_fen": order.balance_fen,
        "payout_fen": order.payout_fen,
        "fee_fen": order.fee_fen,
        "status": order.status.value,
        "risk_outcome": order.risk_outcome,
        "risk_reasons": list(order.risk_reasons),
        "risk_version": order.risk_version,
        "payout_account_id": order.payout_account_id,
        "created_at": _utc(order.created_at),
        "updated_at": _utc(order.updated_at),
        "settled_at": _utc_or_none(order.settled_at),
        "reviewed_at": _utc_or_none(order.reviewed_at),
        "reviewed_by": order.reviewed_by,
        "review_note": order.review_note,
        "review_announced_at": _utc_or_none(order.review_announced_at),
        "batch_id": order.batch_id,
    }


class SqlAlchemyOrderRepository(_Records[Order, OrderRow]):
    row_type, what = OrderRow, "order"

    def _record(self, row: OrderRow) -> Order:
        return _order(row)

    def _values(self, record: Order) -> dict[str, Any]:
        return _order_values(record)

    async def add(self, order: Order) -> Order:
        """Insert an order; returns it with its id."""
        return await self._insert(order)

    async def lock(self, order_id: int) -> Order:
        """An order, freshly read and locked until the unit of work ends (PostgreSQL: SELECT
        ... FOR UPDATE; SQLite: every unit of work already holds the write lock)."""
        row = await self._session.get(
            OrderRow, order_id, with_for_update=True, populate_existing=True
        )
        if row is None:
            raise KeyError(f"order {order_id} not found")
        return _order(row)

    async def lock_card(self, card_fp: str) -> None:
        """Lock one card by fingerprint until the unit of work ends (PostgreSQL: a transaction
        advisory lock in its own key space; SQLite: the unit of work holds the write lock)."""
        if self._session.get_bind().dialect.name == "postgresql":
            key = int.from_bytes(hashlib.sha256(card_fp.encode()).digest()[:4], "big", signed=True)
            await self._session.execute(
                select(func.pg_advisory_xact_lock(literal_column(str(CARD_LOCK_CLASS)), key))
            )

    async def with_status(self, statuses: Sequence[OrderStatus]) -> Sequence[Order]:
        """Every order in one of the statuses, oldest first."""
        result = await self._session.scalars(
            select(OrderRow)
            .where(OrderRow.status.in_([s.value for s in statuses]))
            .order_by(OrderRow.id)
        )
        return [_order(row) for row in result]

    async def update(self, order: Order) -> None:
        """Store changed fields (status, risk, payout account, timestamps). A second order
        taking a card another order owns breaks the partial unique index: ConcurrentUpdate
        (the conversation engine then handles the message again, and it hears CardHeld)."""
        try:
            await self._store(order.id, _order_values(order))
        except SqlIntegrityError as exc:
            raise ConcurrentUpdate("the card is owned by another order") from exc

    async def for_user(self, user_id: int, limit: int = 10) -> Sequence[Order]:
        """A user's orders, newest first."""
        result = await self._session.scalars(
            select(OrderRow)
            .where(OrderRow.user_id == user_id)
            .order_by(OrderRow.created_at.desc(), OrderRow.id.desc())
            .limit(limit)
        )
        return [_order(row) for row in result]

    async def recent(self, limit: int = 50) -> Sequence[Order]:
        """All orders, newest first."""
        result = await self._session.scalars(
            select(OrderRow).order_by(OrderRow.created_at.desc(), OrderRow.id.desc()).limit(limit)
        )
        return [_order(row) for row in result]

    async def with_card_fp(self, card_fp: str, statuses: Sequence[OrderStatus]) -> Sequence[Order]:
        """Orders for the same physical card in any of the given statuses, oldest first."""
        if not statuses:
            return []
        result = await self._session.scalars(
            select(OrderRow)
            .where(
                OrderRow.card_fp == card_fp,
                OrderRow.status.in_([status.value for status in statuses]),
            )
            .order_by(OrderRow.id)
        )
        return [_order(row) for row in result]

    async def payouts_since(
        self, user_ids: Sequence[int], since: datetime, statuses: Sequence[OrderStatus]
    ) -> Sequence[tuple[datetime, int]]:
        """(created_at, payout_fen) of the users' orders created since, in those statuses."""
        if not statuses or not user_ids:
            return []
        result = await self._session.execute(
            select(OrderRow.created_at, OrderRow.payout_fen)
            .where(
                OrderRow.user_id.in_(list(user_ids)),
                OrderRow.created_at >= _utc(since),
                OrderRow.status.in_([status.value for status in statuses]),
            )
            .order_by(OrderRow.created_at)
        )
        return [(at, amount) for at, amount in result]

    async def undisclosed_reviews(self) -> Sequence[Order]:
        """Orders with a review decision the user has not been told yet, oldest first."""
        result = await self._session.scalars(
            select(OrderRow)
            .where(OrderRow.reviewed_at.is_not(None), OrderRow.review_announced_at.is_(None))
            .order_by(OrderRow.id)
        )
        return [_order(row) for row in result]

    async def count_since(self, user_ids: Sequence[int], since: datetime) -> int:
        """How many orders (cards quoted) the users opened since, whatever became of them."""
        if not user_ids:
            return 0
        total = await self._session.scalar(
            select(func.count(OrderRow.id)).where(
                OrderRow.user_id.in_(list(user_ids)), OrderRow.created_at >= _utc(since)
            )
        )
        return int(total or 0)

    async def for_batch(self, batch_id: int) -> Sequence[Order]:
        """The orders of a batch sale, in the order they were opened."""
        result = await self._session.scalars(
            select(OrderRow).where(OrderRow.batch_id == batch_id).order_by(OrderRow.id)
        )
        return [_order(row) for row in result]


# --------------------------------------------------------------------------------------------
# Payouts


def _payout_account(row: PayoutAccountRow) -> PayoutAccount:
    return PayoutAccount(
        user_id=row.user_id,
        method=PayoutMethod(row.method),
        account_enc=row.account_enc,
        account_fp=row.account_fp,
        account_masked=row.account_masked,
        holder_name_enc=row.holder_name_enc,
        holder_name_masked=row.holder_name_masked,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        id=row.id,
    )


def _payout_account_values(account: PayoutAccount) -> dict[str, Any]:
    return {
        "user_id": account.user_id,
        "method": account.method.value,
        "account_enc": account.account_enc,
        "account_fp": account.account_fp,
        "account_masked": account.account_masked,
        "holder_name_enc": account.holder_name_enc,
        "holder_name_masked": account.holder_name_masked,
        "created_at": _utc(account.created_at),
        "last_used_at": _utc_or_none(account.last_used_at),
    }


class SqlAlchemyPayoutAccountRepository(_Records[PayoutAccount, PayoutAccountRow]):
    row_type, what = PayoutAccountRow, "payout account"

    def _record(self, row: PayoutAccountRow) -> PayoutAccount:
        return _payout_account(row)

    def _values(self, record: PayoutAccount) -> dict[str, Any]:
        return _payout_account_values(record)

    async def add(self, account: PayoutAccount) -> PayoutAccount:
        """Insert; returns it with its id. One row per (user, method, account fingerprint):
        a duplicate (say, added at the same time by another process) is ConcurrentUpdate."""
        return await self._insert(
            account, conflict=f"user {account.user_id} already has this {account.method} account"
        )

    async def update(self, account: PayoutAccount) -> None:
        """Store last_used_at (and the ciphertext, which is written after the id is known)."""
        await self._store(account.id, _payout_account_values(account))

    async def for_user(self, user_id: int) -> Sequence[PayoutAccount]:
        """A user's payout accounts, most recently used (or, if never used, added) first."""
        result = await self._session.scalars(
            select(PayoutAccountRow)
            .where(PayoutAccountRow.user_id == user_id)
            .order_by(
                func.coalesce(PayoutAccountRow.last_used_at, PayoutAccountRow.created_at).desc(),
                PayoutAccountRow.id.desc(),
            )
        )
        return [_payout_account(row) for row in result]

    async def find(
        self, user_id: int, method: PayoutMethod, account_fp: str
    ) -> PayoutAccount | None:
        """A user's existing account with this method and fingerprint."""
        row = await self._session.scalar(
            select(PayoutAccountRow).where(
                PayoutAccountRow.user_id == user_id,
                PayoutAccountRow.method == method.value,
                PayoutAccountRow.account_fp == account_fp,
            )
        )
        return None if row is None else _payout_account(row)

    async def holders(self, account_fp: str) -> Sequence[tuple[int, str | None]]:
        """(user id, resident ID fingerprint) of everyone who saved this payout account."""
        result = await self._session.execute(
            select(UserRow.id, UserRow.id_number_fp)
            .join(PayoutAccountRow, PayoutAccountRow.user_id == UserRow.id)
            .where(PayoutAccountRow.account_fp == account_fp)
            .distinct()
            .order_by(UserRow.id)
        )
        return [(user_id, fp) for user_id, fp in result]


def _payout(row: PayoutRow) -> Payout:
    return Payout(
        order_id=row.order_id,
        reference=row.reference,
        method=PayoutMethod(row.method),
        payout_account_id=row.payout_account_id,
        amount_fen=row.amount_fen,
        state=PayoutState(row.state),
        created_at=row.created_at,
        updated_at=row.updated_at,
        attempts=row.attempts,
        provider_txn_id=row.provider_txn_id,
        failure_reason=row.failure_reason,
        id=row.id,
    )


class SqlAlchemyPayoutRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, payout: Payout) -> Payout:
        """Insert; raises ConcurrentUpdate when the reference exists or the order already has a
        payout that has not failed."""
        row = PayoutRow(
            order_id=payout.order_id,
            reference=payout.reference,
            method=payout.method.value,
            payout_account_id=payout.payout_account_id,
            amount_fen=payout.amount_fen,
            state=payout.state.value,
            attempts=payout.attempts,
            provider_txn_id=payout.provider_txn_id,
            failure_reason=payout.failure_reason,
            created_at=_utc(payout.created_at),
            updated_at=_utc(payout.updated_at),
        )
        try:
            async with self._session.begin_nested():
                self._session.add(row)
                await self._session.flush()
        except SqlIntegrityError as exc:
            raise ConcurrentUpdate(
                f"payout {payout.reference} for order {payout.order_id} refused: the reference "
                "exists or the order already has a payout"
            ) from exc
        return _payout(row)

    async def for_order(self, order_id: int) -> Payout | None:
        """The order's latest payout (earlier ones can only have failed)."""
        row = await self._session.scalar(
            select(PayoutRow)
            .where(PayoutRow.order_id == order_id)
            .order_by(PayoutRow.id.desc())
            .limit(1)
        )
        return None if row is None else _payout(row)

    async def update(self, payout: Payout) -> None:
        """Store state, attempts, provider ids."""
        row = await _get_row(self._session, PayoutRow, _require_id(payout.id, "payout"), "payout")
        row.state = payout.state.value
        row.attempts = payout.attempts
        row.provider_txn_id = payout.provider_txn_id
        row.failure_reason = payout.failure_reason
        row.updated_at = _utc(payout.updated_at)
        await self._session.flush()

    async def for_reconciliation(
        self, since: datetime | None, until: datetime | None, references: Sequence[str]
    ) -> Sequence[tuple[Payout, Order]]:
        """Every payout, with its order, of each order that has a payout created in
        ``[since, until)`` or one under a listed reference (all when both bounds are None),
        oldest first."""
        query = select(PayoutRow, OrderRow).join(OrderRow, OrderRow.id == PayoutRow.order_id)
        if since is not None or until is not None:
            in_period = select(PayoutRow.order_id)
            if since is not None:
                in_period = in_period.where(PayoutRow.created_at >= _utc(since))
            if until is not None:
                in_period = in_period.where(PayoutRow.created_at < _utc(until))
            order_ids = set(await self._session.scalars(in_period))
            for chunk in _chunks(list(dict.fromkeys(references))):
                order_ids.update(
                    await self._session.scalars(
                        select(PayoutRow.order_id).where(PayoutRow.reference.in_(chunk))
                    )
                )
            found: list[tuple[Payout, Order]] = []
            for ids in _chunks(sorted(order_ids)):
                rows = await self._session.execute(query.where(PayoutRow.order_id.in_(ids)))
                found += [(_payout(payout), _order(order)) for payout, order in rows]
            return sorted(found, key=lambda pair: pair[0].id or 0)
        rows = await self._session.execute(query.order_by(PayoutRow.id))
        return [(_payout(payout), _order(order)) for payout, order in rows]


# Bound parameters per IN (...) list: well under SQLite's and asyncpg's limits (32,766/32,767).
_CHUNK = 1000
ItemT = TypeVar("ItemT")


def _chunks(values: Sequence[ItemT]) -> list[Sequence[ItemT]]:
    return [values[i : i + _CHUNK] for i in range(0, len(values), _CHUNK)]


# --------------------------------------------------------------------------------------------
# Ledger and audit (append-only)


class SqlAlchemyLedgerRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def post(self, txn: LedgerTransaction) -> LedgerTransaction:
        """Append a balanced transaction; returns it with a new uuid id."""
        if not txn.postings:
            raise LedgerError(f"ledger transaction {txn.kind!r} has no postings")
        total = sum(posting.amount_fen for posting in txn.postings)
        if total != 0:
            raise LedgerError(
                f"ledger transaction {txn.kind!r} is unbalanced: postings sum to {total} fen"
            )
        txn_id = str(uuid.uuid4())
        self._session.add(
            LedgerTransactionRow(
                id=txn_id, kind=txn.kind, order_id=txn.order_id, created_at=_utc(txn.created_at)
            )
        )
        # Flush the transaction row first: its postings reference it by foreign key.
        await self._session.flush()
        self._session.add_all(
            LedgerPostingRow(transaction_id=txn_id, account=p.account, amount_fen=p.amount_fen)
            for p in txn.postings
        )
        await self._session.flush()
        return replace(txn, id=txn_id, created_at=_utc(txn.created_at))

    async def balance(self, account: str) -> int:
        """Sum of an account's postings (debit positive)."""
        total = await self._session.scalar(
            select(func.coalesce(func.sum(LedgerPostingRow.amount_fen), 0)).where(
                LedgerPostingRow.account == account
            )
        )
        return int(total or 0)

    async def transactions(self, order_id: int | None = None) -> Sequence[LedgerTransaction]:
        """Transactions, oldest first, optionally for one order."""
        query = select(LedgerTransactionRow).order_by(LedgerTransactionRow.seq)
        if order_id is not None:
            query = query.where(LedgerTransactionRow.order_id == order_id)
        txns = list(await self._session.scalars(query))
        if not txns:
            return []
        postings: dict[str, list[Posting]] = {txn.id: [] for txn in txns}
        rows = await self._session.scalars(
            select(LedgerPostingRow)
            .where(LedgerPostingRow.transaction_id.in_(list(postings)))
            .order_by(LedgerPostingRow.id)
        )
        for row in rows:
            postings[row.transaction_id].append(Posting(row.account, row.amount_fen))
        return [
            LedgerTransaction(
                kind=txn.kind,
                postings=tuple(postings[txn.id]),
                created_at=txn.created_at,
                order_id=txn.order_id,
                id=txn.id,
            )
            for txn in txns
        ]

    async def for_orders(self, order_ids: Sequence[int]) -> Sequence[LedgerTransaction]:
        """The transactions of some orders, oldest first."""
        found: list[tuple[int, LedgerTransaction]] = []
        for ids in _chunks(sorted(set(order_ids))):
            txns = list(
                await self._session.scalars(
                    select(LedgerTransactionRow).where(LedgerTransactionRow.order_id.in_(ids))
                )
            )
            postings: dict[str, list[Posting]] = {txn.id: [] for txn in txns}
            for txn_ids in _chunks(list(postings)):
                rows = await self._session.scalars(
                    select(LedgerPostingRow)
                    .where(LedgerPostingRow.transaction_id.in_(txn_ids))
                    .order_by(LedgerPostingRow.id)
                )
                for row in rows:
                    postings[row.transaction_id].append(Posting(row.account, row.amount_fen))
            found += [
                (
                    txn.seq,
                    LedgerTransaction(
                        kind=txn.kind,
                        postings=tuple(postings[txn.id]),
                        created_at=txn.created_at,
                        order_id=txn.order_id,
                        id=txn.id,
                    ),
                )
                for txn in txns
            ]
        return [txn for _, txn in sorted(found, key=lambda pair: pair[0])]


def _audit_event(row: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        at=row.at,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        details=dict(row.details),
        prev_hash=row.prev_hash,
        hash=row.hash,
        seq=row.seq,
    )


class SqlAlchemyAuditRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def _lock(self) -> None:
        # PostgreSQL: a transaction-scoped advisory lock serialises appenders across processes
        # until commit/rollback. SQLite: the unit of work began with BEGIN IMMEDIATE, so this
        # transaction already holds the database's only write lock.
        if self._session.get_bind().dialect.name == "postgresql":
            await self._session.execute(
                select(func.pg_advisory_xact_lock(literal_column(str(AUDIT_LOCK_KEY))))
            )

    async def append(
        self, at: datetime, actor: str, action: str, subject: str, details: dict[str, object]
    ) -> AuditEvent:
        """Append an event chained to the previous one (serialised across processes)."""
        await self._lock()
        at = _utc(at)
        # Store details as the hash sees them (dates as ISO text, enums as values), so that a
        # stored event always re-hashes to its stored hash.
        stored_details: dict[str, Any] = json.loads(canonical_json(details))
        last = await self._session.scalar(
            select(AuditEventRow.hash).order_by(AuditEventRow.seq.desc()).limit(1)
        )
        prev_hash = last if last is not None else GENESIS_HASH
        event_hash = chain_hash(prev_hash, at, actor, action, subject, stored_details)
        row = AuditEventRow(
            at=at,
            actor=actor,
            action=action,
            subject=subject,
            details=stored_details,
            prev_hash=prev_hash,
            hash=event_hash,
        )
        self._session.add(row)
        await self._session.flush()
        return _audit_event(row)

    async def all(self) -> Sequence[AuditEvent]:
        """Every event, in order."""
        result = await self._session.scalars(select(AuditEventRow).order_by(AuditEventRow.seq))
        return [_audit_event(row) for row in result]

    async def for_subject(self, subject: str) -> Sequence[AuditEvent]:
        """The events about one subject (e.g. ``order:12``), in order."""
        result = await self._session.scalars(
            select(AuditEventRow)
            .where(AuditEventRow.subject == subject)
            .order_by(AuditEventRow.seq)
        )
        return [_audit_event(row) for row in result]

    async def by_actor(
        self, actor: str, actions: Sequence[str], since: datetime
    ) -> Sequence[AuditEvent]:
        """What one actor did since a time, among some actions, in order."""
        result = await self._session.scalars(
            select(AuditEventRow)
            .where(
                AuditEventRow.actor == actor,
                AuditEventRow.action.in_(list(actions)),
                AuditEventRow.at >= _utc(since),
            )
            .order_by(AuditEventRow.seq)
        )
        return [_audit_event(row) for row in result]

    async def head(self) -> AuditEvent | None:
        """The newest event: its hash stands for the whole chain (export it to anchor it)."""
        row = await self._session.scalar(
            select(AuditEventRow).order_by(AuditEventRow.seq.desc()).limit(1)
        )
        return None if row is None else _audit_event(row)


# --------------------------------------------------------------------------------------------
# Rate tables


class SqlAlchemyRateTableRepository:
    """Versioned rate tables; the one in force is the latest whose time has come."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, table: RateTable) -> bool:
        """Store a rate table; False if its version exists already (versions are immutable)."""
        exists = await self._session.scalar(
            select(RateTableRow.id).where(RateTableRow.version == table.version)
        )
        if exists is not None:
            return False
        self._session.add(
            RateTableRow(
                version=table.version,
                effective_from=_utc(table.effective_from),
                content=dict(table.content),
                sha256=table.sha256,
                imported_by=table.imported_by,
                imported_at=_utc(table.imported_at),
            )
        )
        await self._session.flush()
        return True

    async def in_force(self, at: datetime) -> RateTable | None:
        """The table in force at a time: the latest effective at or before it."""
        row = await self._session.scalar(
            select(RateTableRow)
            .where(RateTableRow.effective_from <= _utc(at))
            .order_by(RateTableRow.effective_from.desc(), RateTableRow.id.desc())
            .limit(1)
        )
        return None if row is None else _rate_table(row)

    async def all(self) -> Sequence[RateTable]:
        """Every table, by the time it takes effect, newest first."""
        rows = await self._session.scalars(
            select(RateTableRow).order_by(
                RateTableRow.effective_from.desc(), RateTableRow.id.desc()
            )
        )
        return [_rate_table(row) for row in rows]


def _rate_table(row: RateTableRow) -> RateTable:
    return RateTable(
        version=row.version,
        effective_from=row.effective_from,
        content=row.content,
        sha256=row.sha256,
        imported_by=row.imported_by,
        imported_at=row.imported_at,
    )


# --------------------------------------------------------------------------------------------
# The blacklist


class SqlAlchemyRiskListRepository:
    """Fingerprints of IDs, payout accounts and cards that are refused."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, kind: str, fp: str, reason: str, added_by: str, at: datetime) -> bool:
        """List a fingerprint; False if it was already listed."""
        if await self._row(kind, fp) is not None:
            return False
        self._session.add(
            RiskListRow(kind=kind, fp=fp, reason=reason, added_by=added_by, added_at=_utc(at))
        )
        await self._session.flush()
        return True

    async def remove(self, kind: str, fp: str) -> bool:
        """Unlist a fingerprint; False if it was not listed."""
        row = await self._row(kind, fp)
        if row is None:
            return False
        await self._session.delete(row)
        await self._session.flush()
        return True

    async def hits(self, candidates: Mapping[str, str | None]) -> tuple[str, ...]:
        """Which of the kinds (kind → fingerprint) are listed, in the order given."""
        listed: list[str] = []
        for kind, fp in candidates.items():
            if fp and await self._row(kind, fp) is not None:
                listed.append(kind)
        return tuple(listed)

    async def entries(self) -> Sequence[tuple[str, str, str, str, datetime]]:
        """(kind, fingerprint, reason, added_by, added_at), newest first."""
        rows = await self._session.scalars(select(RiskListRow).order_by(RiskListRow.id.desc()))
        return [(r.kind, r.fp, r.reason, r.added_by, r.added_at) for r in rows]

    async def _row(self, kind: str, fp: str) -> RiskListRow | None:
        return await self._session.scalar(
            select(RiskListRow).where(RiskListRow.kind == kind, RiskListRow.fp == fp)
        )


__all__ = [
    "SqlAlchemyAuditRepository",
    "SqlAlchemyCardRepository",
    "SqlAlchemyConsentRepository",
    "SqlAlchemyConversationRepository",
    "SqlAlchemyInboxRepository",
    "SqlAlchemyLedgerRepository",
    "SqlAlchemyOrderRepository",
    "SqlAlchemyPayoutAccountRepository",
    "SqlAlchemyPayoutRepository",
    "SqlAlchemyQuoteRepository",
    "SqlAlchemyRateTableRepository",
    "SqlAlchemyRiskListRepository",
    "SqlAlchemyUserRepository",
]


# --------------------------------------------------------------------------------------------
# WeChat channel: outbox, delivery windows, the shared access token

WECHAT_CONTACTS: Table = metadata.tables[WeChatContactRow.__tablename__]


class SqlAlchemyWeChatContactRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, openid: str) -> ContactWindow | None:
        """A user's delivery window, or None before their first message: the stored times of
        their last message and click, and the customer-service messages sent since each
        (counted in the outbox, whichever code path sent them)."""
        result = await self._session.execute(
            select(WECHAT_CONTACTS).where(WECHAT_CONTACTS.c.openid == openid)
        )
        row = result.one_or_none()
        if row is None:
            return None

        async def since(at: datetime | None) -> int:
            if at is None:
                return 0
            return int(
                await self._session.scalar(
                    select(func.count())
                    .select_from(OutboxRow)
                    .where(
                        OutboxRow.channel == "wechat",
                        OutboxRow.recipient == openid,
                        OutboxRow.state == "sent",
                        OutboxRow.via == WECHAT_CUSTOM,
                        OutboxRow.sent_at >= at,
                    )
                )
                or 0
            )

        return ContactWindow(
            openid=row.openid,
            last_message_at=row.last_message_at,
            message_sends=await since(row.last_message_at),
            last_event_at=row.last_event_at,
            event_sends=await since(row.last_event_at),
        )

    async def touch(self, openid: str, at: datetime, by_message: bool) -> None:
        """A new window opens at ``at`` (a message: 48 h; a click or follow: a minute)."""
        at = _utc(at)
        await self._session.execute(
            _insert_or_ignore(self._session, WECHAT_CONTACTS, {"openid": openid}, ["openid"])
        )
        column = "last_message_at" if by_message else "last_event_at"
        await self._session.execute(
            update(WECHAT_CONTACTS).where(WECHAT_CONTACTS.c.openid == openid).values({column: at})
        )

    async def language(self, openid: str) -> str | None:
        """The language of the user behind this openid, or None before their first message."""
        return await self._session.scalar(
            select(UserRow.language)
            .join(ChannelIdentityRow, ChannelIdentityRow.user_id == UserRow.id)
            .where(
                ChannelIdentityRow.channel == "wechat", ChannelIdentityRow.external_id == openid
            )
        )


class SqlAlchemyWeChatTokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, app_id: str) -> CachedAccessToken | None:
        """The stored token of an account, or None."""
        row = await self._session.get(WeChatAccessTokenRow, app_id, populate_existing=True)
        if row is None:
            return None
        return CachedAccessToken(row.app_id, row.token_enc, row.expires_at, row.fetched_at)

    async def put(self, token: CachedAccessToken) -> None:
        """Insert or replace an account's token."""
        row = await self._session.get(WeChatAccessTokenRow, token.app_id)
        if row is None:
            try:
                async with self._session.begin_nested():
                    self._session.add(
                        WeChatAccessTokenRow(
                            app_id=token.app_id,
                            token_enc=token.token_enc,
                            expires_at=_utc(token.expires_at),
                            fetched_at=_utc(token.fetched_at),
                        )
                    )
                    await self._session.flush()
                return
            except SqlIntegrityError:
                # Another process stored one first: replace it with ours (same stable token).
                row = await self._session.get(
                    WeChatAccessTokenRow, token.app_id, populate_existing=True
                )
                if row is None:
                    raise
        row.token_enc = token.token_enc
        row.expires_at = _utc(token.expires_at)
        row.fetched_at = _utc(token.fetched_at)
        await self._session.flush()

    async def discard(self, app_id: str) -> None:
        """Forget an account's token."""
        row = await self._session.get(WeChatAccessTokenRow, app_id)
        if row is not None:
            await self._session.delete(row)
            await self._session.flush()


__all__ += [
    "SqlAlchemyWeChatContactRepository",
    "SqlAlchemyWeChatTokenRepository",
]


# --------------------------------------------------------------------------------------------
# Batch sales


def _batch(row: BatchRow) -> Batch:
    return Batch(
        user_id=row.user_id,
        channel=row.channel,
        source=row.source,
        created_at=row.created_at,
        submitted_at=row.submitted_at,
        id=row.id,
    )


def _batch_values(batch: Batch) -> dict[str, Any]:
    return {
        "user_id": batch.user_id,
        "channel": batch.channel,
        "source": batch.source,
        "created_at": _utc(batch.created_at),
        "submitted_at": _utc_or_none(batch.submitted_at),
    }


class SqlAlchemyBatchRepository(_Records[Batch, BatchRow]):
    row_type, what = BatchRow, "batch"

    def _record(self, row: BatchRow) -> Batch:
        return _batch(row)

    def _values(self, record: Batch) -> dict[str, Any]:
        return _batch_values(record)

    async def add(self, batch: Batch) -> Batch:
        """Insert a batch; returns it with its id."""
        return await self._insert(batch)

    async def update(self, batch: Batch) -> None:
        """Store submitted_at."""
        await self._store(batch.id, _batch_values(batch))


# --------------------------------------------------------------------------------------------
# Broadcasts (core/broadcast.py). Core statements only (no identity map): the worker and the
# admin commands change the same rows from different units of work and processes.

from sqlalchemy import (  # noqa: E402 - this block is self-contained
    ScalarResult,
    and_,
    delete,
    exists,
    literal,
    or_,
)
from sqlalchemy import insert as sql_insert  # noqa: E402

from core.broadcast import (  # noqa: E402
    CHANNELS as BROADCAST_CHANNELS,
)
from core.broadcast import (  # noqa: E402
    OPEN_DELIVERY_STATES,
    Audience,
    AudienceKind,
    Broadcast,
    BroadcastState,
    Delivery,
    DeliveryReport,
    DeliveryState,
    Outcome,
)
from storage.tables import (  # noqa: E402
    BroadcastDeliveryRow,
    BroadcastOptOutRow,
    BroadcastRow,
    RateAlertSubscriptionRow,
)

BROADCASTS: Table = metadata.tables[BroadcastRow.__tablename__]
DELIVERIES: Table = metadata.tables[BroadcastDeliveryRow.__tablename__]
SUBSCRIPTIONS: Table = metadata.tables[RateAlertSubscriptionRow.__tablename__]
OPT_OUTS: Table = metadata.tables[BroadcastOptOutRow.__tablename__]
IDENTITIES: Table = metadata.tables[ChannelIdentityRow.__tablename__]
USERS: Table = metadata.tables[UserRow.__tablename__]
CARDS: Table = metadata.tables[CardRow.__tablename__]


def _broadcast(row: Any) -> Broadcast:
    return Broadcast(
        created_by=row.created_by,
        created_at=row.created_at,
        audience=Audience.from_code(row.audience),
        text=row.text,
        state=BroadcastState(row.state),
        send_at=row.send_at,
        image=row.image,
        recipients=row.recipients,
        confirmed_at=row.confirmed_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        cancelled_at=row.cancelled_at,
        cancelled_by=row.cancelled_by,
        id=row.id,
    )


def _delivery(row: Any) -> Delivery:
    return Delivery(
        broadcast_id=row.broadcast_id,
        user_id=row.user_id,
        channel=row.channel,
        chat_id=row.chat_id,
        state=DeliveryState(row.state),
        language=row.language,
        attempts=row.attempts,
        error=row.error,
        id=row.id,
    )


def _audience_rows(audience: Audience) -> Any:
    """(user_id, channel, chat_id, language) of every recipient: per user, the reachable
    Telegram/WeChat identity added last; nobody who opted out."""
    ident = IDENTITIES.alias("ident")
    newest = (
        select(func.max(IDENTITIES.c.id).label("id"))
        .where(IDENTITIES.c.reachable.is_(True), IDENTITIES.c.channel.in_(BROADCAST_CHANNELS))
        .group_by(IDENTITIES.c.user_id)
        .subquery("newest")
    )
    query = (
        select(ident.c.user_id, ident.c.channel, ident.c.chat_id, USERS.c.language)
        .join(newest, newest.c.id == ident.c.id)
        .join(USERS, USERS.c.id == ident.c.user_id)
        .where(~exists().where(OPT_OUTS.c.user_id == ident.c.user_id))
    )
    if audience.kind is AudienceKind.HOLDERS:
        query = query.where(
            exists().where(CARDS.c.user_id == ident.c.user_id, CARDS.c.brand == audience.brand)
        )
    elif audience.kind is AudienceKind.ALERTS:
        query = query.where(
            exists().where(
                SUBSCRIPTIONS.c.user_id == ident.c.user_id,
                SUBSCRIPTIONS.c.brand == audience.brand,
            )
        )
    return query


class SqlAlchemyBroadcastRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, broadcast: Broadcast) -> Broadcast:
        result = await self._session.execute(
            sql_insert(BROADCASTS)
            .values(
                created_by=broadcast.created_by,
                created_at=_utc(broadcast.created_at),
                audience=broadcast.audience.code,
                text=broadcast.text,
                image=broadcast.image,
                state=broadcast.state.value,
                send_at=_utc_or_none(broadcast.send_at),
                recipients=broadcast.recipients,
            )
            .returning(BROADCASTS.c.id)
        )
        return replace(broadcast, id=result.scalar_one())

    async def get(self, broadcast_id: int) -> Broadcast:
        row = (
            await self._session.execute(select(BROADCASTS).where(BROADCASTS.c.id == broadcast_id))
        ).one_or_none()
        if row is None:
            raise KeyError(f"broadcast {broadcast_id} not found")
        return _broadcast(row)

    async def drafts_of(self, actor: str) -> Sequence[Broadcast]:
        rows = await self._session.execute(
            select(BROADCASTS)
            .where(BROADCASTS.c.created_by == actor, BROADCASTS.c.state == BroadcastState.DRAFT)
            .order_by(BROADCASTS.c.id)
        )
        return [_broadcast(row) for row in rows]

    async def _set(self, broadcast_id: int, **values: Any) -> None:
        await self._session.execute(
            update(BROADCASTS).where(BROADCASTS.c.id == broadcast_id).values(**values)
        )

    async def set_image(self, broadcast_id: int, image: bytes) -> None:
        await self._set(broadcast_id, image=image)

    async def set_state(
        self, broadcast_id: int, state: BroadcastState, at: datetime, actor: str | None = None
    ) -> None:
        values: dict[str, Any] = {"state": state.value}
        if state is BroadcastState.CANCELLED:
            values.update(cancelled_at=_utc(at), cancelled_by=actor)
        elif state is BroadcastState.FINISHED:
            values.update(finished_at=_utc(at))
        elif state is BroadcastState.SENDING:
            values.update(started_at=_utc(at))
        await self._set(broadcast_id, **values)

    async def confirm(
        self, broadcast_id: int, recipients: int, send_at: datetime, at: datetime
    ) -> None:
        await self._set(
            broadcast_id,
            state=BroadcastState.SCHEDULED.value,
            recipients=recipients,
            send_at=_utc(send_at),
            confirmed_at=_utc(at),
        )

    async def count_audience(self, audience: Audience) -> int:
        recipients = _audience_rows(audience).subquery()
        return int(await self._session.scalar(select(func.count()).select_from(recipients)) or 0)

    async def materialise(self, broadcast_id: int, audience: Audience, at: datetime) -> int:
        rows = _audience_rows(audience).subquery()
        source = select(
            literal(broadcast_id, DELIVERIES.c.broadcast_id.type),
            rows.c.user_id,
            rows.c.channel,
            rows.c.chat_id,
            rows.c.language,
            literal(DeliveryState.PENDING.value, DELIVERIES.c.state.type),
            literal(0, DELIVERIES.c.attempts.type),
            literal(_utc(at), DELIVERIES.c.updated_at.type),
        )
        columns = ["broadcast_id", "user_id", "channel", "chat_id", "language", "state"]
        result = await self._session.execute(
            sql_insert(DELIVERIES).from_select([*columns, "attempts", "updated_at"], source)
        )
        assert isinstance(result, CursorResult)
        return int(result.rowcount)

    async def skip_pending(self, broadcast_id: int, reason: str, at: datetime) -> int:
        result = await self._session.execute(
            update(DELIVERIES)
            .where(
                DELIVERIES.c.broadcast_id == broadcast_id,
                DELIVERIES.c.state == DeliveryState.PENDING.value,
            )
            .values(state=DeliveryState.SKIPPED.value, error=reason[:128], updated_at=_utc(at))
        )
        assert isinstance(result, CursorResult)
        return int(result.rowcount)

    async def report(self, broadcast_id: int) -> DeliveryReport:
        rows = await self._session.execute(
            select(DELIVERIES.c.state, func.count())
            .where(DELIVERIES.c.broadcast_id == broadcast_id)
            .group_by(DELIVERIES.c.state)
        )
        return DeliveryReport.of((str(row[0]), int(row[1])) for row in rows)

    async def recent(self, limit: int) -> Sequence[Broadcast]:
        rows = await self._session.execute(
            select(BROADCASTS)
            .where(BROADCASTS.c.state != BroadcastState.DRAFT.value)
            .order_by(BROADCASTS.c.id.desc())
            .limit(limit)
        )
        return [_broadcast(row) for row in rows]

    async def deliveries(self, broadcast_id: int) -> Sequence[Delivery]:
        rows = await self._session.execute(
            select(DELIVERIES)
            .where(DELIVERIES.c.broadcast_id == broadcast_id)
            .order_by(DELIVERIES.c.id)
        )
        return [_delivery(row) for row in rows]

    async def claim(
        self, channel: str, worker: str, now: datetime, limit: int
    ) -> Sequence[Delivery]:
        now = _utc(now)
        due = (
            await self._session.execute(
                select(BROADCASTS.c.id, BROADCASTS.c.state)
                .where(
                    BROADCASTS.c.state.in_(
                        [BroadcastState.SCHEDULED.value, BroadcastState.SENDING.value]
                    ),
                    or_(BROADCASTS.c.send_at.is_(None), BROADCASTS.c.send_at <= now),
                )
                .order_by(BROADCASTS.c.id)
            )
        ).all()
        claimed: list[Delivery] = []
        for broadcast_id, state in due:
            if state == BroadcastState.SCHEDULED.value:
                await self._session.execute(
                    update(BROADCASTS)
                    .where(
                        BROADCASTS.c.id == broadcast_id,
                        BROADCASTS.c.state == BroadcastState.SCHEDULED.value,
                    )
                    .values(state=BroadcastState.SENDING.value, started_at=now)
                )
            if len(claimed) >= limit:
                continue
            oldest = (
                select(DELIVERIES.c.id)
                .where(
                    DELIVERIES.c.channel == channel,
                    DELIVERIES.c.state == DeliveryState.PENDING.value,
                    DELIVERIES.c.broadcast_id == broadcast_id,
                )
                .order_by(DELIVERIES.c.id)
                .limit(limit - len(claimed))
            )
            result = await self._session.execute(
                update(DELIVERIES)
                .where(
                    DELIVERIES.c.id.in_(oldest.scalar_subquery()),
                    DELIVERIES.c.state == DeliveryState.PENDING.value,
                )
                .values(
                    state=DeliveryState.CLAIMED.value,
                    claimed_by=worker,
                    claimed_at=now,
                    updated_at=now,
                    attempts=DELIVERIES.c.attempts + 1,
                )
                .returning(*DELIVERIES.c)
            )
            claimed += sorted(map(_delivery, result), key=lambda d: d.id or 0)
        return claimed

    async def record(
        self, worker: str, outcomes: Sequence[tuple[int, Outcome]], at: datetime
    ) -> int:
        at = _utc(at)
        groups: dict[Outcome, list[int]] = {}
        for delivery_id, outcome in outcomes:
            groups.setdefault(outcome, []).append(delivery_id)
        changed = 0
        for outcome, ids in groups.items():
            values: dict[str, Any] = {
                "state": outcome.state.value,
                "error": (outcome.error or None) and outcome.error[:128],
                "updated_at": at,
            }
            if outcome.state is DeliveryState.PENDING:
                values["claimed_by"] = None
            result = await self._session.execute(
                update(DELIVERIES)
                .where(
                    DELIVERIES.c.id.in_(ids),
                    DELIVERIES.c.claimed_by == worker,
                    DELIVERIES.c.state.in_(
                        [
                            DeliveryState.CLAIMED.value,
                            DeliveryState.SENDING.value,
                            DeliveryState.UNKNOWN.value,
                        ]
                    ),
                )
                .values(**values)
            )
            assert isinstance(result, CursorResult)
            changed += int(result.rowcount)
            if outcome.state is DeliveryState.UNREACHABLE:
                # The person blocked the bot or left: their identity is marked, and the next
                # message from them marks it reachable again.
                await self._session.execute(
                    update(IDENTITIES)
                    .where(
                        exists().where(
                            DELIVERIES.c.id.in_(ids),
                            DELIVERIES.c.user_id == IDENTITIES.c.user_id,
                            DELIVERIES.c.channel == IDENTITIES.c.channel,
                            DELIVERIES.c.chat_id == IDENTITIES.c.chat_id,
                        )
                    )
                    .values(reachable=False)
                )
        return changed

    async def start(self, delivery_id: int, worker: str, at: datetime) -> bool:
        result = await self._session.execute(
            update(DELIVERIES)
            .where(
                DELIVERIES.c.id == delivery_id,
                DELIVERIES.c.claimed_by == worker,
                DELIVERIES.c.state == DeliveryState.CLAIMED.value,
            )
            .values(state=DeliveryState.SENDING.value, claimed_at=_utc(at), updated_at=_utc(at))
        )
        assert isinstance(result, CursorResult)
        return int(result.rowcount) == 1

    async def expire_claims(self, channel: str, worker: str, before: datetime) -> int:
        # Claimed by a worker that stopped before starting them: no request was made, so they
        # simply go back in line.
        await self._session.execute(
            update(DELIVERIES)
            .where(
                DELIVERIES.c.channel == channel,
                DELIVERIES.c.state == DeliveryState.CLAIMED.value,
                or_(DELIVERIES.c.claimed_by.is_(None), DELIVERIES.c.claimed_by != worker),
                DELIVERIES.c.claimed_at < _utc(before),
            )
            .values(state=DeliveryState.PENDING.value, claimed_by=None)
        )
        result = await self._session.execute(
            update(DELIVERIES)
            .where(
                DELIVERIES.c.channel == channel,
                DELIVERIES.c.state == DeliveryState.SENDING.value,
                or_(DELIVERIES.c.claimed_by.is_(None), DELIVERIES.c.claimed_by != worker),
                DELIVERIES.c.claimed_at < _utc(before),
            )
            .values(
                state=DeliveryState.UNKNOWN.value,
                error="left sending by a worker that stopped",
            )
        )
        assert isinstance(result, CursorResult)
        return int(result.rowcount)

    async def finish_done(self, at: datetime) -> Sequence[int]:
        open_states = [s.value for s in OPEN_DELIVERY_STATES]
        done: ScalarResult[int] = await self._session.scalars(
            select(BROADCASTS.c.id).where(
                BROADCASTS.c.state == BroadcastState.SENDING.value,
                ~exists().where(
                    DELIVERIES.c.broadcast_id == BROADCASTS.c.id,
                    DELIVERIES.c.state.in_(open_states),
                ),
            )
        )
        ids = list(done)
        if ids:
            await self._session.execute(
                update(BROADCASTS)
                .where(
                    BROADCASTS.c.id.in_(ids),
                    BROADCASTS.c.state == BroadcastState.SENDING.value,
                )
                .values(state=BroadcastState.FINISHED.value, finished_at=_utc(at))
            )
        return ids


class SqlAlchemySubscriptionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, user_id: int, brand: str, at: datetime) -> bool:
        stmt = _insert_or_ignore(
            self._session,
            SUBSCRIPTIONS,
            {"user_id": user_id, "brand": brand, "created_at": _utc(at)},
            ["user_id", "brand"],
        )
        result = await self._session.execute(stmt)
        assert isinstance(result, CursorResult)
        return result.rowcount == 1

    async def remove(self, user_id: int, brand: str) -> int:
        result = await self._session.execute(
            delete(SUBSCRIPTIONS).where(
                and_(SUBSCRIPTIONS.c.user_id == user_id, SUBSCRIPTIONS.c.brand == brand)
            )
        )
        assert isinstance(result, CursorResult)
        return int(result.rowcount)

    async def remove_all(self, user_id: int) -> int:
        result = await self._session.execute(
            delete(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.user_id == user_id)
        )
        assert isinstance(result, CursorResult)
        return int(result.rowcount)

    async def brands_of(self, user_id: int) -> Sequence[str]:
        result: ScalarResult[str] = await self._session.scalars(
            select(SUBSCRIPTIONS.c.brand)
            .where(SUBSCRIPTIONS.c.user_id == user_id)
            .order_by(SUBSCRIPTIONS.c.brand)
        )
        return list(result)

    async def opt_out(self, user_id: int, at: datetime) -> None:
        await self._session.execute(
            _insert_or_ignore(
                self._session,
                OPT_OUTS,
                {"user_id": user_id, "opted_out_at": _utc(at)},
                ["user_id"],
            )
        )

    async def opt_in(self, user_id: int) -> bool:
        result = await self._session.execute(delete(OPT_OUTS).where(OPT_OUTS.c.user_id == user_id))
        assert isinstance(result, CursorResult)
        return result.rowcount == 1

    async def opted_out(self, user_id: int) -> bool:
        found = await self._session.scalar(
            select(OPT_OUTS.c.user_id).where(OPT_OUTS.c.user_id == user_id)
        )
        return found is not None
