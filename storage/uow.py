"""The SQLAlchemy unit of work: one session, one transaction, every repository on it."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.ports import (
    AuditRepository,
    BatchRepository,
    CardRepository,
    ConsentRepository,
    ConversationRepository,
    InboxRepository,
    LedgerRepository,
    OrderClaimRepository,
    OrderRepository,
    OutboxRepository,
    PayoutAccountRepository,
    PayoutRepository,
    QuoteRepository,
    RateTableRepository,
    RiskListRepository,
    RoleGrantRepository,
    TicketRepository,
    UserRepository,
    WeChatContactRepository,
    WeChatPushStampRepository,
    WeChatTokenRepository,
)
from storage.desk import (
    SqlAlchemyRoleGrantRepository,
    SqlAlchemyTicketRepository,
)
from storage.outbox import SqlAlchemyOrderClaimRepository, SqlAlchemyOutboxRepository
from storage.repositories import (
    SqlAlchemyAuditRepository,
    SqlAlchemyBatchRepository,
    SqlAlchemyBroadcastRepository,
    SqlAlchemyCardRepository,
    SqlAlchemyConsentRepository,
    SqlAlchemyConversationRepository,
    SqlAlchemyInboxRepository,
    SqlAlchemyLedgerRepository,
    SqlAlchemyOrderRepository,
    SqlAlchemyPayoutAccountRepository,
    SqlAlchemyPayoutRepository,
    SqlAlchemyQuoteRepository,
    SqlAlchemyRateTableRepository,
    SqlAlchemyRiskListRepository,
    SqlAlchemySubscriptionRepository,
    SqlAlchemyUserRepository,
    SqlAlchemyWeChatContactRepository,
    SqlAlchemyWeChatTokenRepository,
)
from storage.wechat_stamps import SqlAlchemyWeChatPushStampRepository


class SqlAlchemyUnitOfWork:
    """``async with uow: ...; await uow.commit()`` — leaving the block without commit rolls
    back. Each ``async with`` opens a fresh session; the repositories live only inside it."""

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
    wechat_contacts: WeChatContactRepository
    wechat_tokens: WeChatTokenRepository
    wechat_push_stamps: WeChatPushStampRepository
    broadcasts: SqlAlchemyBroadcastRepository
    subscriptions: SqlAlchemySubscriptionRepository
    batches: BatchRepository

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._session_factory = session_factory
        self._session: AsyncSession | None = None

    async def __aenter__(self) -> Self:
        if self._session is not None:
            raise RuntimeError("this unit of work is already open")
        session = self._session = self._session_factory()
        self.inbox = SqlAlchemyInboxRepository(session)
        self.conversations = SqlAlchemyConversationRepository(session)
        self.users = SqlAlchemyUserRepository(session)
        self.consents = SqlAlchemyConsentRepository(session)
        self.cards = SqlAlchemyCardRepository(session)
        self.quotes = SqlAlchemyQuoteRepository(session)
        self.orders = SqlAlchemyOrderRepository(session)
        self.payout_accounts = SqlAlchemyPayoutAccountRepository(session)
        self.payouts = SqlAlchemyPayoutRepository(session)
        self.ledger = SqlAlchemyLedgerRepository(session)
        self.audit = SqlAlchemyAuditRepository(session)
        self.risk_list = SqlAlchemyRiskListRepository(session)
        self.rates = SqlAlchemyRateTableRepository(session)
        self.tickets = SqlAlchemyTicketRepository(session)
        self.outbox = SqlAlchemyOutboxRepository(session)
        self.order_claims = SqlAlchemyOrderClaimRepository(session)
        self.role_grants = SqlAlchemyRoleGrantRepository(session)
        self.wechat_contacts = SqlAlchemyWeChatContactRepository(session)
        self.wechat_tokens = SqlAlchemyWeChatTokenRepository(session)
        self.wechat_push_stamps = SqlAlchemyWeChatPushStampRepository(session)
        self.broadcasts = SqlAlchemyBroadcastRepository(session)
        self.subscriptions = SqlAlchemySubscriptionRepository(session)
        self.batches = SqlAlchemyBatchRepository(session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Roll back whatever was not committed and return the connection to the pool."""
        session, self._session = self._session, None
        if session is not None:
            # close() rolls back an open transaction before releasing the connection.
            await session.close()

    @property
    def session(self) -> AsyncSession:
        """The open session (for adapters that need a query no repository offers)."""
        if self._session is None:
            raise RuntimeError("the unit of work is not open: use `async with uow:`")
        return self._session

    async def commit(self) -> None:
        """Make the work durable."""
        await self.session.commit()

    async def rollback(self) -> None:
        """Discard the work since the last commit."""
        await self.session.rollback()
