"""The sale, as use cases: capture a card, verify and quote it, take the person's identity and
payout account, assess risk, and settle. Each function works inside a unit of work it is given;
the caller owns the transaction. Settlement manages its own units of work: the payout provider
is never called inside an open transaction; the issuer's redemption is, under the order's lock,
so that no cancellation can slip in between taking the card's money and recording it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol
from uuid import uuid4

from core import ledger, masking
from core.catalog import Catalog, normalize_card_number
from core.errors import (
    AccountSuspended,
    BrandNotBought,
    CannotCancel,
    CardbotError,
    CardHeld,
    CardLocked,
    CardNotFound,
    CardUnusable,
    IssuerInconsistent,
    IssuerUnavailable,
    KycMismatch,
    KycUnavailable,
    PayoutOutcomeUnknown,
    PreconditionFailed,
    QuoteExpired,
    WrongSecret,
)
from core.identity import (
    normalize_alipay_account,
    normalize_bank_card,
    normalize_phone,
    normalize_wechat_account,
    parse_resident_id,
    validate_real_name,
)
from core.model import (
    Card,
    CardStatus,
    Consent,
    Order,
    OrderStatus,
    Payout,
    PayoutAccount,
    PayoutMethod,
    PayoutState,
    Quote,
    RiskOutcome,
    User,
)
from core.money import yuan
from core.orders import transition
from core.ports import (
    CardIssuer,
    Clock,
    KycProvider,
    PayoutGateway,
    PayoutRequest,
    PayoutResult,
    UnitOfWork,
    UnitOfWorkFactory,
    Vault,
)
from core.pricing import PricedCard, PricingPolicy, pricing_from_dict, quote_card
from core.risk import (
    SHANGHAI,
    RiskDecision,
    RiskFacts,
    RiskPolicy,
    assess,
    daily_totals,
    shanghai_date,
    shanghai_day_bounds,
    streak_suspends,
)
from core.sealing import account_context, card_context, holder_context, user_context

log = logging.getLogger(__name__)

# What a person did that counts towards a suspension streak (risk.toml [streak]).
STREAK_ACTIONS = ("card.secret_wrong", "card.used_refused")

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

IDENTITY_CONSENT = "identity"
IDENTITY_CONSENT_VERSION = "2026-11-v1"

# Orders that own a card: ownership is decided once, when a quote is accepted (under a lock on
# the card's fingerprint, and a partial unique index in storage on these statuses); anyone else
# quoting or accepting the card meanwhile is refused with CardHeld.
CARD_HOLDING_STATUSES = (
    OrderStatus.ACCEPTED,
    OrderStatus.REVIEW,
    OrderStatus.APPROVED,
    OrderStatus.REDEEMED,
    OrderStatus.PAYING,
    OrderStatus.SETTLED,
    OrderStatus.PAYOUT_FAILED,
)
# An accepted order not confirmed within this owns its card only until someone else wants it.
ACCEPTED_HOLD = timedelta(minutes=30)
# Orders that count towards a person's daily amount.
DAILY_AMOUNT_STATUSES = (
    OrderStatus.REVIEW,
    OrderStatus.APPROVED,
    OrderStatus.REDEEMED,
    OrderStatus.PAYING,
    OrderStatus.SETTLED,
)


@dataclass(frozen=True)
class SettlementPolicy:
    """When payouts go out. ``t0``: as soon as the card is redeemed. ``t1``: the card is
    redeemed at once (its balance is ours), and the payout waits for the next day's batch at
    ``batch_hour`` o'clock Asia/Shanghai (every calendar day; Alipay, WeChat and bank transfers
    run at weekends too)."""

    mode: str = "t0"
    batch_hour: int = 10

    def __post_init__(self) -> None:
        if self.mode not in ("t0", "t1"):
            raise ValueError(f"settlement mode must be t0 or t1, not {self.mode!r}")
        if not 0 <= self.batch_hour <= 23:
            raise ValueError("batch_hour must be an hour of the day (0-23)")

    def release_at(self, reserved_at: datetime) -> datetime | None:
        """When a payout reserved at ``reserved_at`` may be sent; None: at once."""
        if self.mode == "t0":
            return None
        following = shanghai_date(reserved_at) + timedelta(days=1)
        local = datetime(
            following.year, following.month, following.day, self.batch_hour, tzinfo=SHANGHAI
        )
        return local.astimezone(UTC)


class SettlementListener(Protocol):
    """Told, inside the very transaction that moves an order to an outcome the person must hear
    about (settled, payout failed, card refused at redemption), so that what they are told is
    written with its cause (the outbox) and only by the process that made the change."""

    async def order_changed(
        self, uow: UnitOfWork, deps: SaleDeps, order: Order, live: bool
    ) -> None:
        """``live``: the settlement runs inside the person's own conversation turn, which
        passes the outcome on as its answer (the outbox keeps it in case it cannot)."""
        ...


@dataclass(frozen=True)
class SaleDeps:
    """Everything the sale needs from outside, passed explicitly."""

    catalog: Catalog
    pricing: PricingPolicy
    risk: RiskPolicy
    issuer: CardIssuer
    gateway: PayoutGateway
    vault: Vault
    clock: Clock
    kyc: KycProvider | None = None  # the real-name service for identity level 2
    settlement: SettlementPolicy = SettlementPolicy()
    listener: SettlementListener | None = None


@dataclass(frozen=True)
class Receipt:
    """An electronic receipt (电子回单) of a settled order."""

    order_number: str
    brand: str
    card_masked: str
    face_value_fen: int
    balance_fen: int
    fee_fen: int
    payout_fen: int
    method: PayoutMethod
    account_masked: str
    holder_masked: str
    reference: str
    provider_txn_id: str | None
    paid_at: datetime
    audit_hash: str


# --------------------------------------------------------------------------------------------
# Cards, verification and quotes


async def capture_card(uow: UnitOfWork, deps: SaleDeps, user: User, text: str) -> Card:
    """Recognise a card number (typed or read from a photo) and store it encrypted."""
    check_not_suspended(deps, user)
    number = normalize_card_number(text)
    brand = deps.catalog.match(number)
    if brand.code not in (await current_pricing(uow, deps)).rates:
        raise BrandNotBought(brand=brand.code)
    number_fp = deps.vault.fingerprint("card", f"{brand.code}:{number}")
    await check_not_locked(uow, deps, number_fp, user.id)
    now = deps.clock.now()
    card = await uow.cards.add(
        Card(
            user_id=user.id,
            brand=brand.code,
            number_enc=b"",
            number_fp=number_fp,
            number_masked=masking.mask_card_number(number),
            created_at=now,
        )
    )
    assert card.id is not None
    card = replace(card, number_enc=deps.vault.encrypt(number, card_context(card.id, "number")))
    await uow.cards.update(card)
    await uow.audit.append(
        now,
        f"user:{user.id}",
        "card.captured",
        f"card:{card.id}",
        {"brand": brand.code, "card": card.number_masked},
    )
    return card


async def attach_secret(uow: UnitOfWork, deps: SaleDeps, card: Card, text: str) -> Card:
    """Validate the card secret's shape and store it encrypted; it is never shown again."""
    brand = deps.catalog.get(card.brand)
    secret = deps.catalog.validate_secret(brand, text)
    assert card.id is not None
    card = replace(card, secret_enc=deps.vault.encrypt(secret, card_context(card.id, "secret")))
    await uow.cards.update(card)
    return card


def _card_plaintext(deps: SaleDeps, card: Card) -> tuple[str, str | None]:
    assert card.id is not None
    number = deps.vault.decrypt(card.number_enc, card_context(card.id, "number"))
    secret = (
        deps.vault.decrypt(card.secret_enc, card_context(card.id, "secret"))
        if card.secret_enc
        else None
    )
    return number, secret


def check_not_suspended(deps: SaleDeps, user: User) -> None:
    """Refuse new cards from a person suspended by a streak of failures, saying until when."""
    if user.suspended_until is not None and deps.clock.now() < user.suspended_until:
        until = user.suspended_until.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
        raise AccountSuspended(until=until)


async def _count_towards_streak(
    uow: UnitOfWork, deps: SaleDeps, card: Card, action: str | None
) -> None:
    """Record a failed card against the person (``action``; None: already recorded) and
    suspend them when the streak is long enough — the suspension is kept (the caller
    commits) and AccountSuspended says so."""
    now = deps.clock.now()
    actor = f"user:{card.user_id}"
    if action is not None:
        await uow.audit.append(now, actor, action, f"card:{card.id}", {"card": card.number_masked})
    rule = deps.risk.streak
    if rule is None:
        return
    since = now - timedelta(minutes=rule.window_minutes)
    events = await uow.audit.by_actor(actor, STREAK_ACTIONS, since)
    if not streak_suspends([e.at for e in events], now, deps.risk):
        return
    user = await uow.users.get(card.user_id)
    until = now + timedelta(hours=rule.suspend_hours)
    await uow.users.update(replace(user, suspended_until=until))
    await uow.audit.append(
        now,
        "risk",
        "risk.suspended",
        f"user:{card.user_id}",
        {"failures": len(events), "until": until.isoformat(), "version": deps.risk.version},
    )
    check_not_suspended(deps, replace(user, suspended_until=until))


def _secret_subject(card_fp: str) -> str:
    return f"card_fp:{card_fp}"


async def wrong_secrets(
    uow: UnitOfWork, deps: SaleDeps, card_fp: str
) -> list[tuple[str, datetime]]:
    """(actor, time) of every wrong secret typed for a card within the card-secret window."""
    since = deps.clock.now() - timedelta(hours=deps.risk.card_secret.window_hours)
    return [
        (e.actor, e.at)
        for e in await uow.audit.for_subject(_secret_subject(card_fp))
        if e.action == "card.secret_wrong" and e.at >= since
    ]


async def check_not_locked(uow: UnitOfWork, deps: SaleDeps, card_fp: str, user_id: int) -> None:
    """Refuse a card to a person who got its secret wrong too often lately. Only to them:
    other people's wrong secrets never lock a card (see risk ``card_secret``)."""
    rule = deps.risk.card_secret
    failures = await wrong_secrets(uow, deps, card_fp)
    if sum(1 for actor, _ in failures if actor == f"user:{user_id}") >= rule.per_person:
        raise CardLocked(hours=rule.window_hours)


async def check_not_held(
    uow: UnitOfWork, deps: SaleDeps, card_fp: str, order_id: int | None = None
) -> None:
    """Refuse a card that an order (other than ``order_id``) owns: accepted, submitted or sold.
    An accepted order left unconfirmed for ACCEPTED_HOLD owns its card no longer once someone
    else wants it: it expires (its owner, coming back, hears the quote is no longer open)."""
    now = deps.clock.now()
    for holder in await uow.orders.with_card_fp(card_fp, CARD_HOLDING_STATUSES):
        if holder.id == order_id:
            continue
        if holder.status is OrderStatus.ACCEPTED and now - holder.updated_at >= ACCEPTED_HOLD:
            await uow.orders.update(transition(holder, OrderStatus.EXPIRED, now))
            await uow.audit.append(
                now, "sale", "order.lapsed", f"order:{holder.id}", {"card": holder.card_masked}
            )
            continue
        raise CardHeld()


async def verify_card(uow: UnitOfWork, deps: SaleDeps, card: Card) -> Card:
    """Ask the issuer about a card; a used, frozen, expired or empty one is refused precisely,
    and an answer that cannot be true (a balance above the face value) as an issuer error."""
    await check_not_locked(uow, deps, card.number_fp, card.user_id)
    number, secret = _card_plaintext(deps, card)
    try:
        verification = await deps.issuer.verify(card.brand, number, secret)
    except WrongSecret:
        await uow.audit.append(
            deps.clock.now(),
            f"user:{card.user_id}",
            "card.secret_wrong",
            _secret_subject(card.number_fp),
            {"card": card.number_masked},
        )
        await _count_towards_streak(uow, deps, card, None)
        raise
    now = deps.clock.now()
    if verification.face_value_fen <= 0 or not (
        0 <= verification.balance_fen <= verification.face_value_fen
    ):
        # Never quoted, never paid: the issuer's data is wrong (or tampered with), not the card.
        await uow.audit.append(
            now,
            "issuer",
            "card.issuer_inconsistent",
            f"card:{card.id}",
            {
                "card": card.number_masked,
                "face_value_fen": verification.face_value_fen,
                "balance_fen": verification.balance_fen,
            },
        )
        log.warning(
            "issuer data for card %s cannot be true: face %s fen, balance %s fen",
            card.id,
            verification.face_value_fen,
            verification.balance_fen,
        )
        raise IssuerInconsistent()
    card = replace(
        card,
        status=verification.status.value,
        face_value_fen=verification.face_value_fen,
        balance_fen=verification.balance_fen,
        expires=verification.expires,
        verified_at=now,
    )
    await uow.cards.update(card)
    if verification.status is CardStatus.USED:
        await _count_towards_streak(uow, deps, card, "card.used_refused")
        if verification.used_at is not None:
            used_on = shanghai_date(verification.used_at).isoformat()
            raise CardUnusable("error.card_used_on", date=used_on)
        raise CardUnusable("error.card_used")
    if verification.status is CardStatus.FROZEN:
        raise CardUnusable("error.card_frozen")
    if verification.status is CardStatus.EXPIRED:
        raise CardUnusable("error.card_expired", expires=verification.expires.isoformat())
    if verification.balance_fen <= 0:
        raise CardUnusable("error.card_empty")
    return card


async def current_pricing(uow: UnitOfWork, deps: SaleDeps) -> PricingPolicy:
    """The rate table in force now."""
    return await pricing_in_force(uow, deps.pricing, deps.clock.now())


async def pricing_in_force(uow: UnitOfWork, default: PricingPolicy, at: datetime) -> PricingPolicy:
    """The rate table in force at a time: the latest imported one whose time has come, else
    the shipped default."""
    table = await uow.rates.in_force(at)
    if table is None:
        return default
    return pricing_from_dict(table.content)


async def lifetime_sold(uow: UnitOfWork, user: User) -> int:
    """What the person (every account under their verified ID) has been paid by us so far."""
    settled = await uow.orders.payouts_since(
        await person_of(uow, user), _EPOCH, [OrderStatus.SETTLED]
    )
    return sum(amount for _, amount in settled)


async def quote_for(
    uow: UnitOfWork, deps: SaleDeps, user: User, card: Card, channel: str
) -> tuple[Quote, Order]:
    """Price a verified card, lock the price for the policy's time, and open an order. A card
    another order owns is refused (CardHeld) before any price is shown."""
    assert card.id is not None and card.balance_fen is not None
    assert card.face_value_fen is not None and card.expires is not None
    await check_not_held(uow, deps, card.number_fp)
    now = deps.clock.now()
    pricing = await current_pricing(uow, deps)
    tier = pricing.tier_for(await lifetime_sold(uow, user)) if pricing.tiers else None
    priced = quote_card(
        pricing,
        card.brand,
        card.face_value_fen,
        card.balance_fen,
        card.expires,
        shanghai_date(now),
        tier=tier,
    )
    return await open_quote(uow, deps, user, card, channel, pricing, priced)


async def open_quote(
    uow: UnitOfWork,
    deps: SaleDeps,
    user: User,
    card: Card,
    channel: str,
    pricing: PricingPolicy,
    priced: PricedCard,
    batch_id: int | None = None,
) -> tuple[Quote, Order]:
    """Store a card's price as a quote locked for the policy's time, and open its order (in a
    batch sale when ``batch_id`` is given)."""
    assert card.id is not None and card.balance_fen is not None
    assert card.face_value_fen is not None and card.expires is not None
    now = deps.clock.now()
    quote = await uow.quotes.add(
        Quote(
            user_id=user.id,
            card_id=card.id,
            brand=card.brand,
            face_value_fen=card.face_value_fen,
            balance_fen=card.balance_fen,
            rate_bp=priced.rate_bp,
            gross_fen=priced.gross_fen,
            fee_fen=priced.fee_fen,
            payout_fen=priced.payout_fen,
            lines=priced.lines,
            created_at=now,
            expires_at=now + timedelta(minutes=pricing.lock_minutes),
            rates_version=pricing.version,
        )
    )
    assert quote.id is not None
    order = await uow.orders.add(
        Order(
            user_id=user.id,
            channel=channel,
            card_id=card.id,
            quote_id=quote.id,
            brand=card.brand,
            card_fp=card.number_fp,
            card_masked=card.number_masked,
            face_value_fen=card.face_value_fen,
            balance_fen=card.balance_fen,
            payout_fen=priced.payout_fen,
            fee_fen=priced.fee_fen,
            status=OrderStatus.QUOTED,
            created_at=now,
            updated_at=now,
            batch_id=batch_id,
        )
    )
    await uow.audit.append(
        now,
        f"user:{user.id}",
        "quote.issued",
        f"order:{order.id}",
        {
            "quote": quote.id,
            "rate_bp": quote.rate_bp,
            "balance_fen": quote.balance_fen,
            "payout_fen": quote.payout_fen,
            "expires_at": quote.expires_at.isoformat(),
            "rates_version": quote.rates_version,
        },
    )
    return quote, order


async def accept_quote(uow: UnitOfWork, deps: SaleDeps, order: Order) -> Order:
    """The user says yes: the price is kept if the lock still holds, else QuoteExpired. This
    is where a card's owner is decided, once: under a lock on the card's fingerprint, the
    first to accept owns it; anyone else's quote for it is cancelled and CardHeld says so (the
    caller keeps the cancellation)."""
    now = deps.clock.now()
    quote = await uow.quotes.get(order.quote_id)
    if not quote.is_locked_at(now):
        await uow.orders.update(transition(order, OrderStatus.EXPIRED, now))
        raise QuoteExpired()
    await uow.orders.lock_card(order.card_fp)
    try:
        await check_not_held(uow, deps, order.card_fp, order.id)
    except CardHeld:
        await uow.orders.update(transition(order, OrderStatus.CANCELLED, now))
        await uow.audit.append(
            now, "sale", "order.card_taken", f"order:{order.id}", {"card": order.card_masked}
        )
        raise
    order = transition(order, OrderStatus.ACCEPTED, now)
    await uow.orders.update(order)
    await uow.audit.append(
        now,
        f"user:{order.user_id}",
        "order.accepted",
        f"order:{order.id}",
        {"quote": quote.id, "payout_fen": order.payout_fen},
    )
    return order


CANCELLABLE = (OrderStatus.QUOTED, OrderStatus.ACCEPTED, OrderStatus.REVIEW, OrderStatus.APPROVED)
# Orders the user is still deciding about: what /cancel may cancel.
OPEN_STATUSES = (OrderStatus.QUOTED, OrderStatus.ACCEPTED)
# Submitted orders waiting on us, card not yet redeemed: withdrawn only on an explicit request.
HELD_STATUSES = (OrderStatus.REVIEW, OrderStatus.APPROVED)


async def cancel_order(uow: UnitOfWork, deps: SaleDeps, order_id: int, actor: str) -> Order:
    """Withdraw an order before its card is redeemed. Once redeemed, the money is the user's:
    a paying order cannot be cancelled, and a failed payout waits for another account."""
    order = await uow.orders.lock(order_id)
    if order.status in (OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.REJECTED):
        return order
    if order.status is OrderStatus.PAYOUT_FAILED:
        raise CannotCancel(
            "sell.cannot_cancel_owed", order=order.number, amount=yuan(order.payout_fen)
        )
    if order.status not in CANCELLABLE:
        raise CannotCancel("sell.cannot_cancel_paying", order=order.number)
    now = deps.clock.now()
    order = transition(order, OrderStatus.CANCELLED, now)
    await uow.orders.update(order)
    await uow.audit.append(now, actor, "order.cancelled", f"order:{order.id}", {})
    return order


async def withdraw_order(uow: UnitOfWork, deps: SaleDeps, user: User, order_id: int) -> Order:
    """The user withdraws their own submitted order held before redemption (under review, or
    approved but not yet redeemed), having confirmed it by number and amount. Anything else —
    decided, redeemed, paying, someone else's — is CannotCancel("withdraw.not_held")."""
    order = await uow.orders.lock(order_id)
    if order.user_id != user.id or order.status not in HELD_STATUSES:
        raise CannotCancel("withdraw.not_held", order=order.number)
    now = deps.clock.now()
    was = order.status
    order = transition(order, OrderStatus.CANCELLED, now)
    await uow.orders.update(order)
    await uow.audit.append(
        now,
        f"user:{user.id}",
        "order.withdrawn",
        f"order:{order.id}",
        {"from": was.value, "payout_fen": order.payout_fen},
    )
    return order


async def held_orders(uow: UnitOfWork, user: User) -> Sequence[Order]:
    """A user's submitted orders still held before redemption (review, approved), oldest
    first: /cancel never touches them; the user may withdraw them explicitly."""
    orders = [o for o in await uow.orders.for_user(user.id, limit=50) if o.status in HELD_STATUSES]
    return sorted(orders, key=lambda o: o.id or 0)


# --------------------------------------------------------------------------------------------
# Identity and payout accounts


async def record_identity_consent(
    uow: UnitOfWork, deps: SaleDeps, user: User, channel: str
) -> None:
    """Record the separate consent to process identity data (PIPL art. 29), before asking."""
    now = deps.clock.now()
    await uow.consents.add(
        Consent(
            user_id=user.id,
            kind=IDENTITY_CONSENT,
            version=IDENTITY_CONSENT_VERSION,
            given_at=now,
            channel=channel,
        )
    )
    await uow.audit.append(
        now,
        f"user:{user.id}",
        "consent.given",
        f"user:{user.id}",
        {"kind": IDENTITY_CONSENT, "version": IDENTITY_CONSENT_VERSION, "channel": channel},
    )


async def has_identity_consent(uow: UnitOfWork, user: User) -> bool:
    """Whether the user consented to identity processing in the current version."""
    return await uow.consents.has(user.id, IDENTITY_CONSENT, IDENTITY_CONSENT_VERSION)


def real_name_of(deps: SaleDeps, user: User) -> str:
    """The person's verified real name, opened (only for the real-name service and payouts)."""
    if user.real_name_enc is None:
        raise PreconditionFailed("no verified real name")
    return deps.vault.decrypt(user.real_name_enc, user_context(user.id, "real_name"))


def holder_name_of(deps: SaleDeps, account: PayoutAccount) -> str:
    """The name a payout account is held in, opened (for the payout provider)."""
    assert account.id is not None
    return deps.vault.decrypt(account.holder_name_enc, holder_context(account.id))


def check_real_name(text: str) -> str:
    """A real name as the user typed it, validated."""
    return validate_real_name(text)


def check_id_number(deps: SaleDeps, text: str) -> str:
    """A resident ID number validated per GB 11643; returns the normalised number."""
    return parse_resident_id(text, shanghai_date(deps.clock.now())).number


def check_phone(text: str) -> str:
    """A mainland mobile number, normalised."""
    return normalize_phone(text)


async def verify_identity(
    uow: UnitOfWork, deps: SaleDeps, user: User, name: str, id_number: str, phone: str
) -> User:
    """Store the person's identity (encrypted) at level 1; consent must have been recorded."""
    if not await has_identity_consent(uow, user):
        raise PreconditionFailed("identity data asked for without consent")
    now = deps.clock.now()
    rid = parse_resident_id(id_number, shanghai_date(now))
    phone = normalize_phone(phone)
    name = validate_real_name(name)
    user = replace(
        user,
        real_name_enc=deps.vault.encrypt(name, user_context(user.id, "real_name")),
        real_name_masked=masking.mask_name(name),
        id_number_enc=deps.vault.encrypt(rid.number, user_context(user.id, "id_number")),
        id_number_fp=deps.vault.fingerprint("id_number", rid.number),
        id_number_masked=masking.mask_id_number(rid.number),
        phone_enc=deps.vault.encrypt(phone, user_context(user.id, "phone")),
        phone_masked=masking.mask_phone(phone),
        verified_at=now,
        kyc_level=max(user.kyc_level, 1),
    )
    await uow.users.update(user)
    await uow.audit.append(
        now,
        f"user:{user.id}",
        "identity.verified",
        f"user:{user.id}",
        {"level": 1, "id": user.id_number_masked, "phone": user.phone_masked},
    )
    return user


def normalize_account(method: PayoutMethod, text: str) -> tuple[str, bool]:
    """A payout account normalised for its method, and whether it passed every check
    (a bank card failing Luhn is only a warning: some real Chinese cards do)."""
    if method is PayoutMethod.BANK:
        return normalize_bank_card(text)
    if method is PayoutMethod.ALIPAY:
        return normalize_alipay_account(text), True
    return normalize_wechat_account(text), True


async def add_payout_account(
    uow: UnitOfWork, deps: SaleDeps, user: User, method: PayoutMethod, account: str
) -> PayoutAccount:
    """Remember a payout account in the verified person's name (reused if already known)."""
    if not user.is_verified or not user.real_name_enc:
        raise PreconditionFailed("a payout account needs a verified identity")
    name = real_name_of(deps, user)
    now = deps.clock.now()
    fp = deps.vault.fingerprint(f"payout.{method.value}", account)
    existing = await uow.payout_accounts.find(user.id, method, fp)
    if existing is not None:
        return existing
    row = await uow.payout_accounts.add(
        PayoutAccount(
            user_id=user.id,
            method=method,
            account_enc=b"",
            account_fp=fp,
            account_masked=masking.mask_account(method.value, account),
            holder_name_enc=b"",
            holder_name_masked=masking.mask_name(name),
            created_at=now,
        )
    )
    assert row.id is not None
    row = replace(
        row,
        account_enc=deps.vault.encrypt(account, account_context(row.id)),
        holder_name_enc=deps.vault.encrypt(name, holder_context(row.id)),
    )
    await uow.payout_accounts.update(row)
    await uow.audit.append(
        now,
        f"user:{user.id}",
        "payout_account.added",
        f"payout_account:{row.id}",
        {"method": method.value, "account": row.account_masked},
    )
    return row


async def person_of(uow: UnitOfWork, user: User) -> list[int]:
    """Every account of the person: all verified with the same resident ID (every channel)."""
    if not user.id_number_fp:
        return [user.id]
    return sorted({user.id, *await uow.users.with_id_fp(user.id_number_fp)})


async def sold_today(uow: UnitOfWork, deps: SaleDeps, user: User) -> int:
    """What the person has sold today (Asia/Shanghai), in orders that count."""
    start, _ = shanghai_day_bounds(deps.clock.now())
    amounts = await uow.orders.payouts_since(
        await person_of(uow, user), start, DAILY_AMOUNT_STATUSES
    )
    return sum(amount for _, amount in amounts)


async def level_2_needed(uow: UnitOfWork, deps: SaleDeps, user: User, order: Order) -> int | None:
    """The level-1 daily limit when this order would take the person past it without a
    level-2 identity; None when the order may go on."""
    return await level_2_needed_for(uow, deps, user, order.payout_fen)


async def level_2_needed_for(
    uow: UnitOfWork, deps: SaleDeps, user: User, payout_fen: int
) -> int | None:
    """The level-1 daily limit when selling ``payout_fen`` more today (one card, or a batch's
    total) would take the person past it without a level-2 identity; None when it may go on."""
    limit = deps.risk.l1_daily_fen
    if limit is None or user.kyc_level >= 2:
        return None
    if await sold_today(uow, deps, user) + payout_fen <= limit:
        return None
    return limit


async def verify_level_2(
    uow: UnitOfWork, deps: SaleDeps, user: User, card_text: str
) -> tuple[User, PayoutAccount]:
    """Check a bank card against the verified name, ID and phone (four elements) with the
    real-name service. Matched: the person is level 2 and the card is saved as a payout
    account in their name. Not matched: KycMismatch with the reason (the attempt is audited;
    the caller keeps it). KycUnavailable when the service cannot answer."""
    if not user.is_verified or not user.real_name_enc or not user.id_number_enc:
        raise PreconditionFailed("level 2 needs a level-1 identity first")
    if deps.kyc is None:
        raise KycUnavailable("no real-name service configured")
    card, _ = normalize_bank_card(card_text)
    id_number = deps.vault.decrypt(user.id_number_enc, user_context(user.id, "id_number"))
    phone = (
        deps.vault.decrypt(user.phone_enc, user_context(user.id, "phone"))
        if user.phone_enc
        else ""
    )
    check = await deps.kyc.verify_bank_card(real_name_of(deps, user), id_number, phone, card)
    now = deps.clock.now()
    await uow.audit.append(
        now,
        f"user:{user.id}",
        "identity.level2_checked",
        f"user:{user.id}",
        {
            "matched": check.matched,
            "reason": check.reason,
            "card": masking.mask_account(PayoutMethod.BANK.value, card),
        },
    )
    if not check.matched:
        raise KycMismatch(f"kyc.{check.reason or 'name_mismatch'}")
    user = replace(user, kyc_level=2)
    await uow.users.update(user)
    account = await add_payout_account(uow, deps, user, PayoutMethod.BANK, card)
    return user, account


# --------------------------------------------------------------------------------------------
# Risk and submission


async def risk_facts(
    uow: UnitOfWork,
    deps: SaleDeps,
    order: Order,
    account: PayoutAccount,
    sale_payout_fen: int | None = None,
) -> RiskFacts:
    """Everything the risk rules look at for one order. The person is everyone verified with
    the same resident ID, on every channel. ``sale_payout_fen``: the whole sale's payout when
    the order is one card of a batch (gathered before any card of it is decided, so the
    batch is not counted twice in the day)."""
    now = deps.clock.now()
    policy = deps.risk
    user = await uow.users.get(order.user_id)
    person = await person_of(uow, user)
    holders = await uow.orders.with_card_fp(order.card_fp, CARD_HOLDING_STATUSES)
    others = [o for o in holders if o.id != order.id]
    window_start = shanghai_day_bounds(now)[0] - timedelta(days=policy.history_days - 1)
    totals = daily_totals(
        await uow.orders.payouts_since(person, window_start, DAILY_AMOUNT_STATUSES)
    )
    recent = 0
    if policy.velocity is not None:
        since = now - timedelta(minutes=policy.velocity.window_minutes)
        recent = await uow.orders.count_since(person, since)
        if order.batch_id is not None:
            # A batch is one sale, declared whole up front: its cards count as one towards
            # velocity, which is about card after card being tried.
            batch = await uow.orders.for_batch(order.batch_id)
            recent -= max(sum(1 for o in batch if o.created_at >= since) - 1, 0)
    sharing = {fp for uid, fp in await uow.payout_accounts.holders(account.account_fp)}
    sharing.discard(user.id_number_fp)
    accounts = [await uow.users.get(uid) for uid in person]
    # The same ID under another name is someone else's ID (the same person on two apps has
    # the same name on both).
    name = real_name_of(deps, user) if user.real_name_enc else None
    strangers = [
        a
        for a in accounts
        if a.id != user.id and (real_name_of(deps, a) if a.real_name_enc else None) != name
    ]
    guessed = [
        actor
        for actor, _ in await wrong_secrets(uow, deps, order.card_fp)
        if actor not in {f"user:{uid}" for uid in person}
    ]
    return RiskFacts(
        user_id=order.user_id,
        payout_fen=order.payout_fen if sale_payout_fen is None else sale_payout_fen,
        card_fp=order.card_fp,
        same_card_orders=len(others),
        same_card_other_users=len({o.user_id for o in others if o.user_id not in person}),
        day_total_fen=totals.get(shanghai_date(now), 0),
        daily_totals=totals,
        recent_cards=recent,
        shared_id_users=len(strangers),
        shared_account_people=len(sharing),
        blacklisted=await uow.risk_list.hits(
            {
                "id_number": user.id_number_fp,
                "payout_account": account.account_fp,
                "card": order.card_fp,
            }
        ),
        account_age=now - min(a.created_at for a in accounts),
        card_wrong_secrets_by_others=len(guessed),
    )


async def submit_order(
    uow: UnitOfWork, deps: SaleDeps, order: Order, account: PayoutAccount
) -> tuple[Order, RiskDecision]:
    """Attach the payout account and run the risk rules: approve, hold for review, or reject."""
    facts = await risk_facts(uow, deps, order, account)
    return await decide_order(uow, deps, order, account, facts)


async def decide_order(
    uow: UnitOfWork, deps: SaleDeps, order: Order, account: PayoutAccount, facts: RiskFacts
) -> tuple[Order, RiskDecision]:
    """Apply the risk rules to gathered facts and move the order on, with the account."""
    now = deps.clock.now()
    assert order.id is not None
    decision = assess(facts, deps.risk, shanghai_date(now))
    target = {
        RiskOutcome.APPROVE: OrderStatus.APPROVED,
        RiskOutcome.REVIEW: OrderStatus.REVIEW,
        RiskOutcome.REJECT: OrderStatus.REJECTED,
    }[decision.outcome]
    order = replace(
        transition(order, target, now),
        payout_account_id=account.id,
        risk_outcome=decision.outcome.value,
        risk_reasons=decision.reasons,
        risk_version=decision.version,
    )
    await uow.orders.update(order)
    await uow.payout_accounts.update(replace(account, last_used_at=now))
    await uow.audit.append(
        now,
        "risk",
        "risk.assessed",
        f"order:{order.id}",
        {
            "outcome": decision.outcome.value,
            "reasons": list(decision.reasons),
            "version": decision.version,
            "payout_fen": order.payout_fen,
        },
    )
    return order, decision


# --------------------------------------------------------------------------------------------
# Settlement


def payout_reference(order_id: int, attempt: int) -> str:
    """The provider reference of an order's n-th payout: digits and letters only, as providers
    require; a new one is minted only after a provider-confirmed failure."""
    return f"CBP{order_id:010d}N{attempt:02d}"


async def _redeem_and_reserve(
    uow_factory: UnitOfWorkFactory, deps: SaleDeps, order_id: int, live: bool = False
) -> None:
    """APPROVED → REDEEMED → PAYING: take the card's balance at the issuer, post the purchase,
    store the payout with its reference and reserve the money, in one transaction that holds
    the order's lock (so a cancellation cannot slip in between). An issuer that refuses the
    card cancels the order; an issuer that is down leaves it approved, to be tried again."""
    async with uow_factory() as uow:
        order = await uow.orders.lock(order_id)
        if order.status is not OrderStatus.APPROVED:
            return
        card = await uow.cards.get(order.card_id)
        number, secret = _card_plaintext(deps, card)
        try:
            # Idempotent per reference: a crash after this call and before commit is safe.
            await deps.issuer.redeem(
                card.brand, number, secret, order.balance_fen, f"CBR{order_id:010d}"
            )
        except IssuerUnavailable:
            log.warning("issuer unavailable while redeeming order %s; will retry", order_id)
            return
        except (CardUnusable, CardNotFound, WrongSecret) as refusal:
            now = deps.clock.now()
            cancelled = transition(order, OrderStatus.CANCELLED, now)
            await uow.orders.update(cancelled)
            await uow.audit.append(
                now,
                "settlement",
                "card.redeem_refused",
                f"order:{order_id}",
                {"reason": refusal.key, "card": order.card_masked},
            )
            await _tell(uow, deps, cancelled, live)
            await uow.commit()
            return
        now = deps.clock.now()
        await uow.ledger.post(
            ledger.purchase(order_id, order.user_id, order.balance_fen, order.payout_fen, now)
        )
        order = transition(order, OrderStatus.REDEEMED, now)
        await uow.audit.append(
            now,
            "settlement",
            "card.redeemed",
            f"order:{order_id}",
            {"card": order.card_masked, "balance_fen": order.balance_fen},
        )
        order = await _start_payout(uow, deps, order, attempt=1)
        await uow.commit()


async def _start_payout(uow: UnitOfWork, deps: SaleDeps, order: Order, attempt: int) -> Order:
    assert order.id is not None and order.payout_account_id is not None
    now = deps.clock.now()
    account = await uow.payout_accounts.get(order.payout_account_id)
    payable = ledger.user_payable(order.user_id)
    balance_after = await uow.ledger.balance(payable) + order.payout_fen
    ledger.check_no_overdraft(payable, balance_after)
    payout = await uow.payouts.add(
        Payout(
            order_id=order.id,
            reference=payout_reference(order.id, attempt),
            method=account.method,
            payout_account_id=account.id or 0,
            amount_fen=order.payout_fen,
            state=PayoutState.PENDING,
            created_at=now,
            updated_at=now,
        )
    )
    await uow.ledger.post(
        ledger.payout_reserve(order.id, order.user_id, account.method, order.payout_fen, now)
    )
    order = transition(order, OrderStatus.PAYING, now)
    await uow.orders.update(order)
    await uow.audit.append(
        now,
        "settlement",
        "payout.requested",
        f"order:{order.id}",
        {
            "reference": payout.reference,
            "method": account.method.value,
            "account": account.account_masked,
            "amount_fen": payout.amount_fen,
        },
    )
    return order


async def _send_payout(
    uow_factory: UnitOfWorkFactory, deps: SaleDeps, order_id: int, live: bool = False
) -> None:
    """Call the provider for an unfinished payout, under its stored reference, and record the
    outcome. PENDING and unknown-to-provider payouts are (re)sent unchanged; the others queried."""
    async with uow_factory() as uow:
        order = await uow.orders.get(order_id)
        payout = await uow.payouts.for_order(order_id)
        if order.status is not OrderStatus.PAYING or payout is None:
            return
        if payout.state in (PayoutState.SUCCEEDED, PayoutState.FAILED):
            return
        if payout_waits(deps, payout):
            return  # T+1: the next batch sends it
        account = await uow.payout_accounts.get(payout.payout_account_id)
        request = PayoutRequest(
            reference=payout.reference,
            method=payout.method,
            account=deps.vault.decrypt(
                account.account_enc, account_context(payout.payout_account_id)
            ),
            holder_name=holder_name_of(deps, account),
            amount_fen=payout.amount_fen,
        )
        # Leave the transaction before talking to the provider.
        await uow.rollback()
    try:
        result: PayoutResult | None = None
        if payout.state in (PayoutState.UNKNOWN, PayoutState.PROCESSING):
            result = await deps.gateway.query(payout.reference)
        if result is None or result.state is PayoutState.UNKNOWN:
            # Never sent, or the provider has no record: resend the SAME request.
            result = await deps.gateway.transfer(request)
    except PayoutOutcomeUnknown:
        result = None
    await _record_payout_outcome(uow_factory, deps, order_id, result, live)


def payout_waits(deps: SaleDeps, payout: Payout) -> datetime | None:
    """When a payout never sent yet waits for a later batch: the time it goes; else None."""
    if payout.state is not PayoutState.PENDING or payout.attempts:
        return None
    release = deps.settlement.release_at(payout.created_at)
    return release if release is not None and deps.clock.now() < release else None


# A final provider answer: the ledger transaction it posts, the order's new status, the audit
# action. Success posts the reserved money out; a confirmed failure voids the reserve.
_FINAL_OUTCOMES = {
    PayoutState.SUCCEEDED: (ledger.payout_post, OrderStatus.SETTLED, "payout.succeeded"),
    PayoutState.FAILED: (ledger.payout_void, OrderStatus.PAYOUT_FAILED, "payout.failed"),
}


async def _record_payout_outcome(
    uow_factory: UnitOfWorkFactory,
    deps: SaleDeps,
    order_id: int,
    result: PayoutResult | None,
    live: bool = False,
) -> None:
    async with uow_factory() as uow:
        # The order's lock serialises outcome recording across processes: the first records,
        # the others see a finished payout and stop.
        order = await uow.orders.lock(order_id)
        payout = await uow.payouts.for_order(order_id)
        if order.status is not OrderStatus.PAYING or payout is None:
            return
        if payout.state in (PayoutState.SUCCEEDED, PayoutState.FAILED):
            return
        now = deps.clock.now()
        state = PayoutState.UNKNOWN if result is None else result.state
        payout = replace(
            payout,
            state=state,
            attempts=payout.attempts + 1,
            updated_at=now,
            provider_txn_id=(result.provider_txn_id if result else None) or payout.provider_txn_id,
            failure_reason=result.failure_reason if result else None,
        )
        await uow.payouts.update(payout)
        final = _FINAL_OUTCOMES.get(state)
        if final is not None:
            build_txn, order_status, action = final
            await uow.ledger.post(
                build_txn(order_id, order.user_id, payout.method, payout.amount_fen, now)
            )
            finished = transition(order, order_status, now)
            await uow.orders.update(finished)
            await uow.audit.append(
                now,
                "settlement",
                action,
                f"order:{order_id}",
                {
                    "reference": payout.reference,
                    "provider_txn_id": payout.provider_txn_id,
                    "reason": payout.failure_reason,
                    "amount_fen": payout.amount_fen,
                },
            )
            await _tell(uow, deps, finished, live)
        await uow.commit()


async def _tell(uow: UnitOfWork, deps: SaleDeps, order: Order, live: bool) -> None:
    """The person hears about the outcome in the transaction that made it."""
    if deps.listener is not None:
        await deps.listener.order_changed(uow, deps, order, live)


# How long a settlement holds its order: far longer than a provider call may take (the
# gateways time out well within it); after a crash, another process resumes once it has passed.
SETTLE_LEASE = timedelta(minutes=5)


async def _claim(
    uow_factory: UnitOfWorkFactory, deps: SaleDeps, order_id: int, owner: str
) -> bool:
    async with uow_factory() as uow:
        now = deps.clock.now()
        taken = await uow.order_claims.claim(order_id, owner, now, now + SETTLE_LEASE)
        await uow.commit()
    return taken


async def _release(uow_factory: UnitOfWorkFactory, order_id: int, owner: str) -> None:
    try:
        async with uow_factory() as uow:
            await uow.order_claims.release(order_id, owner)
            await uow.commit()
    except Exception as exc:  # the lease runs out on its own
        log.warning("could not release order %s: %s", order_id, type(exc).__name__)


async def settle(
    uow_factory: UnitOfWorkFactory, deps: SaleDeps, order_id: int, live: bool = False
) -> Order:
    """Drive an approved order as far as it can go now: redeem, reserve, pay. Safe to repeat:
    every step is idempotent and resumes from what is stored. The order is claimed first: while
    someone else settles it (a live conversation, another process), this returns it as it
    stands and asks the provider nothing. ``live``: called from the person's own conversation
    turn (see :class:`SettlementListener`)."""
    owner = uuid4().hex
    if await _claim(uow_factory, deps, order_id, owner):
        try:
            await _redeem_and_reserve(uow_factory, deps, order_id, live)
            await _send_payout(uow_factory, deps, order_id, live)
        finally:
            await _release(uow_factory, order_id, owner)
    else:
        log.info("order %s is being settled elsewhere; left alone", order_id)
    async with uow_factory() as uow:
        return await uow.orders.get(order_id)


async def retry_failed_payout(
    uow_factory: UnitOfWorkFactory,
    deps: SaleDeps,
    order_id: int,
    account: PayoutAccount,
    live: bool = False,
) -> Order:
    """After a provider-confirmed failure, pay again to another account under a NEW reference."""
    owner = uuid4().hex
    if not await _claim(uow_factory, deps, order_id, owner):
        async with uow_factory() as uow:
            return await uow.orders.get(order_id)
    try:
        async with uow_factory() as uow:
            order = await uow.orders.lock(order_id)
            if order.status is not OrderStatus.PAYOUT_FAILED:
                return order
            previous = await uow.payouts.for_order(order_id)
            attempt = int(previous.reference.rsplit("N", 1)[1]) + 1 if previous else 1
            order = replace(order, payout_account_id=account.id)
            await _start_payout(uow, deps, order, attempt)
            await uow.commit()
        await _send_payout(uow_factory, deps, order_id, live)
    finally:
        await _release(uow_factory, order_id, owner)
    async with uow_factory() as uow:
        return await uow.orders.get(order_id)


async def resume_unfinished(uow_factory: UnitOfWorkFactory, deps: SaleDeps) -> list[Order]:
    """Finish what a crash or an unsure provider left: approved orders not yet redeemed, and
    payouts pending, unknown or processing — those nobody is settling now (see :func:`settle`).
    Returns orders whose status changed (the person was told in the same transaction)."""
    async with uow_factory() as uow:
        waiting = list(await uow.orders.with_status([OrderStatus.APPROVED, OrderStatus.PAYING]))
    changed: list[Order] = []
    for order in waiting:
        assert order.id is not None
        try:
            after = await settle(uow_factory, deps, order.id)
        except CardbotError as exc:
            # One stuck order must not stop the others; it is tried again on the next pass.
            log.warning("could not finish order %s yet: %s", order.id, type(exc).__name__)
            continue
        if after.status is not order.status:
            changed.append(after)
    return changed


async def receipt_for(uow: UnitOfWork, order_id: int) -> Receipt:
    """The receipt of a settled order, with the hash of its settlement audit event."""
    order = await uow.orders.get(order_id)
    payout = await uow.payouts.for_order(order_id)
    if order.status is not OrderStatus.SETTLED or payout is None:
        raise ValueError(f"order {order_id} is not settled")
    account = await uow.payout_accounts.get(payout.payout_account_id)
    history = await uow.audit.for_subject(f"order:{order_id}")
    events = [e for e in history if e.action == "payout.succeeded"]
    return Receipt(
        order_number=order.number,
        brand=order.brand,
        card_masked=order.card_masked,
        face_value_fen=order.face_value_fen,
        balance_fen=order.balance_fen,
        fee_fen=order.fee_fen,
        payout_fen=payout.amount_fen,
        method=payout.method,
        account_masked=account.account_masked,
        holder_masked=account.holder_name_masked,
        reference=payout.reference,
        provider_txn_id=payout.provider_txn_id,
        paid_at=order.settled_at or payout.updated_at,
        audit_hash=events[-1].hash if events else "",
    )


async def open_orders(uow: UnitOfWork, user: User) -> Sequence[Order]:
    """A user's orders that still await the user (quoted or accepted)."""
    return [
        o
        for o in await uow.orders.for_user(user.id, limit=20)
        if o.status in (OrderStatus.QUOTED, OrderStatus.ACCEPTED)
    ]


async def owed_orders(uow: UnitOfWork, user: User) -> Sequence[Order]:
    """A user's redeemed orders whose payout failed: money we owe, waiting for an account."""
    return [
        o
        for o in await uow.orders.for_user(user.id, limit=50)
        if o.status is OrderStatus.PAYOUT_FAILED
    ]
