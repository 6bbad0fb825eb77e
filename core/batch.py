"""A batch of cards typed or pasted as text: one card per line, ``number secret`` (or
``number,secret`` — CSV pasted from a spreadsheet), up to :data:`MAX_CARDS`. Each line is
checked on its own: the good ones go on, every bad one is reported with its line number and a
reason the user can act on, so one typo never sinks the other 99 cards.

The parsing and :func:`price_batch` are pure: the catalog decides what a number and a secret
look like, the rate table what each card is worth. The batch sale's use cases below them
(capture, verify and quote every card, accept, submit, the receipt) work inside a unit of work
the caller owns, like those of :mod:`core.sale`, and reuse them card by card: each card is its
own order, with its own risk decision, ledger entries and payout.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime

from core import sale
from core.catalog import Brand, Catalog, normalize_card_number
from core.errors import (
    AccountSuspended,
    CardbotError,
    CardHeld,
    CardNotFound,
    CardNotRecognised,
    CardUnusable,
    IssuerUnavailable,
    QuoteExpired,
    UserError,
    WrongSecret,
)
from core.model import (
    Batch,
    Card,
    Order,
    OrderStatus,
    PayoutAccount,
    PayoutMethod,
    QuoteLine,
    User,
)
from core.money import BP_SCALE, apply_rate
from core.orders import transition
from core.ports import UnitOfWork, UnitOfWorkFactory
from core.pricing import PricedCard, PricingPolicy, Tier, quote_card
from core.risk import RiskDecision, shanghai_date

log = logging.getLogger(__name__)

MAX_CARDS = 100
# Fields are split at dashes too: a number typed "2326-0817-…-135790" is still number + secret.
_SPLIT = re.compile(r"[\s,;，；\t\-‐‑‒–—―－]+")
_HEADER_WORDS = {"number", "card", "卡号", "secret", "卡密", "password", "pin"}


@dataclass(frozen=True)
class BatchLine:
    """A card from line ``line``: its brand, number and (normalised) secret."""

    line: int
    brand: Brand
    number: str
    secret: str | None


@dataclass(frozen=True)
class BatchProblem:
    """Why line ``line`` was not taken: a message key and its parameters."""

    line: int
    key: str
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ParsedBatch:
    """Every non-blank line's verdict: a card, a problem, or (line 1 only) a header row."""

    cards: tuple[BatchLine, ...]
    problems: tuple[BatchProblem, ...]
    header: int | None = None


def looks_like_a_batch(text: str) -> bool:
    """Several non-empty lines: the user is pasting a list, not typing one card."""
    return sum(1 for line in text.splitlines() if line.strip()) >= 2


def parse_batch(text: str, catalog: Catalog) -> ParsedBatch:
    """Check every line; at most MAX_CARDS cards are taken, the rest reported."""
    cards: list[BatchLine] = []
    problems: list[BatchProblem] = []
    seen: dict[str, int] = {}
    header: int | None = None
    for number_of_line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue  # a blank line says nothing; every other line gets a verdict
        # A line of nothing but quotes and separators is still a line the user sent: reported.
        fields = _fields(raw)
        if not fields:
            problems.append(BatchProblem(number_of_line, "batch.not_a_card"))
            continue
        if number_of_line == 1 and fields[0].lower() in _HEADER_WORDS:
            header = number_of_line  # a spreadsheet's header row
            continue
        if len(cards) >= MAX_CARDS:
            problems.append(BatchProblem(number_of_line, "batch.too_many", (("max", "100"),)))
            continue
        problem, card = _one_line(number_of_line, fields, catalog)
        if problem is not None:
            problems.append(problem)
            continue
        assert card is not None
        if card.number in seen:
            problems.append(
                BatchProblem(
                    number_of_line, "batch.duplicate", (("first", str(seen[card.number])),)
                )
            )
            continue
        seen[card.number] = number_of_line
        cards.append(card)
    return ParsedBatch(tuple(cards), tuple(problems), header)


def _fields(raw: str) -> list[str]:
    # Spreadsheets quote their cells ("2326…","135790"): the quotes are not part of a card.
    return [f for f in (f.strip("\"'") for f in _SPLIT.split(raw.strip())) if f]


def _leading_card(fields: Sequence[str], catalog: Catalog) -> tuple[Brand, str, int] | None:
    """The longest run of leading fields (normalised) that makes a card number (a number may
    have been typed in groups, "2326 0817 4402 9136"): its brand, the number, how many fields."""
    lengths = catalog.card_lengths()
    longest = max(lengths)
    # Only a run of a card number's length can be one, and only if it starts with the prefix
    # of a brand of that length (cheap tests that spare the check digits): those cuts, longest
    # first.
    size, cuts = 0, []
    for cut, field in enumerate(fields, start=1):
        size += len(field)
        if size > longest:
            break
        if size in lengths:
            cuts.append((cut, size))
    head = "".join(fields[: cuts[-1][0]]) if cuts else ""
    cuts = [(cut, size) for cut, size in cuts if head.startswith(catalog.prefixes(size))]
    for cut, _ in reversed(cuts):
        number = "".join(fields[:cut])
        try:
            return catalog.match(number), number, cut
        except CardNotRecognised:
            continue
    return None


def holds_card_line(text: str, catalog: Catalog) -> bool:
    """Whether some line of ``text`` is a card number followed by its secret — or by what may
    be one: a field with a digit, or one in the brand's secret shape. Such a text is never kept
    or shown to staff, at whatever step it comes, and the chat is asked to delete it."""
    longest = max(catalog.card_lengths())  # a number has at most this many fields
    for raw in text.splitlines():
        # "/2326… 135790" is a mistyped command, and still a card with its secret.
        fields = [normalize_card_number(f.lstrip("/")) for f in _fields(raw)]
        for start, field in enumerate(fields):
            if not field[:1].isdecimal():
                continue
            found = _leading_card(fields[start : start + longest], catalog)
            if found is None:
                continue
            brand, _, cut = found
            after = fields[start + cut : start + cut + 1]
            if after and _may_be_a_secret(brand, after[0], catalog):
                return True
    return False


def _may_be_a_secret(brand: Brand, field: str, catalog: Catalog) -> bool:
    if any(c.isdecimal() for c in field):
        return True
    if not brand.has_secret:
        return False
    try:
        catalog.validate_secret(brand, field)
    except WrongSecret:
        return False
    return True


def _one_line(
    line: int, fields: list[str], catalog: Catalog
) -> tuple[BatchProblem | None, BatchLine | None]:
    # The longest run of leading fields that makes a card number; the rest is the secret.
    found = _leading_card([normalize_card_number(f) for f in fields], catalog)
    if found is not None:
        brand, number, cut = found
        rest = "".join(fields[cut:])
        if not brand.has_secret:
            if rest:
                return BatchProblem(line, "batch.no_secret_expected"), None
            return None, BatchLine(line, brand, number, None)
        if not rest:
            return BatchProblem(line, "batch.secret_missing"), None
        try:
            secret = catalog.validate_secret(brand, rest)
        except WrongSecret:
            return BatchProblem(line, "batch.secret_format"), None
        return None, BatchLine(line, brand, number, secret)
    return BatchProblem(line, "batch.not_a_card"), None


# --------------------------------------------------------------------------------------------
# The combined quote (pure)


@dataclass(frozen=True)
class BatchCardFacts:
    """What pricing needs of one verified card of a batch; ``key`` identifies it (a card id)."""

    key: int
    brand: str
    face_value_fen: int
    balance_fen: int
    expires: date


@dataclass(frozen=True)
class PricedBatchCard:
    key: int
    priced: PricedCard


@dataclass(frozen=True)
class BatchPricing:
    """Each card's price, the cards that cannot be bought (and why), and the totals. The batch
    bonus (``bonus_bp``, 0 when the batch is too small) is in every card's rate; ``bonus_fen`` is
    what it adds to the gross over all cards."""

    cards: tuple[PricedBatchCard, ...]
    refused: tuple[tuple[int, CardUnusable], ...]
    cards_in_order: int
    bonus_bp: int
    bonus_fen: int
    balance_fen: int
    gross_fen: int
    fee_fen: int
    payout_fen: int


_RATE_PARTS_WITHOUT_BATCH = ("quote.base_rate", "quote.expiry_adjustment", "quote.tier_bonus")


def bonus_fen_of(lines: Sequence[QuoteLine], balance_fen: int, gross_fen: int) -> int:
    """What the batch bonus added to one card's gross (0 when its quote has no bonus)."""
    if not any(line.key == "quote.batch_bonus" for line in lines):
        return 0
    rate = sum(line.rate_bp or 0 for line in lines if line.key in _RATE_PARTS_WITHOUT_BATCH)
    return gross_fen - apply_rate(balance_fen, min(max(rate, 0), BP_SCALE))


def price_batch(
    policy: PricingPolicy,
    cards: Sequence[BatchCardFacts],
    today: date,
    *,
    tier: Tier | None = None,
) -> BatchPricing:
    """Price every card as one order of ``len(cards)`` cards. A card worth less than the minimum
    payout is refused; when that takes the batch under ``batch_min_cards`` the others are priced
    again without the bonus (which can refuse more): the cards bought are those that stay."""
    taken = list(cards)
    while True:
        priced: list[PricedBatchCard] = []
        refused: list[tuple[int, CardUnusable]] = []
        for card in taken:
            try:
                priced.append(
                    PricedBatchCard(
                        card.key,
                        quote_card(
                            policy,
                            card.brand,
                            card.face_value_fen,
                            card.balance_fen,
                            card.expires,
                            today,
                            cards_in_order=len(taken),
                            tier=tier,
                        ),
                    )
                )
            except CardUnusable as refusal:
                refused.append((card.key, refusal))
        if not refused or not priced:
            break
        kept = {p.key for p in priced}
        taken = [c for c in taken if c.key in kept]
    refused_keys = {c.key for c in cards} - {p.key for p in priced}
    all_refused: list[tuple[int, CardUnusable]] = []
    for card in cards:
        if card.key in refused_keys:
            try:
                quote_card(
                    policy,
                    card.brand,
                    card.face_value_fen,
                    card.balance_fen,
                    card.expires,
                    today,
                    cards_in_order=len(priced),
                    tier=tier,
                )
            except CardUnusable as refusal:
                all_refused.append((card.key, refusal))
    balance = {c.key: c.balance_fen for c in cards}
    count = len(priced)
    bonus = policy.batch_bonus_bp if count >= policy.batch_min_cards else 0
    return BatchPricing(
        cards=tuple(priced),
        refused=tuple(all_refused),
        cards_in_order=count,
        bonus_bp=bonus,
        bonus_fen=sum(
            bonus_fen_of(p.priced.lines, balance[p.key], p.priced.gross_fen) for p in priced
        ),
        balance_fen=sum(balance[p.key] for p in priced),
        gross_fen=sum(p.priced.gross_fen for p in priced),
        fee_fen=sum(p.priced.fee_fen for p in priced),
        payout_fen=sum(p.priced.payout_fen for p in priced),
    )


# --------------------------------------------------------------------------------------------
# The batch sale (use cases; the caller owns the unit of work)

# Orders of a batch that the user is still deciding about.
_OPEN = (OrderStatus.QUOTED, OrderStatus.ACCEPTED)


@dataclass(frozen=True)
class CardProblem:
    """Why one card of a batch cannot be bought: a message key and its parameters."""

    card_masked: str
    key: str
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BatchQuote:
    """The outcome of verifying and pricing a batch: its open orders, the pricing, and every
    card that was refused and why."""

    batch: Batch
    orders: tuple[Order, ...]
    pricing: BatchPricing
    problems: tuple[CardProblem, ...]
    expires_at: datetime | None
    lock_minutes: int


async def capture_listed_card(
    uow: UnitOfWork, deps: sale.SaleDeps, user: User, line: BatchLine
) -> Card:
    """Store a card from a list (number and secret encrypted, as for a single card)."""
    card = await sale.capture_card(uow, deps, user, line.number)
    if line.secret is not None:
        card = await sale.attach_secret(uow, deps, card, line.secret)
    return card


def card_problem(card_masked: str, refusal: UserError) -> CardProblem:
    """A refusal of one card of a batch, as the user is told it (a wrong secret has no
    tries left to count here: the other cards go on)."""
    if isinstance(refusal, WrongSecret):
        return CardProblem(card_masked, "batch.card_wrong_secret")
    params = tuple((k, str(v)) for k, v in refusal.params.items())
    return CardProblem(card_masked, refusal.key, params)


def _problem(card: Card, refusal: UserError) -> CardProblem:
    return card_problem(card.number_masked, refusal)


async def quote_batch(
    uow: UnitOfWork,
    deps: sale.SaleDeps,
    user: User,
    card_ids: Sequence[int],
    channel: str,
    source: str,
    batch: Batch | None = None,
) -> BatchQuote:
    """Verify every card with the issuer and price those that can be bought together; each gets
    its own locked quote and order in the batch (opened now when ``batch`` is None). A card
    that fails (wrong secret, used, frozen, expired, unknown, empty, issuer down) is reported
    and the others go on. AccountSuspended (a streak of failures) stops the whole batch."""
    sale.check_not_suspended(deps, user)
    now = deps.clock.now()
    problems: list[CardProblem] = []
    verified: list[Card] = []
    for card_id in card_ids:
        card = await uow.cards.get(card_id)
        try:
            card = await sale.verify_card(uow, deps, card)
            await sale.check_not_held(uow, deps, card.number_fp)
            verified.append(card)
        except AccountSuspended:
            raise
        except (WrongSecret, CardUnusable, CardNotFound) as refusal:
            problems.append(_problem(card, refusal))
        except IssuerUnavailable:
            problems.append(CardProblem(card.number_masked, "batch.issuer_unavailable"))
    pricing = await sale.current_pricing(uow, deps)
    tier = pricing.tier_for(await sale.lifetime_sold(uow, user)) if pricing.tiers else None
    by_id = {c.id: c for c in verified}
    facts = []
    for card in verified:
        assert card.id is not None and card.balance_fen is not None
        assert card.face_value_fen is not None and card.expires is not None
        facts.append(
            BatchCardFacts(
                card.id, card.brand, card.face_value_fen, card.balance_fen, card.expires
            )
        )
    priced = price_batch(pricing, facts, shanghai_date(now), tier=tier)
    for key, unusable in priced.refused:
        problems.append(_problem(by_id[key], unusable))
    if batch is None:
        batch = await uow.batches.add(
            Batch(user_id=user.id, channel=channel, source=source, created_at=now)
        )
        await uow.audit.append(
            now,
            f"user:{user.id}",
            "batch.opened",
            f"batch:{batch.id}",
            {"source": source, "cards": len(card_ids)},
        )
    orders = []
    for entry in priced.cards:
        _, order = await sale.open_quote(
            uow, deps, user, by_id[entry.key], channel, pricing, entry.priced, batch.id
        )
        orders.append(order)
    expires_at = (await uow.quotes.get(orders[0].quote_id)).expires_at if orders else None
    return BatchQuote(
        batch, tuple(orders), priced, tuple(problems), expires_at, pricing.lock_minutes
    )


async def open_orders(uow: UnitOfWork, batch_id: int) -> list[Order]:
    """The batch's orders the user is still deciding about (quoted or accepted)."""
    return [o for o in await uow.orders.for_batch(batch_id) if o.status in _OPEN]


async def accept_batch(uow: UnitOfWork, deps: sale.SaleDeps, batch_id: int) -> list[Order]:
    """The user says yes to the whole quote: kept if the lock still holds; else every quoted
    order expires and QuoteExpired (the caller re-quotes the cards and asks again). When
    someone else accepted one of the cards meanwhile, every quoted order expires and CardHeld
    (the batch's price depends on its cards: the caller re-quotes those that are left)."""
    quoted = [o for o in await uow.orders.for_batch(batch_id) if o.status is OrderStatus.QUOTED]
    if not quoted:
        raise QuoteExpired("quote.no_longer_open")
    now = deps.clock.now()
    quotes = [await uow.quotes.get(o.quote_id) for o in quoted]
    locked = all(q.is_locked_at(now) for q in quotes)
    taken = False
    if locked:
        for fp in sorted({o.card_fp for o in quoted}):  # one order of locks: no deadlock
            await uow.orders.lock_card(fp)
        for order in quoted:
            try:
                await sale.check_not_held(uow, deps, order.card_fp, order.id)
            except CardHeld:
                taken = True
    if not locked or taken:
        for order in quoted:
            await uow.orders.update(transition(order, OrderStatus.EXPIRED, now))
        raise CardHeld() if taken else QuoteExpired()
    return [await sale.accept_quote(uow, deps, order) for order in quoted]


async def cancel_batch(uow: UnitOfWork, deps: sale.SaleDeps, batch_id: int, actor: str) -> int:
    """Withdraw every order of the batch the user is still deciding about; how many."""
    orders = await open_orders(uow, batch_id)
    for order in orders:
        assert order.id is not None
        await sale.cancel_order(uow, deps, order.id, actor)
    return len(orders)


async def submit_batch(
    uow: UnitOfWork, deps: sale.SaleDeps, batch_id: int, account: PayoutAccount
) -> list[tuple[Order, RiskDecision]]:
    """The user confirms: every accepted order gets the payout account and its own risk
    decision. The amount rules see the batch as one sale: every card is judged with the whole
    batch's payout, on facts gathered before any card of it is decided (so the batch is not
    counted twice in the person's day, and splitting a sale into cards changes nothing)."""
    now = deps.clock.now()
    batch = await uow.batches.get(batch_id)
    accepted = [
        o for o in await uow.orders.for_batch(batch_id) if o.status is OrderStatus.ACCEPTED
    ]
    total = sum(o.payout_fen for o in accepted)
    facts = [await sale.risk_facts(uow, deps, o, account, sale_payout_fen=total) for o in accepted]
    decided = [
        await sale.decide_order(uow, deps, order, account, fact)
        for order, fact in zip(accepted, facts, strict=True)
    ]
    await uow.batches.update(replace(batch, submitted_at=now))
    await uow.audit.append(
        now,
        f"user:{batch.user_id}",
        "batch.submitted",
        f"batch:{batch_id}",
        {
            "orders": [o.id for o, _ in decided],
            "outcomes": [d.outcome.value for _, d in decided],
            "payout_fen": sum(o.payout_fen for o, _ in decided),
        },
    )
    return decided


async def settle_batch(
    uow_factory: UnitOfWorkFactory, deps: sale.SaleDeps, batch_id: int, live: bool = False
) -> list[Order]:
    """Settle each approved or paying order of the batch on its own (the proven single-order
    settlement); one that cannot finish now does not stop the others. Returns every order of
    the batch, as it stands."""
    async with uow_factory() as uow:
        orders = list(await uow.orders.for_batch(batch_id))
    for order in orders:
        if order.status in (OrderStatus.APPROVED, OrderStatus.PAYING):
            assert order.id is not None
            try:
                await sale.settle(uow_factory, deps, order.id, live)
            except CardbotError as exc:
                log.warning(
                    "batch %s: order %s not finished yet: %s",
                    batch_id,
                    order.id,
                    type(exc).__name__,
                )
    async with uow_factory() as uow:
        return [
            o for o in await uow.orders.for_batch(batch_id) if o.status is not OrderStatus.EXPIRED
        ]


@dataclass(frozen=True)
class BatchReceiptLine:
    order_id: int
    order_number: str
    brand: str
    card_masked: str
    payout_fen: int
    status: OrderStatus


@dataclass(frozen=True)
class BatchReceipt:
    """One receipt (电子回单) for a batch: each card's order, the total paid, the account, the
    time and the audit hash of the last settlement (the chain up to it stands behind all)."""

    batch_number: str
    lines: tuple[BatchReceiptLine, ...]
    paid_fen: int
    method: PayoutMethod | None
    account_masked: str
    holder_masked: str
    at: datetime
    audit_hash: str


async def batch_receipt(uow: UnitOfWork, batch_id: int) -> BatchReceipt:
    """The receipt of a batch as it stands: settled cards with their amounts, the others with
    their status (under review, paying, failed, refused)."""
    batch = await uow.batches.get(batch_id)
    orders = [
        o for o in await uow.orders.for_batch(batch_id) if o.status is not OrderStatus.EXPIRED
    ]
    settled = [o for o in orders if o.status is OrderStatus.SETTLED]
    account = None
    account_id = next((o.payout_account_id for o in orders if o.payout_account_id), None)
    if account_id is not None:
        account = await uow.payout_accounts.get(account_id)
    paid_events = [
        e
        for order in settled
        for e in await uow.audit.for_subject(f"order:{order.id}")
        if e.action == "payout.succeeded"
    ]
    last = max(paid_events, key=lambda e: e.seq or 0, default=None)
    last_hash = last.hash if last else ""
    last_at = last.at if last else (batch.submitted_at or batch.created_at)
    return BatchReceipt(
        batch_number=batch.number,
        lines=tuple(
            BatchReceiptLine(o.id or 0, o.number, o.brand, o.card_masked, o.payout_fen, o.status)
            for o in orders
        ),
        paid_fen=sum(o.payout_fen for o in settled),
        method=account.method if account else None,
        account_masked=account.account_masked if account else "",
        holder_masked=account.holder_name_masked if account else "",
        at=last_at,
        audit_hash=last_hash,
    )
