"""Turning domain records into text in the user's language. Amounts always in yuan with two
decimals, computed from integer fen; times in China Standard Time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from core.batch import BatchProblem, BatchReceipt, CardProblem, bonus_fen_of
from core.catalog import Catalog
from core.model import Batch, Order, OrderStatus, Quote, batch_number
from core.money import percent, yuan
from core.pricing import PricingPolicy, price_list
from core.sale import Receipt
from handlers.i18n import Translator

SHANGHAI = ZoneInfo("Asia/Shanghai")


def local_time(at: datetime) -> str:
    """A timestamp as people in China read it: 2026-11-22 14:05 (UTC+8)."""
    return at.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")


def brand_name(catalog: Catalog, code: str, lang: str) -> str:
    """A brand's name in the user's language (the code itself if the catalog lost it)."""
    try:
        return catalog.get(code).name(lang)
    except KeyError:
        return code


def quote_text(t: Translator, catalog: Catalog, quote: Quote, card_masked: str) -> str:
    """The quote with every line of its arithmetic and how long it holds."""
    lines = [t("quote.header", brand=brand_name(catalog, quote.brand, t.lang), card=card_masked)]
    for line in quote.lines:
        lines.append(
            t(
                line.key,
                amount=yuan(line.amount_fen) if line.amount_fen is not None else "",
                rate=percent(line.rate_bp) if line.rate_bp is not None else "",
                tier=tier_name(t, line.label) if line.label else "",
            )
        )
    minutes = max(1, round((quote.expires_at - quote.created_at).total_seconds() / 60))
    lines.append(t("quote.valid_until", time=local_time(quote.expires_at), minutes=minutes))
    return "\n".join(lines)


def tier_name(t: Translator, name: str) -> str:
    """A membership tier's name in the user's language (as configured when not translated)."""
    key = f"tier.{name}"
    text = t(key)
    return name if text == key else text


def status_text(t: Translator, status: str) -> str:
    """An order status in words."""
    return t(f"status.{status}")


def orders_text(t: Translator, catalog: Catalog, orders: Sequence[Order]) -> str:
    """A person's recent orders, one line each, newest first."""
    if not orders:
        return t("orders.none")
    rows = [t("orders.header")]
    for order in orders:
        rows.append(
            t(
                "orders.row",
                number=order.number,
                brand=brand_name(catalog, order.brand, t.lang),
                card=order.card_masked,
                balance=yuan(order.balance_fen),
                payout=yuan(order.payout_fen),
                status=status_text(t, order.status.value),
                time=local_time(order.created_at),
            )
        )
        if order.batch_id is not None:
            rows[-1] += t("orders.in_batch", batch=batch_number(order.batch_id))
    return "\n".join(rows)


def prices_text(t: Translator, catalog: Catalog, pricing: PricingPolicy) -> str:
    """Today's buy-back rates, one line per brand with its face-value bands, and the fee."""
    bands: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for row in price_list(pricing, catalog):
        if row.above_fen is None and row.up_to_fen is None:
            band = t("prices.band_all")
        elif row.up_to_fen is None:
            band = t("prices.band_above", low=yuan(row.above_fen or 0))
        else:
            band = t("prices.band_upto", high=yuan(row.up_to_fen))
        names[row.brand.code] = row.brand.name(t.lang)
        bands.setdefault(row.brand.code, []).append(f"{band} {percent(row.rate_bp)}")
    rows = [t("prices.header")]
    rows += [t("prices.row", brand=names[code], bands="｜".join(b)) for code, b in bands.items()]
    rows.append(
        t(
            "prices.footer",
            fee=yuan(pricing.fee_fen),
            minutes=pricing.lock_minutes,
            expiry_days=pricing.expiry_window_days,
            expiry=percent(pricing.expiry_adjust_bp),
        )
    )
    if pricing.batch_bonus_bp:
        rows.append(
            t(
                "prices.batch",
                cards=pricing.batch_min_cards,
                bonus=percent(pricing.batch_bonus_bp),
            )
        )
    for tier in pricing.tiers:
        rows.append(
            t(
                "prices.tier",
                tier=tier_name(t, tier.name),
                amount=yuan(tier.min_lifetime_fen),
                bonus=percent(tier.bonus_bp),
            )
        )
    return "\n".join(rows)


def receipt_text(t: Translator, catalog: Catalog, receipt: Receipt) -> str:
    """The electronic receipt (电子回单)."""
    return t(
        "receipt.body",
        order=receipt.order_number,
        brand=brand_name(catalog, receipt.brand, t.lang),
        card=receipt.card_masked,
        face=yuan(receipt.face_value_fen),
        balance=yuan(receipt.balance_fen),
        fee=yuan(receipt.fee_fen),
        payout=yuan(receipt.payout_fen),
        method=t(f"method.{receipt.method.value}"),
        account=receipt.account_masked,
        holder=receipt.holder_masked,
        reference=receipt.reference,
        txn=receipt.provider_txn_id or "-",
        time=local_time(receipt.paid_at),
        hash=receipt.audit_hash[:16],
    )


def payout_failure(t: Translator, reason: str | None) -> str:
    """A provider's failure code in words; an unknown code is named, not hidden."""
    if not reason:
        return t("payout_failure.unknown")
    key = f"payout_failure.{reason}"
    text = t(key)
    return text if text != key else t("payout_failure.other", code=reason)


# --------------------------------------------------------------------------------------------
# Batch sale


def batch_line_problems(t: Translator, problems: Sequence[BatchProblem]) -> str:
    """Every bad line of a list: its number and why (never its content: it may hold secrets)."""
    return "\n".join(
        t("batch.line_problem", line=p.line, reason=t(p.key, **dict(p.params))) for p in problems
    )


def batch_card_problems(t: Translator, problems: Sequence[CardProblem]) -> str:
    """Every card of a batch that cannot be bought, masked, and why."""
    rows = [t("batch.cards_refused", count=len(problems))]
    rows += [
        t("batch.card_problem", card=p.card_masked, reason=t(p.key, **dict(p.params)))
        for p in problems
    ]
    return "\n".join(rows)


def batch_quote_text(
    t: Translator, catalog: Catalog, batch: Batch, orders: Sequence[Order], quotes: Sequence[Quote]
) -> str:
    """One quote for the batch: a line per card, the batch bonus on its own line, the totals
    and how long the price holds."""
    lines = [t("batch.quote_header", batch=batch.number, count=len(orders))]
    for n, (order, quote) in enumerate(zip(orders, quotes, strict=True), start=1):
        lines.append(
            t(
                "batch.quote_row",
                n=n,
                brand=brand_name(catalog, order.brand, t.lang),
                card=order.card_masked,
                balance=yuan(quote.balance_fen),
                rate=percent(quote.rate_bp),
                payout=yuan(quote.payout_fen),
            )
        )
    bonus_bp = next(
        (line.rate_bp for q in quotes[:1] for line in q.lines if line.key == "quote.batch_bonus"),
        None,
    )
    if bonus_bp:
        lines.append(
            t(
                "batch.quote_bonus",
                count=len(orders),
                rate=percent(bonus_bp),
                amount=yuan(
                    sum(bonus_fen_of(q.lines, q.balance_fen, q.gross_fen) for q in quotes)
                ),
            )
        )
    lines.append(
        t(
            "batch.quote_totals",
            count=len(orders),
            balance=yuan(sum(q.balance_fen for q in quotes)),
            fee=yuan(sum(q.fee_fen for q in quotes)),
            payout=yuan(sum(q.payout_fen for q in quotes)),
        )
    )
    if quotes:
        first = quotes[0]
        minutes = max(1, round((first.expires_at - first.created_at).total_seconds() / 60))
        lines.append(t("quote.valid_until", time=local_time(first.expires_at), minutes=minutes))
    return "\n".join(lines)


def batch_receipt_text(t: Translator, catalog: Catalog, receipt: BatchReceipt) -> str:
    """The batch's one electronic receipt: every card's order, the total paid, the account,
    the time and the audit hash; cards held for review or failed are listed as such."""
    rows = [t("batch.receipt_header", batch=receipt.batch_number)]
    for line in receipt.lines:
        key = (
            "batch.receipt_row_paid"
            if line.status is OrderStatus.SETTLED
            else "batch.receipt_row_other"
        )
        rows.append(
            t(
                key,
                order=line.order_number,
                brand=brand_name(catalog, line.brand, t.lang),
                card=line.card_masked,
                amount=yuan(line.payout_fen),
                status=status_text(t, line.status.value),
            )
        )
    rows.append(
        t(
            "batch.receipt_footer",
            paid=yuan(receipt.paid_fen),
            count=sum(1 for line in receipt.lines if line.status is OrderStatus.SETTLED),
            method=t(f"method.{receipt.method.value}") if receipt.method else "-",
            account=receipt.account_masked or "-",
            holder=receipt.holder_masked or "-",
            time=local_time(receipt.at),
            hash=receipt.audit_hash[:16] or "-",
        )
    )
    return "\n".join(rows)
