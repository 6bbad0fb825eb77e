"""The sell flow: card → secret → verification → quote → consent and identity (first sale) →
payout account (remembered) → confirmation → settlement → receipt. The table at the bottom is
the whole graph."""

from __future__ import annotations

import base64
from dataclasses import replace

from core import batch, sale
from core.batch import MAX_CARDS, looks_like_a_batch, parse_batch
from core.catalog import normalize_card_number
from core.errors import (
    AccountSuspended,
    CannotCancel,
    CardHeld,
    CardNotFound,
    CardNotRecognised,
    CardUnusable,
    InvalidIdentity,
    KycMismatch,
    KycUnavailable,
    QuoteExpired,
    UserError,
    WrongSecret,
)
from core.masking import mask_account, mask_card_number
from core.messages import InputKind, Option, Reply
from core.model import Batch, Card, Order, OrderStatus, PayoutMethod
from core.money import yuan
from core.ports import CardReading, UnitOfWork
from core.sale import SaleDeps
from handlers import render
from handlers.engine import START, AfterCommit, Ctx, Flow, Services, Step, StepHandler
from handlers.i18n import Translator

AWAIT_CARD = "await_card"
AWAIT_CARD_CHOICE = "await_card_choice"
AWAIT_SECRET = "await_secret"
AWAIT_QUOTE = "await_quote"
AWAIT_CONSENT = "await_consent"
AWAIT_NAME = "await_name"
AWAIT_ID = "await_id_number"
AWAIT_PHONE = "await_phone"
AWAIT_METHOD = "await_method"
AWAIT_ACCOUNT = "await_account"
AWAIT_BANK_CONFIRM = "await_bank_confirm"
AWAIT_PAYOUT_CONFIRM = "await_payout_confirm"
AWAIT_SETTLEMENT = "await_settlement"  # confirmed; the card is being redeemed and paid out
AWAIT_LEVEL2_CARD = "await_level2_card"  # over the level-1 daily limit: a bank card to check
# Batch sale: a list (text or CSV/TXT file) or photos one by one, then one quote for them all.
AWAIT_BATCH_FIX = "await_batch_fix"  # some lines were bad: go on with the rest, or resend
AWAIT_BATCH_PHOTO = "await_batch_photo"  # photos one by one, "done" when all are in
AWAIT_BATCH_CARD_CHOICE = "await_batch_card_choice"
AWAIT_BATCH_SECRET = "await_batch_secret"  # the secret of the card just photographed
AWAIT_BATCH_QUOTE = "await_batch_quote"
# Withdrawing a submitted order held for review: its own action, confirmed by number and amount.
AWAIT_WITHDRAW_CONFIRM = "await_withdraw_confirm"

# A card list sent as a file: CSV or plain text, small enough to be a list of cards.
LIST_FILE_SUFFIXES = (".csv", ".txt")
MAX_LIST_FILE_BYTES = 64 * 1024

MAX_SECRET_ATTEMPTS = 3
MAX_LEVEL2_ATTEMPTS = 3


# --------------------------------------------------------------------------------------------
# Prompts: what each state is waiting for (also used to repeat it after a refusal)


def menu(t: Translator) -> Reply:
    """The main menu."""
    choices = ("menu.sell", "menu.prices", "menu.orders", "menu.help", "menu.sell_batch")
    return Reply(t("menu.prompt"), tuple(Option(c, t(c)) for c in choices))


async def prompt_start(ctx: Ctx) -> tuple[Reply, ...]:
    return (menu(ctx.t),)


async def prompt_card(ctx: Ctx) -> tuple[Reply, ...]:
    return (Reply(ctx.t("sell.ask_card")),)


async def prompt_card_choice(ctx: Ctx) -> tuple[Reply, ...]:
    choices = ctx.data.get("choices", [])
    options = tuple(Option(f"pick.{i}", label) for i, (label, _) in enumerate(choices))
    return (Reply(ctx.t("sell.pick_card"), options),)


async def prompt_secret(ctx: Ctx) -> tuple[Reply, ...]:
    card = await ctx.uow.cards.get(int(ctx.data["card_id"]))
    return (
        Reply(
            ctx.t(
                "sell.ask_secret",
                card=card.number_masked,
                brand=render.brand_name(ctx.deps.catalog, card.brand, ctx.lang),
            )
        ),
    )


def quote_options(t: Translator, ref: str) -> tuple[Option, ...]:
    """Accept or decline a quote (``ref``: an order id, or B + a batch id)."""
    return (
        Option(f"quote.accept:{ref}", t("quote.accept")),
        Option(f"quote.decline:{ref}", t("quote.decline")),
    )


def payout_options(t: Translator, ref: str, account_id: int | None) -> tuple[Option, ...]:
    """Confirm the payout to this account, change the account, or cancel (``ref`` as above)."""
    return (
        Option(f"pay.confirm:{ref}:{account_id}", t("pay.confirm")),
        Option("pay.change", t("pay.change")),
        Option(f"pay.cancel:{ref}", t("pay.cancel")),
    )


async def prompt_quote(ctx: Ctx) -> tuple[Reply, ...]:
    order = await ctx.uow.orders.get(int(ctx.data["order_id"]))
    quote = await ctx.uow.quotes.get(order.quote_id)
    text = render.quote_text(ctx.t, ctx.deps.catalog, quote, order.card_masked)
    return (Reply(text, quote_options(ctx.t, str(order.id))),)


async def prompt_consent(ctx: Ctx) -> tuple[Reply, ...]:
    return (
        Reply(
            ctx.t("identity.consent"),
            (
                Option("consent.yes", ctx.t("consent.yes")),
                Option("consent.no", ctx.t("consent.no")),
            ),
        ),
    )


async def prompt_name(ctx: Ctx) -> tuple[Reply, ...]:
    return (Reply(ctx.t("identity.ask_name")),)


async def prompt_id(ctx: Ctx) -> tuple[Reply, ...]:
    return (Reply(ctx.t("identity.ask_id_number")),)


async def prompt_phone(ctx: Ctx) -> tuple[Reply, ...]:
    return (Reply(ctx.t("identity.ask_phone")),)


async def prompt_method(ctx: Ctx) -> tuple[Reply, ...]:
    options: list[Option] = []
    for account in list(await ctx.uow.payout_accounts.for_user(ctx.user.id))[:3]:
        options.append(
            Option(
                f"account.{account.id}",
                ctx.t(
                    "payout.use_saved",
                    method=ctx.t(f"method.{account.method.value}"),
                    account=account.account_masked,
                ),
            )
        )
    options += [Option(f"method.{m.value}", ctx.t(f"method.{m.value}")) for m in PayoutMethod]
    return (Reply(ctx.t("payout.ask_method"), tuple(options)),)


async def prompt_account(ctx: Ctx) -> tuple[Reply, ...]:
    method = PayoutMethod(ctx.data["method"])
    return (
        Reply(ctx.t(f"payout.ask_account.{method.value}", name=ctx.user.real_name_masked or "")),
    )


async def prompt_bank_confirm(ctx: Ctx) -> tuple[Reply, ...]:
    return (
        Reply(
            ctx.t("payout.luhn_warning", account=ctx.data.get("pending_masked", "")),
            (
                Option("bank.keep", ctx.t("payout.luhn_keep")),
                Option("bank.retype", ctx.t("payout.luhn_retype")),
            ),
        ),
    )


async def prompt_level2_card(ctx: Ctx) -> tuple[Reply, ...]:
    subject = f"B{ctx.data['batch_id']}" if ctx.data.get("batch_id") else ctx.data["order_id"]
    cancel = Option(f"pay.cancel:{subject}", ctx.t("pay.cancel"))
    return (Reply(ctx.t("identity.ask_bank_card"), (cancel,)),)


async def prompt_payout_confirm(ctx: Ctx) -> tuple[Reply, ...]:
    if ctx.data.get("batch_id"):
        return await prompt_batch_payout_confirm(ctx)
    order = await ctx.uow.orders.get(int(ctx.data["order_id"]))
    account = await ctx.uow.payout_accounts.get(int(ctx.data["account_id"]))
    text = ctx.t(
        "payout.confirm",
        amount=yuan(order.payout_fen),
        method=ctx.t(f"method.{account.method.value}"),
        account=account.account_masked,
        holder=account.holder_name_masked,
        order=order.number,
    )
    return (Reply(text, payout_options(ctx.t, str(order.id), account.id)),)


async def prompt_settlement(ctx: Ctx) -> tuple[Reply, ...]:
    if ctx.data.get("batch_id"):
        number = (await ctx.uow.batches.get(int(ctx.data["batch_id"]))).number
        text = ctx.t("batch.in_progress", batch=number)
        subject = f"pay.status:B{ctx.data['batch_id']}"
        return (Reply(text, (Option(subject, ctx.t("pay.status")),)),)
    order = await ctx.uow.orders.get(int(ctx.data["order_id"]))
    text = ctx.t("pay.in_progress", order=order.number, amount=yuan(order.payout_fen))
    return (Reply(text, (Option(f"pay.status:{order.id}", ctx.t("pay.status")),)),)


# --------------------------------------------------------------------------------------------
# Commands, available at every step


async def cmd_start(ctx: Ctx) -> Step:
    """Welcome and the main menu; an unfinished sale is kept until the user cancels it, and
    money we owe after a failed payout comes first."""
    replies = [Reply(ctx.t("menu.welcome"))]
    if ctx.step not in (START, AWAIT_CARD):
        replies.append(Reply(ctx.t("menu.sale_in_progress")))
        return Step(ctx.step, (*replies, *await PROMPTS[ctx.step](ctx)))
    owed = await _owed_step(ctx)
    if owed is not None:
        return replace(owed, replies=(*replies, *owed.replies))
    return Step(START, (*replies, *await prompt_start(ctx)))


async def cmd_help(ctx: Ctx) -> Step:
    help_text = f"{ctx.t('help.text')}\n\n{ctx.t('help.human')}"
    return Step(ctx.step, (Reply(help_text), *await PROMPTS[ctx.step](ctx)))


async def cmd_sell(ctx: Ctx) -> Step:
    """Start selling a card; a sale that was waiting for the user is withdrawn first."""
    owed = await _owed_step(ctx)
    if owed is not None:
        return owed
    replies: list[Reply] = []
    if await _withdraw_open_orders(ctx):
        replies.append(Reply(ctx.t("sell.previous_withdrawn")))
    _clear_sale(ctx)
    return Step(AWAIT_CARD, (*replies, *await prompt_card(ctx)))


async def cmd_prices(ctx: Ctx) -> Step:
    pricing = await sale.current_pricing(ctx.uow, ctx.deps)
    text = render.prices_text(ctx.t, ctx.deps.catalog, pricing)
    return Step(ctx.step, (Reply(text), *await PROMPTS[ctx.step](ctx)))


async def cmd_orders(ctx: Ctx) -> Step:
    orders = await ctx.uow.orders.for_user(ctx.user.id, limit=10)
    text = render.orders_text(ctx.t, ctx.deps.catalog, orders)
    # "This order has a problem" on the latest orders: the desk opens a ticket about it.
    options = [
        Option(f"desk.order:{o.id}", ctx.t("desk.problem_option", order=o.number))
        for o in orders[:3]
    ]
    if ctx.step == START:
        # Withdrawing an order held for review is its own action, asked for here (the menu's
        # choices are answered at the start only: in a sale, the sale's buttons come first).
        options += [
            Option(f"order.withdraw:{o.id}", ctx.t("withdraw.option", order=o.number))
            for o in (await sale.held_orders(ctx.uow, ctx.user))[:3]
        ]
    if options:
        return Step(ctx.step, (Reply(text, tuple(options)),))
    return Step(ctx.step, (Reply(text), *await PROMPTS[ctx.step](ctx)))


# Steps before any order exists: /cancel says the card (or list) being added was dropped.
_CARD_STEPS = frozenset(
    {AWAIT_CARD, AWAIT_CARD_CHOICE, AWAIT_SECRET, AWAIT_BATCH_FIX, AWAIT_BATCH_PHOTO}
    | {AWAIT_BATCH_CARD_CHOICE, AWAIT_BATCH_SECRET}
)


async def cmd_cancel(ctx: Ctx) -> Step:
    """Cancel the step in progress, saying what was cancelled, and go back to the menu. Only
    what the user is still deciding about (a quote, an accepted quote before confirming) is
    cancelled. An order already submitted — under review, approved, being paid — is never
    cancelled here: CannotCancel says so and the step stays; an order held for review is
    withdrawn only by its own confirmed action (/orders). A failed payout's money is the
    user's: CannotCancel asks for another account."""
    said: list[Reply] = []
    if ctx.data.get("batch_id"):
        found = await ctx.uow.batches.get(int(ctx.data["batch_id"]))
        count = await batch.cancel_batch(ctx.uow, ctx.deps, found.id or 0, f"user:{ctx.user.id}")
        if count:
            said.append(Reply(ctx.t("cancel.batch", batch=found.number, count=count)))
        elif found.submitted_at is not None and ctx.step == AWAIT_SETTLEMENT:
            raise CannotCancel("sell.cannot_cancel_batch", batch=found.number)
    elif ctx.data.get("order_id"):
        order = await ctx.uow.orders.get(int(ctx.data["order_id"]))
        if order.status is OrderStatus.PAYOUT_FAILED:
            raise CannotCancel(
                "sell.cannot_cancel_owed", order=order.number, amount=yuan(order.payout_fen)
            )
        if order.status in sale.OPEN_STATUSES:
            assert order.id is not None
            await sale.cancel_order(ctx.uow, ctx.deps, order.id, f"user:{ctx.user.id}")
            said.append(Reply(ctx.t("cancel.order", order=order.number, card=order.card_masked)))
        elif order.status in (*sale.HELD_STATUSES, *SETTLING):
            raise CannotCancel("sell.cannot_cancel_paying", order=order.number)
    if not said and ctx.step in _CARD_STEPS:
        said.append(Reply(ctx.t("cancel.card_step")))
    elif not said and ctx.step != START:
        said.append(Reply(ctx.t("cancel.step")))
    _clear_sale(ctx)
    if not said:
        said.append(Reply(ctx.t("sell.nothing_to_cancel")))
    # Say what /cancel left alone, so nobody believes a held order was withdrawn.
    for held in await sale.held_orders(ctx.uow, ctx.user):
        said.append(Reply(ctx.t("sell.held_not_cancelled", order=held.number)))
    return Step(START, (*said, *await prompt_start(ctx)))


async def on_withdraw_ask(ctx: Ctx) -> Step:
    """``order.withdraw:ID`` (from /orders): ask to confirm, naming the order and amount."""
    order_id = int(str(ctx.inbound.option).split(":", 1)[1])
    order = await ctx.uow.orders.get(order_id)
    if order.user_id != ctx.user.id or order.status not in sale.HELD_STATUSES:
        raise CannotCancel("withdraw.not_held", order=order.number)
    ctx.data["withdraw_order_id"] = order.id
    return Step(AWAIT_WITHDRAW_CONFIRM, await prompt_withdraw_confirm(ctx))


async def prompt_withdraw_confirm(ctx: Ctx) -> tuple[Reply, ...]:
    order = await ctx.uow.orders.get(int(ctx.data["withdraw_order_id"]))
    text = ctx.t("withdraw.confirm", order=order.number, amount=yuan(order.payout_fen))
    return (
        Reply(
            text,
            (
                Option(f"withdraw.yes:{order.id}", ctx.t("withdraw.yes")),
                Option(f"withdraw.keep:{order.id}", ctx.t("withdraw.keep")),
            ),
        ),
    )


async def on_withdraw_confirm(ctx: Ctx) -> Step:
    """Withdraw the held order (only if it is still held), or keep it."""
    order_id = int(str(ctx.inbound.option).split(":", 1)[1])
    ctx.data.pop("withdraw_order_id", None)
    if _action(ctx) == "withdraw.keep":
        order = await ctx.uow.orders.get(order_id)
        kept = Reply(ctx.t("withdraw.kept", order=order.number))
        return Step(START, (kept, *await prompt_start(ctx)))
    try:
        order = await sale.withdraw_order(ctx.uow, ctx.deps, ctx.user, order_id)
    except CannotCancel as refusal:
        said = Reply(ctx.t(refusal.key, **refusal.params))
        return Step(START, (said, *await prompt_start(ctx)))
    done = Reply(ctx.t("withdraw.done", order=order.number, amount=yuan(order.payout_fen)))
    return Step(START, (done, *await prompt_start(ctx)))


async def _withdraw_open_orders(ctx: Ctx) -> bool:
    withdrawn = False
    for order in await sale.open_orders(ctx.uow, ctx.user):
        assert order.id is not None
        await sale.cancel_order(ctx.uow, ctx.deps, order.id, f"user:{ctx.user.id}")
        withdrawn = True
    return withdrawn


async def _owed_step(ctx: Ctx) -> Step | None:
    """When a payout of ours failed, the user is asked for another account before anything."""
    owed = await sale.owed_orders(ctx.uow, ctx.user)
    if not owed:
        return None
    order = owed[-1]
    _clear_sale(ctx)
    ctx.data["order_id"] = order.id
    text = ctx.t("pay.owed", order=order.number, amount=yuan(order.payout_fen))
    return Step(AWAIT_METHOD, (Reply(text), *await prompt_method(ctx)))


def _clear_sale(ctx: Ctx) -> None:
    for key in [k for k in ctx.data if not k.startswith("_")]:
        del ctx.data[key]


# --------------------------------------------------------------------------------------------
# Menu


async def on_menu(ctx: Ctx) -> Step:
    choice = ctx.inbound.option
    if _action(ctx) == "order.withdraw":
        return await on_withdraw_ask(ctx)
    command = {
        "menu.sell": cmd_sell,
        "menu.prices": cmd_prices,
        "menu.orders": cmd_orders,
        "menu.help": cmd_help,
        "menu.sell_batch": cmd_sell_batch,
    }[str(choice)]
    return await command(ctx)


async def on_text_at_start(ctx: Ctx) -> Step:
    """At the menu, a typed card number starts a sale; anything else gets the menu again."""
    text = ctx.inbound.text or ""
    digits = sum(ch.isdigit() for ch in text)
    if digits >= 8 and looks_like_a_batch(text):
        _clear_sale(ctx)
        return await on_batch_text(ctx)
    if digits >= 8:
        _clear_sale(ctx)
        return await on_card_number(ctx)
    return Step(START, (Reply(ctx.t("menu.not_understood")), *await prompt_start(ctx)))


# --------------------------------------------------------------------------------------------
# The card


async def on_card_number(ctx: Ctx) -> Step:
    """A typed card number (several lines: a list of cards, sold as a batch)."""
    if looks_like_a_batch(ctx.inbound.text or ""):
        return await on_batch_text(ctx)
    card = await sale.capture_card(ctx.uow, ctx.deps, ctx.user, ctx.inbound.text or "")
    return await _after_capture(ctx, card)


async def on_card_photo(ctx: Ctx) -> Step:
    """A photo of the card: read its barcode, or say precisely how to take a better one."""
    reading = ctx.reading
    if reading is None:  # read before the transaction by the engine; this is a fallback
        image = ctx.inbound.image if ctx.inbound.image is not None else ctx.inbound.document
        reading = await ctx.services.reader.read(image or b"")
    return await _from_reading(ctx, reading)


async def on_card_document(ctx: Ctx) -> Step:
    """A file: a CSV or text file is a list of cards (a batch); an image sent as a file counts
    as a photo; anything else is refused."""
    if _is_list_file(ctx):
        return await on_batch_file(ctx)
    return await on_card_photo(ctx)


def _recognise(ctx: Ctx, reading: CardReading) -> tuple[list[tuple[str, str]], Reply | None]:
    """The card numbers a photo shows, as (label, number); or why none can be used."""
    if "not_an_image" in reading.hints:
        return [], Reply(ctx.t("photo.not_an_image"))
    if "too_large" in reading.hints:
        return [], Reply(ctx.t("error.file_too_large"))
    recognised: list[tuple[str, str]] = []
    for text in reading.candidates:
        try:
            brand = ctx.deps.catalog.match(text)
        except CardNotRecognised:
            continue
        label = f"{brand.name(ctx.lang)} {mask_card_number(normalize_card_number(text))}"
        recognised.append((label, text))
    if recognised:
        return recognised, None
    if reading.candidates:
        return [], Reply(ctx.t("photo.not_a_card"))
    hints = [ctx.t(f"photo.hint.{h}") for h in reading.hints] or [ctx.t("photo.hint.none")]
    return [], Reply(ctx.t("photo.unreadable", hints="\n".join(f"• {h}" for h in hints)))


async def _from_reading(ctx: Ctx, reading: CardReading) -> Step:
    # A photo sent from the menu starts a sale: if it cannot be used, keep waiting for a card.
    recognised, problem = _recognise(ctx, reading)
    if problem is not None:
        unreadable = not reading.candidates and not {"not_an_image", "too_large"} & set(
            reading.hints
        )
        # Advice on retaking the photo is itself what the bot waits for: no prompt after it.
        return Step(AWAIT_CARD, (problem,) if unreadable else (problem, *await prompt_card(ctx)))
    if len(recognised) > 1:
        # Several codes on one card (e.g. a product EAN beside the card number): ask which.
        ctx.data["choices_enc"] = _seal(ctx, "\n".join(t for _, t in recognised))
        ctx.data["choices"] = [(label, i) for i, (label, _) in enumerate(recognised)]
        return Step(AWAIT_CARD_CHOICE, await prompt_card_choice(ctx))
    card = await sale.capture_card(ctx.uow, ctx.deps, ctx.user, recognised[0][1])
    return await _after_capture(ctx, card, from_photo=True)


async def on_card_choice(ctx: Ctx) -> Step:
    index = int(str(ctx.inbound.option).split(".")[1])
    numbers = _unseal(ctx, ctx.data.pop("choices_enc")).split("\n")
    ctx.data.pop("choices", None)
    card = await sale.capture_card(ctx.uow, ctx.deps, ctx.user, numbers[index])
    return await _after_capture(ctx, card, from_photo=True)


async def _after_capture(ctx: Ctx, card: Card, from_photo: bool = False) -> Step:
    ctx.data["card_id"] = card.id
    ctx.data["secret_attempts"] = 0
    brand = ctx.deps.catalog.get(card.brand)
    seen = Reply(
        ctx.t(
            "sell.card_read" if from_photo else "sell.card_typed",
            brand=brand.name(ctx.lang),
            card=card.number_masked,
        )
    )
    if brand.has_secret:
        return Step(AWAIT_SECRET, (seen, *await prompt_secret(ctx)))
    step = await _verify_and_quote(ctx, card)
    return replace(step, replies=(seen, *step.replies))


async def on_secret(ctx: Ctx) -> Step:
    """The card secret: stored encrypted at once; the message that carried it is deleted."""
    card = await ctx.uow.cards.get(int(ctx.data["card_id"]))
    card = await sale.attach_secret(ctx.uow, ctx.deps, card, ctx.inbound.text or "")
    step = await _verify_and_quote(ctx, card)
    stored = Reply(ctx.t("sell.secret_stored"), delete_inbound=True)
    return replace(step, replies=(stored, *step.replies))


async def _verify_and_quote(ctx: Ctx, card: Card) -> Step:
    try:
        card = await sale.verify_card(ctx.uow, ctx.deps, card)
    except WrongSecret as wrong:
        await ctx.uow.cards.update(replace(card, secret_enc=None))
        attempts = int(ctx.data.get("secret_attempts", 0)) + 1
        ctx.data["secret_attempts"] = attempts
        if attempts >= MAX_SECRET_ATTEMPTS:
            _clear_sale(ctx)
            return Step(
                AWAIT_CARD, (Reply(ctx.t("error.wrong_secret_final")), *await prompt_card(ctx))
            )
        return Step(
            AWAIT_SECRET,
            (Reply(ctx.t(wrong.key, left=MAX_SECRET_ATTEMPTS - attempts, **wrong.params)),),
        )
    except AccountSuspended as suspended:
        # The streak that suspends the person is kept (this step commits), and they are told.
        _clear_sale(ctx)
        return Step(
            START, (Reply(ctx.t(suspended.key, **suspended.params)), *await prompt_start(ctx))
        )
    except (CardUnusable, CardNotFound) as refusal:
        _clear_sale(ctx)
        return Step(
            AWAIT_CARD,
            (Reply(ctx.t(refusal.key, **refusal.params)), Reply(ctx.t("sell.ask_another_card"))),
        )
    try:
        _, order = await sale.quote_for(ctx.uow, ctx.deps, ctx.user, card, ctx.inbound.channel)
    except CardUnusable as refusal:
        _clear_sale(ctx)
        return Step(
            AWAIT_CARD,
            (Reply(ctx.t(refusal.key, **refusal.params)), Reply(ctx.t("sell.ask_another_card"))),
        )
    ctx.data["order_id"] = order.id
    return Step(AWAIT_QUOTE, await prompt_quote(ctx))


# --------------------------------------------------------------------------------------------
# The quote


async def on_quote_choice(ctx: Ctx) -> Step:
    order = await ctx.uow.orders.get(int(ctx.data["order_id"]))
    if _action(ctx) == "quote.decline":
        await sale.cancel_order(
            ctx.uow, ctx.deps, int(ctx.data["order_id"]), f"user:{ctx.user.id}"
        )
        _clear_sale(ctx)
        return Step(START, (Reply(ctx.t("quote.declined")), *await prompt_start(ctx)))
    if order.status is not OrderStatus.QUOTED:
        _clear_sale(ctx)
        return Step(START, (Reply(ctx.t("quote.no_longer_open")), *await prompt_start(ctx)))
    try:
        await sale.accept_quote(ctx.uow, ctx.deps, order)
    except CardHeld as held:
        # Someone else accepted this card first: it is theirs (our quote is cancelled).
        _clear_sale(ctx)
        return Step(AWAIT_CARD, (Reply(ctx.t(held.key)), Reply(ctx.t("sell.ask_another_card"))))
    except QuoteExpired:
        # The lock ran out: check the card again and show a fresh quote to agree to.
        card = await ctx.uow.cards.get(order.card_id)
        step = await _verify_and_quote(ctx, card)
        return replace(step, replies=(Reply(ctx.t("quote.expired_requoted")), *step.replies))
    return await _after_accept(ctx)


async def _after_accept(ctx: Ctx) -> Step:
    accepted = Reply(ctx.t("quote.accepted"))
    if ctx.user.is_verified:
        return Step(AWAIT_METHOD, (accepted, *await prompt_method(ctx)))
    if await sale.has_identity_consent(ctx.uow, ctx.user):
        return Step(
            AWAIT_NAME, (accepted, Reply(ctx.t("identity.intro")), *await prompt_name(ctx))
        )
    return Step(AWAIT_CONSENT, (accepted, *await prompt_consent(ctx)))


# --------------------------------------------------------------------------------------------
# Identity (first sale): separate consent first, then name, resident ID, phone


async def on_consent(ctx: Ctx) -> Step:
    if ctx.inbound.option == "consent.no":
        await _cancel_current(ctx)
        _clear_sale(ctx)
        return Step(START, (Reply(ctx.t("identity.consent_declined")), *await prompt_start(ctx)))
    await sale.record_identity_consent(ctx.uow, ctx.deps, ctx.user, ctx.inbound.channel)
    return Step(AWAIT_NAME, (Reply(ctx.t("identity.consent_recorded")), *await prompt_name(ctx)))


async def on_name(ctx: Ctx) -> Step:
    ctx.data["name_enc"] = _seal(ctx, sale.check_real_name(ctx.inbound.text or ""))
    return Step(AWAIT_ID, await prompt_id(ctx))


async def on_id_number(ctx: Ctx) -> Step:
    number = sale.check_id_number(ctx.deps, ctx.inbound.text or "")
    ctx.data["id_enc"] = _seal(ctx, number)
    return Step(
        AWAIT_PHONE,
        (Reply(ctx.t("identity.id_ok"), delete_inbound=True), *await prompt_phone(ctx)),
    )


async def on_phone(ctx: Ctx) -> Step:
    phone = sale.check_phone(ctx.inbound.text or "")
    try:
        name = _unseal(ctx, ctx.data.pop("name_enc"))
        id_number = _unseal(ctx, ctx.data.pop("id_enc"))
    except KeyError:
        return Step(AWAIT_NAME, (Reply(ctx.t("identity.start_again")), *await prompt_name(ctx)))
    try:
        ctx.user = await sale.verify_identity(ctx.uow, ctx.deps, ctx.user, name, id_number, phone)
    except InvalidIdentity as refusal:
        return Step(AWAIT_NAME, (Reply(ctx.t(refusal.key)), *await prompt_name(ctx)))
    done = Reply(
        delete_inbound=True,
        text=ctx.t(
            "identity.verified",
            name=ctx.user.real_name_masked,
            id=ctx.user.id_number_masked,
            phone=ctx.user.phone_masked,
        ),
    )
    return Step(AWAIT_METHOD, (done, *await prompt_method(ctx)))


# --------------------------------------------------------------------------------------------
# Payout account and confirmation


async def on_method(ctx: Ctx) -> Step:
    choice = str(ctx.inbound.option)
    if choice.startswith("account."):
        account = await ctx.uow.payout_accounts.get(int(choice.split(".")[1]))
        if account.user_id != ctx.user.id:
            return Step(
                AWAIT_METHOD, (Reply(ctx.t("error.option_gone")), *await prompt_method(ctx))
            )
        ctx.data["account_id"] = account.id
        return Step(AWAIT_PAYOUT_CONFIRM, await prompt_payout_confirm(ctx))
    ctx.data["method"] = PayoutMethod(choice.split(".")[1]).value
    return Step(AWAIT_ACCOUNT, await prompt_account(ctx))


async def on_account(ctx: Ctx) -> Step:
    method = PayoutMethod(ctx.data["method"])
    account, checks_ok = sale.normalize_account(method, ctx.inbound.text or "")
    if not checks_ok:
        ctx.data["pending_enc"] = _seal(ctx, account)
        ctx.data["pending_masked"] = mask_account(method.value, account)
        return Step(AWAIT_BANK_CONFIRM, await prompt_bank_confirm(ctx))
    return await _use_account(ctx, method, account)


async def on_bank_confirm(ctx: Ctx) -> Step:
    if ctx.inbound.option == "bank.retype":
        ctx.data.pop("pending_enc", None)
        ctx.data.pop("pending_masked", None)
        return Step(AWAIT_ACCOUNT, await prompt_account(ctx))
    account = _unseal(ctx, ctx.data.pop("pending_enc"))
    ctx.data.pop("pending_masked", None)
    return await _use_account(ctx, PayoutMethod(ctx.data["method"]), account)


async def _use_account(ctx: Ctx, method: PayoutMethod, account: str) -> Step:
    row = await sale.add_payout_account(ctx.uow, ctx.deps, ctx.user, method, account)
    ctx.data["account_id"] = row.id
    return Step(
        AWAIT_PAYOUT_CONFIRM,
        (
            Reply(ctx.t("payout.account_saved"), delete_inbound=True),
            *await prompt_payout_confirm(ctx),
        ),
    )


async def on_payout_confirm(ctx: Ctx) -> Step:
    if ctx.data.get("batch_id"):
        return await on_batch_payout_confirm(ctx)
    choice = _action(ctx)
    order = await ctx.uow.orders.get(int(ctx.data["order_id"]))
    if choice == "pay.change":
        return Step(AWAIT_METHOD, await prompt_method(ctx))
    if choice == "pay.cancel":
        assert order.id is not None
        await sale.cancel_order(ctx.uow, ctx.deps, order.id, f"user:{ctx.user.id}")
        _clear_sale(ctx)
        return Step(START, (Reply(ctx.t("sell.cancelled")), *await prompt_start(ctx)))
    account = await ctx.uow.payout_accounts.get(int(ctx.data["account_id"]))
    if order.status is OrderStatus.PAYOUT_FAILED:
        return _retry_payout(ctx, order, account.id)
    if order.status in SETTLING:
        # A restart cut the last attempt short: carry on (settlement is idempotent).
        return _settle_step(ctx, order)
    if order.status is not OrderStatus.ACCEPTED:
        _clear_sale(ctx)
        return Step(START, (Reply(ctx.t("quote.no_longer_open")), *await prompt_start(ctx)))
    limit = await sale.level_2_needed(ctx.uow, ctx.deps, ctx.user, order)
    if limit is not None:
        ctx.data["level2_attempts"] = 0
        needed = Reply(ctx.t("identity.level2_needed", limit=yuan(limit)))
        return Step(AWAIT_LEVEL2_CARD, (needed, *await prompt_level2_card(ctx)))
    order, decision = await sale.submit_order(ctx.uow, ctx.deps, order, account)
    if order.status is OrderStatus.REJECTED:
        _clear_sale(ctx)
        reasons = "\n".join(f"• {ctx.t(r)}" for r in decision.reasons)
        return Step(
            START, (Reply(ctx.t("risk.rejected", reasons=reasons)), *await prompt_start(ctx))
        )
    if order.status is OrderStatus.REVIEW:
        _clear_sale(ctx)
        return Step(
            START, (Reply(ctx.t("risk.review", order=order.number)), *await prompt_start(ctx))
        )
    return _settle_step(ctx, order)


async def on_level2_card(ctx: Ctx) -> Step:
    """A bank card in the person's own name lifts the level-1 daily limit (four-element check);
    the message that carried it is deleted whatever the answer."""
    try:
        user, _ = await sale.verify_level_2(ctx.uow, ctx.deps, ctx.user, ctx.inbound.text or "")
    except KycMismatch as refusal:
        attempts = int(ctx.data.get("level2_attempts", 0)) + 1
        ctx.data["level2_attempts"] = attempts
        said = Reply(ctx.t(refusal.key), delete_inbound=True)
        if attempts >= MAX_LEVEL2_ATTEMPTS:
            await _cancel_current(ctx)
            _clear_sale(ctx)
            failed = Reply(ctx.t("identity.level2_failed"))
            return Step(START, (said, failed, *await prompt_start(ctx)))
        return Step(AWAIT_LEVEL2_CARD, (said, *await prompt_level2_card(ctx)))
    except KycUnavailable:
        busy = Reply(ctx.t("error.kyc_unavailable"), delete_inbound=True)
        return Step(AWAIT_LEVEL2_CARD, (busy, *await prompt_level2_card(ctx)))
    ctx.user = user
    done = Reply(ctx.t("identity.level2_done"), delete_inbound=True)
    return Step(AWAIT_PAYOUT_CONFIRM, (done, *await prompt_payout_confirm(ctx)))


async def on_level2_choice(ctx: Ctx) -> Step:
    """The only choice while a bank card is awaited: give up and cancel the order."""
    await _cancel_current(ctx)
    _clear_sale(ctx)
    return Step(START, (Reply(ctx.t("sell.cancelled")), *await prompt_start(ctx)))


SETTLING = (OrderStatus.APPROVED, OrderStatus.REDEEMED, OrderStatus.PAYING, OrderStatus.SETTLED)


# Where settlement ends: the person is told through the outbox, in the transaction that got
# there (handlers/notify.py); the live conversation passes that on as its own answer.
FINISHED = (OrderStatus.SETTLED, OrderStatus.PAYOUT_FAILED, OrderStatus.CANCELLED)


async def _status_of(services: Services, order_id: int) -> OrderStatus:
    async with services.uow_factory() as uow:
        return (await uow.orders.get(order_id)).status


async def _answer_after_settling(
    channel: str, user_key: str, services: Services, outcome: AfterCommit, finished: bool
) -> AfterCommit:
    """What the person hears once settlement went as far as it can now. When it finished the
    sale just now, the outcome is already in the outbox (written with it): this answer takes
    it from there, so it is said exactly once — here, or by the channel's worker if that was
    quicker. Otherwise (still on its way, or asked again later) the outcome as it stands."""
    if not finished:
        return outcome
    async with services.uow_factory() as uow:
        taken = await uow.outbox.take_undelivered(channel, user_key, services.sale.clock.now())
        await uow.commit()
    return AfterCommit(tuple(m.reply for m in taken))


def _settle_step(ctx: Ctx, order: Order) -> Step:
    order_id = order.id
    assert order_id is not None
    services, t = ctx.services, ctx.t
    channel, user_key = ctx.inbound.channel, ctx.inbound.user_id

    async def pay() -> AfterCommit:
        before = await _status_of(services, order_id)
        after = await sale.settle(services.uow_factory, services.sale, order_id, live=True)
        finished = before not in FINISHED and after.status in FINISHED
        outcome = AfterCommit() if finished else await settlement_outcome(services, t, after)
        return await _answer_after_settling(channel, user_key, services, outcome, finished)

    # Confirming is done: until settlement answers, the confirm button is gone for good (a
    # second tap, or a tap racing the first, hears that the payout is under way).
    return Step(
        AWAIT_SETTLEMENT, (Reply(ctx.t("pay.sending", order=order.number)),), after_commit=pay
    )


async def on_settlement_status(ctx: Ctx) -> Step:
    """Where is my money? Settlement is idempotent: carry it on as far as it goes now (after a
    restart cut it short, this finishes it) and say where it stands."""
    if ctx.data.get("batch_id"):
        return await _batch_settle_step(ctx, int(ctx.data["batch_id"]), ())
    order = await ctx.uow.orders.get(int(ctx.data["order_id"]))
    return _settle_step(ctx, order)


def _retry_payout(ctx: Ctx, order: Order, account_id: int | None) -> Step:
    order_id = order.id
    assert order_id is not None and account_id is not None
    services, t = ctx.services, ctx.t
    channel, user_key = ctx.inbound.channel, ctx.inbound.user_id

    async def pay_again() -> AfterCommit:
        async with services.uow_factory() as uow:
            account = await uow.payout_accounts.get(account_id)
        after = await sale.retry_failed_payout(
            services.uow_factory, services.sale, order_id, account, live=True
        )
        finished = after.status in FINISHED  # a new outcome of this attempt
        outcome = AfterCommit() if finished else await settlement_outcome(services, t, after)
        return await _answer_after_settling(channel, user_key, services, outcome, finished)

    return Step(
        AWAIT_SETTLEMENT,
        (Reply(ctx.t("pay.sending", order=order.number)),),
        after_commit=pay_again,
    )


async def settlement_outcome(services: Services, t: Translator, order: Order) -> AfterCommit:
    """What the user hears once settlement has gone as far as it can for now."""
    async with services.uow_factory() as uow:
        return await settlement_outcome_in(uow, services.sale, t, order)


async def settlement_outcome_in(
    uow: UnitOfWork, deps: SaleDeps, t: Translator, order: Order
) -> AfterCommit:
    """:func:`settlement_outcome` inside an open unit of work (the settlement's own, when the
    outcome is written to the outbox with its cause)."""
    assert order.id is not None
    if order.status is OrderStatus.SETTLED:
        receipt = await sale.receipt_for(uow, order.id)
        text = render.receipt_text(t, deps.catalog, receipt)
        return AfterCommit(
            (Reply(t("pay.done", amount=yuan(order.payout_fen))), Reply(text), menu(t)),
            to=START,
            data=_cleared_data(),
        )
    if order.status is OrderStatus.PAYOUT_FAILED:
        payout = await uow.payouts.for_order(order.id)
        reason = render.payout_failure(t, payout.failure_reason if payout else None)
        methods = tuple(Option(f"method.{m.value}", t(f"method.{m.value}")) for m in PayoutMethod)
        return AfterCommit(
            (
                Reply(t("pay.failed", order=order.number, reason=reason)),
                Reply(t("payout.ask_method_again"), methods),
            ),
            to=AWAIT_METHOD,
            data={**_cleared_data(), "order_id": order.id},
        )
    if order.status is OrderStatus.CANCELLED:
        return AfterCommit(
            (Reply(t("pay.card_refused", order=order.number)), menu(t)),
            to=START,
            data=_cleared_data(),
        )
    if order.status is OrderStatus.PAYING:
        payout = await uow.payouts.for_order(order.id)
        release = sale.payout_waits(deps, payout) if payout else None
        if release is not None:
            text = t(
                "pay.scheduled",
                order=order.number,
                amount=yuan(order.payout_fen),
                time=render.local_time(release),
            )
            return AfterCommit((Reply(text), menu(t)), to=START, data=_cleared_data())
    # Still approved (the issuer is down) or paying (the provider has not confirmed): it will
    # be finished in the background and the user told.
    return AfterCommit(
        (Reply(t("pay.pending", order=order.number)), menu(t)), to=START, data=_cleared_data()
    )


def _cleared_data() -> dict[str, object]:
    return {
        "card_id": None,
        "order_id": None,
        "account_id": None,
        "method": None,
        "batch_id": None,
        "batch_card_ids": None,
    }


# --------------------------------------------------------------------------------------------
# Batch sale: many cards, one quote, one confirmation, one receipt; each card its own order


async def _cancel_current(ctx: Ctx) -> None:
    """Withdraw the sale in progress: the batch's open orders, or the one order."""
    actor = f"user:{ctx.user.id}"
    if ctx.data.get("batch_id"):
        await batch.cancel_batch(ctx.uow, ctx.deps, int(ctx.data["batch_id"]), actor)
    elif ctx.data.get("order_id"):
        await sale.cancel_order(ctx.uow, ctx.deps, int(ctx.data["order_id"]), actor)


def _is_list_file(ctx: Ctx) -> bool:
    return (ctx.inbound.filename or "").lower().endswith(LIST_FILE_SUFFIXES)


def _decode_list(payload: bytes) -> str | None:
    """A text file as people save it: UTF-8 (with or without BOM), UTF-16 with BOM (Excel's
    "Unicode text"), or GBK (Excel and Notepad on Chinese Windows)."""
    if payload.startswith((b"\xff\xfe", b"\xfe\xff")):
        encodings: tuple[str, ...] = ("utf-16",)
    else:
        encodings = ("utf-8-sig", "gbk")
    for encoding in encodings:
        try:
            return payload.decode(encoding)
        except UnicodeDecodeError:
            continue
    return None


async def prompt_batch_fix(ctx: Ctx) -> tuple[Reply, ...]:
    count = int(ctx.data.get("batch_valid", 0))
    options = (
        Option("batch.go_on", ctx.t("batch.go_on", count=count)),
        Option("batch.resend", ctx.t("batch.resend")),
    )
    return (Reply(ctx.t("batch.fix_prompt"), options),)


async def prompt_batch_photo(ctx: Ctx) -> tuple[Reply, ...]:
    count = len(ctx.data.get("batch_card_ids") or [])
    options = [Option("batch.cancel", ctx.t("batch.cancel"))]
    if count:
        options.insert(0, Option("batch.done", ctx.t("batch.done", count=count)))
    return (Reply(ctx.t("batch.photos_prompt", count=count, max=MAX_CARDS), tuple(options)),)


async def prompt_batch_secret(ctx: Ctx) -> tuple[Reply, ...]:
    card = await ctx.uow.cards.get(int(ctx.data["batch_pending_card"]))
    brand = render.brand_name(ctx.deps.catalog, card.brand, ctx.lang)
    return (Reply(ctx.t("sell.ask_secret", card=card.number_masked, brand=brand)),)


async def prompt_batch_quote(ctx: Ctx) -> tuple[Reply, ...]:
    batch_id = int(ctx.data["batch_id"])
    found = await ctx.uow.batches.get(batch_id)
    orders = [
        o for o in await ctx.uow.orders.for_batch(batch_id) if o.status is OrderStatus.QUOTED
    ]
    quotes = [await ctx.uow.quotes.get(o.quote_id) for o in orders]
    text = render.batch_quote_text(ctx.t, ctx.deps.catalog, found, orders, quotes)
    return (Reply(text, quote_options(ctx.t, f"B{batch_id}")),)


async def prompt_batch_payout_confirm(ctx: Ctx) -> tuple[Reply, ...]:
    batch_id = int(ctx.data["batch_id"])
    found = await ctx.uow.batches.get(batch_id)
    orders = await batch.open_orders(ctx.uow, batch_id)
    account = await ctx.uow.payout_accounts.get(int(ctx.data["account_id"]))
    text = ctx.t(
        "batch.confirm",
        batch=found.number,
        count=len(orders),
        amount=yuan(sum(o.payout_fen for o in orders)),
        method=ctx.t(f"method.{account.method.value}"),
        account=account.account_masked,
        holder=account.holder_name_masked,
    )
    return (Reply(text, payout_options(ctx.t, f"B{batch_id}", account.id)),)


async def cmd_sell_batch(ctx: Ctx) -> Step:
    """Sell several cards: photos (or typed numbers) one by one, then "done"."""
    owed = await _owed_step(ctx)
    if owed is not None:
        return owed
    replies: list[Reply] = []
    if await _withdraw_open_orders(ctx):
        replies.append(Reply(ctx.t("sell.previous_withdrawn")))
    _clear_sale(ctx)
    ctx.data["batch_card_ids"] = []
    intro = Reply(ctx.t("batch.photos_intro", max=MAX_CARDS))
    return Step(AWAIT_BATCH_PHOTO, (*replies, intro, *await prompt_batch_photo(ctx)))


async def on_batch_text(ctx: Ctx) -> Step:
    """A pasted list of cards, ``number secret`` per line."""
    return await _batch_from_list(ctx, ctx.inbound.text or "", "text")


async def on_batch_file(ctx: Ctx) -> Step:
    """A CSV or TXT file listing cards; the message is deleted (it carries secrets)."""
    payload = ctx.inbound.document or b""
    back = ctx.step if ctx.step in (AWAIT_CARD, AWAIT_BATCH_FIX) else AWAIT_CARD
    if len(payload) > MAX_LIST_FILE_BYTES:
        size = ctx.t("batch.file_too_large", kb=MAX_LIST_FILE_BYTES // 1024)
        return Step(back, (Reply(size, delete_inbound=True),))
    text = _decode_list(payload)
    if text is None:
        return Step(back, (Reply(ctx.t("batch.file_encoding"), delete_inbound=True),))
    return await _batch_from_list(ctx, text, "file")


async def _batch_from_list(ctx: Ctx, text: str, source: str) -> Step:
    """Check every line; bad ones are listed with their line numbers, and the user goes on
    with the good ones or sends the list again. Nothing is stored until they go on."""
    back = ctx.step if ctx.step in (AWAIT_CARD, AWAIT_BATCH_FIX) else AWAIT_CARD
    try:
        sale.check_not_suspended(ctx.deps, ctx.user)
    except AccountSuspended as suspended:
        _clear_sale(ctx)
        said = Reply(ctx.t(suspended.key, **suspended.params), delete_inbound=True)
        return Step(START, (said, *await prompt_start(ctx)))
    parsed = parse_batch(text, ctx.deps.catalog)
    if any(p.key == "batch.too_many" for p in parsed.problems):
        refused = Reply(ctx.t("batch.too_many_cards", max=MAX_CARDS), delete_inbound=True)
        return Step(back, (refused,))
    if not parsed.cards:
        report = render.batch_line_problems(ctx.t, parsed.problems)
        none = Reply(f"{report}\n{ctx.t('batch.no_valid_cards')}".strip(), delete_inbound=True)
        return Step(back, (none,))
    if parsed.problems:
        _clear_sale(ctx)
        good = "\n".join(f"{c.number} {c.secret or ''}".strip() for c in parsed.cards)
        ctx.data["batch_lines_enc"] = _seal(ctx, good)
        ctx.data["batch_source"] = source
        ctx.data["batch_valid"] = len(parsed.cards)
        refused_lines = Reply(
            ctx.t(
                "batch.lines_refused",
                bad=len(parsed.problems),
                good=len(parsed.cards),
                lines=render.batch_line_problems(ctx.t, parsed.problems),
            ),
            delete_inbound=True,
        )
        return Step(AWAIT_BATCH_FIX, (refused_lines, *await prompt_batch_fix(ctx)))
    _clear_sale(ctx)
    step = await _capture_and_quote(ctx, parsed.cards, source)
    received = Reply(ctx.t("batch.received", count=len(parsed.cards)), delete_inbound=True)
    return replace(step, replies=(received, *step.replies))


async def on_batch_fix_choice(ctx: Ctx) -> Step:
    if ctx.inbound.option == "batch.resend":
        for key in ("batch_lines_enc", "batch_source", "batch_valid"):
            ctx.data.pop(key, None)
        return Step(AWAIT_CARD, (Reply(ctx.t("batch.send_again")),))
    lines = parse_batch(_unseal(ctx, ctx.data.pop("batch_lines_enc")), ctx.deps.catalog)
    source = str(ctx.data.pop("batch_source", "text"))
    ctx.data.pop("batch_valid", None)
    return await _capture_and_quote(ctx, lines.cards, source)


async def _capture_and_quote(ctx: Ctx, lines: tuple[batch.BatchLine, ...], source: str) -> Step:
    card_ids: list[int] = []
    problems: list[batch.CardProblem] = []
    for line in lines:
        try:
            card = await batch.capture_listed_card(ctx.uow, ctx.deps, ctx.user, line)
        except (CardUnusable, CardNotRecognised, WrongSecret) as refusal:
            # Locked for this person, or a brand not bought now: the other cards go on.
            problems.append(batch.card_problem(mask_card_number(line.number), refusal))
            continue
        assert card.id is not None
        card_ids.append(card.id)
    return await _quote_batch_step(ctx, card_ids, source, None, problems)


async def _quote_batch_step(
    ctx: Ctx,
    card_ids: list[int],
    source: str,
    existing: Batch | None,
    problems: list[batch.CardProblem],
) -> Step:
    """Verify every card, price them together and show one quote; refused cards are listed."""
    try:
        quoted = await batch.quote_batch(
            ctx.uow, ctx.deps, ctx.user, card_ids, ctx.inbound.channel, source, existing
        )
    except AccountSuspended as suspended:
        _clear_sale(ctx)
        said = Reply(ctx.t(suspended.key, **suspended.params))
        return Step(START, (said, *await prompt_start(ctx)))
    problems = [*problems, *quoted.problems]
    report = (Reply(render.batch_card_problems(ctx.t, problems)),) if problems else ()
    if not quoted.orders:
        _clear_sale(ctx)
        return Step(AWAIT_CARD, (*report, Reply(ctx.t("batch.nothing_to_buy"))))
    _clear_sale(ctx)
    ctx.data["batch_id"] = quoted.batch.id
    ctx.data["batch_card_ids"] = [o.card_id for o in quoted.orders]
    return Step(AWAIT_BATCH_QUOTE, (*report, *await prompt_batch_quote(ctx)))


async def on_batch_quote_choice(ctx: Ctx) -> Step:
    batch_id = int(ctx.data["batch_id"])
    if _action(ctx) == "quote.decline":
        await batch.cancel_batch(ctx.uow, ctx.deps, batch_id, f"user:{ctx.user.id}")
        _clear_sale(ctx)
        return Step(START, (Reply(ctx.t("quote.declined")), *await prompt_start(ctx)))
    try:
        await batch.accept_batch(ctx.uow, ctx.deps, batch_id)
    except CardHeld:
        # Someone else accepted one of the cards first: price the others again.
        found = await ctx.uow.batches.get(batch_id)
        card_ids = [int(i) for i in ctx.data.get("batch_card_ids") or []]
        step = await _quote_batch_step(ctx, card_ids, found.source, found, [])
        return replace(step, replies=(Reply(ctx.t("batch.card_taken_requoted")), *step.replies))
    except QuoteExpired as expired:
        if expired.key == "quote.no_longer_open":
            _clear_sale(ctx)
            return Step(START, (Reply(ctx.t(expired.key)), *await prompt_start(ctx)))
        # The lock ran out: check every card again and show a fresh quote to agree to.
        found = await ctx.uow.batches.get(batch_id)
        card_ids = [int(i) for i in ctx.data.get("batch_card_ids") or []]
        step = await _quote_batch_step(ctx, card_ids, found.source, found, [])
        return replace(step, replies=(Reply(ctx.t("quote.expired_requoted")), *step.replies))
    return await _after_accept(ctx)


async def on_batch_payout_confirm(ctx: Ctx) -> Step:
    choice = _action(ctx)
    batch_id = int(ctx.data["batch_id"])
    if choice == "pay.change":
        return Step(AWAIT_METHOD, await prompt_method(ctx))
    if choice == "pay.cancel":
        await batch.cancel_batch(ctx.uow, ctx.deps, batch_id, f"user:{ctx.user.id}")
        _clear_sale(ctx)
        return Step(START, (Reply(ctx.t("sell.cancelled")), *await prompt_start(ctx)))
    account = await ctx.uow.payout_accounts.get(int(ctx.data["account_id"]))
    accepted = await batch.open_orders(ctx.uow, batch_id)
    if not accepted:
        found = await ctx.uow.batches.get(batch_id)
        if found.submitted_at is not None:
            return await _batch_settle_step(ctx, batch_id, ())
        _clear_sale(ctx)
        return Step(START, (Reply(ctx.t("quote.no_longer_open")), *await prompt_start(ctx)))
    total = sum(o.payout_fen for o in accepted)
    limit = await sale.level_2_needed_for(ctx.uow, ctx.deps, ctx.user, total)
    if limit is not None:
        ctx.data["level2_attempts"] = 0
        needed = Reply(ctx.t("identity.level2_needed", limit=yuan(limit)))
        return Step(AWAIT_LEVEL2_CARD, (needed, *await prompt_level2_card(ctx)))
    decided = await batch.submit_batch(ctx.uow, ctx.deps, batch_id, account)
    notes: list[Reply] = []
    for order, decision in decided:
        if order.status is OrderStatus.REVIEW:
            notes.append(Reply(ctx.t("risk.review", order=order.number)))
        elif order.status is OrderStatus.REJECTED:
            reasons = "\n".join(f"• {ctx.t(r)}" for r in decision.reasons)
            notes.append(
                Reply(ctx.t("batch.card_rejected", order=order.number, card=order.card_masked))
            )
            notes.append(Reply(ctx.t("risk.rejected", reasons=reasons)))
    if not any(o.status is OrderStatus.APPROVED for o, _ in decided):
        _clear_sale(ctx)
        return Step(START, (*notes, *await prompt_start(ctx)))
    return await _batch_settle_step(ctx, batch_id, tuple(notes))


async def _batch_settle_step(ctx: Ctx, batch_id: int, notes: tuple[Reply, ...]) -> Step:
    services, t = ctx.services, ctx.t
    channel, user_key = ctx.inbound.channel, ctx.inbound.user_id
    found = await ctx.uow.batches.get(batch_id)

    async def under_way() -> bool:
        async with services.uow_factory() as uow:
            orders = await uow.orders.for_batch(batch_id)
        return any(o.status in BATCH_UNDER_WAY for o in orders)

    async def pay() -> AfterCommit:
        was_under_way = await under_way()
        await batch.settle_batch(services.uow_factory, services.sale, batch_id, live=True)
        finished = was_under_way and not await under_way()
        outcome = (
            AfterCommit() if finished else await batch_settlement_outcome(services, t, batch_id)
        )
        return await _answer_after_settling(channel, user_key, services, outcome, finished)

    sending = Reply(ctx.t("batch.sending", batch=found.number))
    return Step(AWAIT_SETTLEMENT, (*notes, sending), after_commit=pay)


BATCH_UNDER_WAY = (OrderStatus.APPROVED, OrderStatus.REDEEMED, OrderStatus.PAYING)


async def batch_settlement_outcome(
    services: Services, t: Translator, batch_id: int
) -> AfterCommit:
    """One receipt for the whole batch once settlement has gone as far as it can for now;
    when a payout failed, the user is asked for another account for it."""
    async with services.uow_factory() as uow:
        return await batch_settlement_outcome_in(uow, services.sale, t, batch_id)


async def batch_settlement_outcome_in(
    uow: UnitOfWork, deps: SaleDeps, t: Translator, batch_id: int
) -> AfterCommit:
    """:func:`batch_settlement_outcome` inside an open unit of work."""
    receipt = await batch.batch_receipt(uow, batch_id)
    text = render.batch_receipt_text(t, deps.catalog, receipt)
    replies = [Reply(text)]
    failed = [line for line in receipt.lines if line.status is OrderStatus.PAYOUT_FAILED]
    if failed:
        payout = await uow.payouts.for_order(failed[0].order_id)
        reason = render.payout_failure(t, payout.failure_reason if payout else None)
        methods = tuple(Option(f"method.{m.value}", t(f"method.{m.value}")) for m in PayoutMethod)
        return AfterCommit(
            (
                *replies,
                Reply(t("pay.failed", order=failed[0].order_number, reason=reason)),
                Reply(t("payout.ask_method_again"), methods),
            ),
            to=AWAIT_METHOD,
            data={**_cleared_data(), "order_id": failed[0].order_id},
        )
    return AfterCommit((*replies, menu(t)), to=START, data=_cleared_data())


async def on_batch_photo(ctx: Ctx) -> Step:
    """One more card, from a photo read like the single sale's."""
    reading = ctx.reading
    if reading is None:
        image = ctx.inbound.image if ctx.inbound.image is not None else ctx.inbound.document
        reading = await ctx.services.reader.read(image or b"")
    recognised, problem = _recognise(ctx, reading)
    if problem is not None:
        return Step(AWAIT_BATCH_PHOTO, (problem, *await prompt_batch_photo(ctx)))
    if len(recognised) > 1:
        ctx.data["choices_enc"] = _seal(ctx, "\n".join(t for _, t in recognised))
        ctx.data["choices"] = [(label, i) for i, (label, _) in enumerate(recognised)]
        return Step(AWAIT_BATCH_CARD_CHOICE, await prompt_card_choice(ctx))
    return await _batch_add_card(ctx, recognised[0][1], from_photo=True)


async def on_batch_typed(ctx: Ctx) -> Step:
    """A card number typed between photos."""
    return await _batch_add_card(ctx, ctx.inbound.text or "", from_photo=False)


async def on_batch_card_choice(ctx: Ctx) -> Step:
    index = int(str(ctx.inbound.option).split(".")[1])
    numbers = _unseal(ctx, ctx.data.pop("choices_enc")).split("\n")
    ctx.data.pop("choices", None)
    return await _batch_add_card(ctx, numbers[index], from_photo=True)


async def _batch_add_card(ctx: Ctx, text: str, from_photo: bool) -> Step:
    ids = [int(i) for i in ctx.data.get("batch_card_ids") or []]
    if len(ids) >= MAX_CARDS:
        full = Reply(ctx.t("batch.too_many_cards", max=MAX_CARDS))
        return Step(AWAIT_BATCH_PHOTO, (full, *await prompt_batch_photo(ctx)))
    card = await sale.capture_card(ctx.uow, ctx.deps, ctx.user, text)
    for other in ids:
        if (await ctx.uow.cards.get(other)).number_fp == card.number_fp:
            # Rolls the capture back: the card is in the batch already.
            raise UserError("batch.card_twice", card=card.number_masked)
    brand = ctx.deps.catalog.get(card.brand)
    seen = Reply(
        ctx.t(
            "sell.card_read" if from_photo else "sell.card_typed",
            brand=brand.name(ctx.lang),
            card=card.number_masked,
        )
    )
    if brand.has_secret:
        ctx.data["batch_pending_card"] = card.id
        return Step(AWAIT_BATCH_SECRET, (seen, *await prompt_batch_secret(ctx)))
    ctx.data["batch_card_ids"] = [*ids, card.id]
    added = Reply(ctx.t("batch.card_added", count=len(ids) + 1))
    return Step(AWAIT_BATCH_PHOTO, (seen, added, *await prompt_batch_photo(ctx)))


async def on_batch_secret(ctx: Ctx) -> Step:
    """The secret of the card just added: stored encrypted, its message deleted."""
    card = await ctx.uow.cards.get(int(ctx.data["batch_pending_card"]))
    await sale.attach_secret(ctx.uow, ctx.deps, card, ctx.inbound.text or "")
    ids = [int(i) for i in ctx.data.get("batch_card_ids") or []]
    ctx.data["batch_card_ids"] = [*ids, card.id]
    ctx.data.pop("batch_pending_card", None)
    stored = Reply(ctx.t("sell.secret_stored"), delete_inbound=True)
    added = Reply(ctx.t("batch.card_added", count=len(ids) + 1))
    return Step(AWAIT_BATCH_PHOTO, (stored, added, *await prompt_batch_photo(ctx)))


async def on_batch_photo_choice(ctx: Ctx) -> Step:
    if ctx.inbound.option == "batch.cancel":
        _clear_sale(ctx)
        return Step(START, (Reply(ctx.t("sell.cancelled")), *await prompt_start(ctx)))
    ids = [int(i) for i in ctx.data.get("batch_card_ids") or []]
    return await _quote_batch_step(ctx, ids, "photos", None, [])


# --------------------------------------------------------------------------------------------
# Small helpers: values that must survive between messages are sealed with the vault


def _action(ctx: Ctx) -> str:
    """An option's action without the ids it carries (``pay.confirm:12:3`` → ``pay.confirm``)."""
    return str(ctx.inbound.option).split(":", 1)[0]


def _seal(ctx: Ctx, value: str) -> str:
    return base64.b64encode(ctx.deps.vault.encrypt(value, ctx.conversation_key())).decode()


def _unseal(ctx: Ctx, sealed: str) -> str:
    return ctx.deps.vault.decrypt(base64.b64decode(sealed), ctx.conversation_key())


# --------------------------------------------------------------------------------------------
# The graph

TEXT, PHOTO, FILE, CHOICE = InputKind.TEXT, InputKind.IMAGE, InputKind.DOCUMENT, InputKind.OPTION

TABLE: dict[tuple[str, InputKind], StepHandler] = {
    (START, TEXT): on_text_at_start,
    (START, PHOTO): on_card_photo,
    (START, FILE): on_card_document,
    (START, CHOICE): on_menu,
    (AWAIT_CARD, TEXT): on_card_number,
    (AWAIT_CARD, PHOTO): on_card_photo,
    (AWAIT_CARD, FILE): on_card_document,
    (AWAIT_CARD_CHOICE, CHOICE): on_card_choice,
    (AWAIT_SECRET, TEXT): on_secret,
    (AWAIT_QUOTE, CHOICE): on_quote_choice,
    (AWAIT_CONSENT, CHOICE): on_consent,
    (AWAIT_NAME, TEXT): on_name,
    (AWAIT_ID, TEXT): on_id_number,
    (AWAIT_PHONE, TEXT): on_phone,
    (AWAIT_METHOD, CHOICE): on_method,
    (AWAIT_ACCOUNT, TEXT): on_account,
    (AWAIT_BANK_CONFIRM, CHOICE): on_bank_confirm,
    (AWAIT_PAYOUT_CONFIRM, CHOICE): on_payout_confirm,
    (AWAIT_SETTLEMENT, CHOICE): on_settlement_status,
    (AWAIT_LEVEL2_CARD, TEXT): on_level2_card,
    (AWAIT_LEVEL2_CARD, CHOICE): on_level2_choice,
    (AWAIT_BATCH_FIX, CHOICE): on_batch_fix_choice,
    (AWAIT_BATCH_FIX, TEXT): on_batch_text,
    (AWAIT_BATCH_FIX, FILE): on_card_document,
    (AWAIT_BATCH_PHOTO, PHOTO): on_batch_photo,
    (AWAIT_BATCH_PHOTO, FILE): on_batch_photo,
    (AWAIT_BATCH_PHOTO, TEXT): on_batch_typed,
    (AWAIT_BATCH_PHOTO, CHOICE): on_batch_photo_choice,
    (AWAIT_BATCH_CARD_CHOICE, CHOICE): on_batch_card_choice,
    (AWAIT_BATCH_SECRET, TEXT): on_batch_secret,
    (AWAIT_BATCH_QUOTE, CHOICE): on_batch_quote_choice,
    (AWAIT_WITHDRAW_CONFIRM, CHOICE): on_withdraw_confirm,
}

COMMANDS: dict[str, StepHandler] = {
    "start": cmd_start,
    "help": cmd_help,
    "sell": cmd_sell,
    "prices": cmd_prices,
    "orders": cmd_orders,
    "cancel": cmd_cancel,
}

PROMPTS = {
    START: prompt_start,
    AWAIT_CARD: prompt_card,
    AWAIT_CARD_CHOICE: prompt_card_choice,
    AWAIT_SECRET: prompt_secret,
    AWAIT_QUOTE: prompt_quote,
    AWAIT_CONSENT: prompt_consent,
    AWAIT_NAME: prompt_name,
    AWAIT_ID: prompt_id,
    AWAIT_PHONE: prompt_phone,
    AWAIT_METHOD: prompt_method,
    AWAIT_ACCOUNT: prompt_account,
    AWAIT_BANK_CONFIRM: prompt_bank_confirm,
    AWAIT_PAYOUT_CONFIRM: prompt_payout_confirm,
    AWAIT_SETTLEMENT: prompt_settlement,
    AWAIT_LEVEL2_CARD: prompt_level2_card,
    AWAIT_BATCH_FIX: prompt_batch_fix,
    AWAIT_BATCH_PHOTO: prompt_batch_photo,
    AWAIT_BATCH_CARD_CHOICE: prompt_card_choice,
    AWAIT_BATCH_SECRET: prompt_batch_secret,
    AWAIT_BATCH_QUOTE: prompt_batch_quote,
    AWAIT_WITHDRAW_CONFIRM: prompt_withdraw_confirm,
}


SENSITIVE = frozenset(
    {
        AWAIT_SECRET,
        AWAIT_NAME,  # a real name is personal data: never in the transcript, never to staff
        AWAIT_ID,
        AWAIT_PHONE,
        AWAIT_ACCOUNT,
        AWAIT_LEVEL2_CARD,
        AWAIT_BATCH_FIX,  # what comes here is a corrected list, secrets and all
        AWAIT_BATCH_SECRET,
    }
)


def sell_flow() -> Flow:
    """The sell conversation as one table."""
    return Flow(table=TABLE, commands=COMMANDS, prompts=PROMPTS, sensitive=SENSITIVE)
