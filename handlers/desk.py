"""The desk: people behind the bot. Tickets, staff takeover, roles, rates from chat.

The desk sees every message before the sell flow (:meth:`Desk.intercept`) and takes it when:

- it is a staff or admin command and the sender holds that role — for anyone else the message
  goes on to the flow, which answers it exactly like an unknown command;
- it is a desk command or button open to everyone (``人工``/``/human``, a ticket reason,
  "this order has a problem", and the commands other modules add, such as ``/subscribe``);
- a staff member who holds a ticket writes: the text goes to that ticket's user;
- a user whose ticket is taken writes: the flow is paused and the message goes to the staff
  member (redacted: staff never read a full card, ID or bank number, nor a secret).

Messages to people other than the sender are outbox messages, written in the same transaction
as their cause and delivered by each channel's worker (``bot/outbox.py``), so a relay is never
lost and never made twice by a redelivered message. Opening or taking a ticket never changes the
user's step; resolving or releasing it tells the user and repeats what that step was waiting
for, so the conversation resumes where it stopped (or at a fresh quote, after a re-quote).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from core import review, sale
from core.batch import holds_card_line
from core.broadcast import find_brand, parse_send_time
from core.errors import ExternalError, PreconditionFailed, UserError
from core.masking import redact_for_staff
from core.messages import Inbound, InputKind, Option, Reply
from core.model import ConversationState, Order, OrderStatus, RateTable, Role, User
from core.money import percent, yuan
from core.ports import UnitOfWork
from core.pricing import RateTableError, pricing_from_dict, pricing_to_dict, with_band_rate
from core.tickets import (
    AlertKind,
    Outcome,
    Reason,
    Ticket,
    TicketError,
    TicketMessage,
    TicketStatus,
    first_response_due,
    parse_actor,
    priority_for,
    queue_order,
    resolution_due,
    sla_alerts,
    with_alerts_sent,
)
from core.tickets import release as release_ticket
from core.tickets import resolve as resolve_ticket
from core.tickets import take as take_ticket
from core.tickets import transfer as transfer_ticket
from handlers import render
from handlers.engine import (
    START,
    TRANSCRIPT_KEY,
    AfterCommit,
    Conversation,
    Ctx,
    Services,
    Step,
)
from handlers.i18n import Translator, resolve_language

log = logging.getLogger(__name__)

__all__ = ["Desk", "DeskCtx", "DeskHandler", "Role", "check_sla", "run_desk"]

_RANK = {Role.CUSTOMER: 0, Role.STAFF: 1, Role.ADMIN: 2}
_TICKET_ID = re.compile(r"^[#Tt]?(\d{1,12})$")
_OUR_ORDER = re.compile(r"CB0*(\d{1,12})", re.IGNORECASE)
_ORDER_ID = re.compile(r"^(?:CB)?0*(\d{1,12})$", re.IGNORECASE)
# How recently an order must have moved for a ticket opened without naming one to be about it.
RECENT_ORDER = timedelta(days=3)
EVIDENCE_LINES = 20
# A user's steps the quote screen belongs to (the sell flow's names).
AWAIT_QUOTE = "await_quote"


@dataclass
class DeskCtx:
    """What a desk command sees. ``actor`` (``<channel>:<user id>``) names the sender in the
    audit log; the unit of work is open and committed after the handler returns."""

    uow: UnitOfWork
    services: Services
    inbound: Inbound
    user: User
    role: Role
    actor: str
    t: Translator
    now: datetime
    data: dict[str, Any] = field(default_factory=dict)  # the sender's conversation data
    step: str = ""  # the sender's conversation step
    notices: list[tuple[str, Reply]] = field(default_factory=list)  # queued by notify()

    @property
    def args(self) -> str:
        return self.inbound.args

    async def notify(self, actor: str, reply: Reply) -> None:
        """Queue a message for someone else (delivered after the commit)."""
        channel, _, key = actor.partition(":")
        await self.uow.outbox.add(channel, key, [reply], self.now)
        self.notices.append((actor, reply))


DeskHandler = Callable[[DeskCtx], Awaitable[list[Reply]]]


def actor_of(inbound: Inbound) -> str:
    """``<channel>:<user id>``: how staff and admins are named in settings and the audit log."""
    return f"{inbound.channel}:{inbound.user_id}"


async def role_of(uow: UnitOfWork, services: Services, actor: str) -> Role:
    """Configured roles (``CARDBOT_STAFF``/``CARDBOT_ADMINS``) and roles granted in chat."""
    configured = services.desk.configured_role(actor)
    if configured is Role.ADMIN:
        return configured
    granted = await uow.role_grants.role_of(actor)
    if granted is not None and _RANK[granted] > _RANK[configured]:
        return granted
    return configured


async def staff_actors(
    uow: UnitOfWork, services: Services, admins_only: bool = False
) -> list[str]:
    """Everyone who works the desk (or only the admins), configured and granted."""
    policy = services.desk
    people = set(policy.admins) if admins_only else set(policy.staff) | set(policy.admins)
    for actor, role in await uow.role_grants.holders():
        if role is Role.ADMIN or not admins_only:
            people.add(actor)
    return sorted(people)


async def translator_for(uow: UnitOfWork, actor: str, at: datetime) -> Translator:
    """The language someone last spoke to us in (Chinese for someone new). Looking does not
    make them a user: a staff group must never become a broadcast recipient."""
    channel, _, key = actor.partition(":")
    return Translator(resolve_language(await uow.users.language_of(channel, key)))


def _ticket_id(text: str) -> int | None:
    match = _TICKET_ID.match(text.strip())
    return int(match.group(1)) if match else None


def _minutes(delta: timedelta) -> int:
    return max(0, int(delta.total_seconds() // 60))


class Desk:
    """The interceptor in front of the sell flow (see the module docstring)."""

    def __init__(
        self,
        *,
        admin_commands: Mapping[str, DeskHandler] | None = None,
        user_commands: Mapping[str, DeskHandler] | None = None,
        admin_image: Callable[[DeskCtx], Awaitable[list[Reply] | None]] | None = None,
    ) -> None:
        self.staff_commands: dict[str, DeskHandler] = {
            "queue": cmd_queue,
            "take": cmd_take,
            "note": cmd_note,
            "order": cmd_order,
            "resolve": self.cmd_resolve,
            "release": self.cmd_release,
            "transfer": cmd_transfer,
        }
        self.admin_commands: dict[str, DeskHandler] = {
            "grant": cmd_grant,
            "revoke": self.cmd_revoke,
            "rate": cmd_rate,
            "rates": cmd_rates,
            **(admin_commands or {}),
        }
        self.user_commands: dict[str, DeskHandler] = {
            "human": cmd_human,
            **(user_commands or {}),
        }
        self.admin_image = admin_image
        self._conversation: Conversation | None = None

    # ----------------------------------------------------------------------------------------
    # Routing

    async def intercept(self, ctx: Ctx, conversation: Conversation) -> Step | None:
        """Take the message (a desk command, a relay) or leave it to the flow (None)."""
        self._conversation = conversation
        inbound = ctx.inbound
        actor = actor_of(inbound)
        role = await role_of(ctx.uow, ctx.services, actor)
        d = DeskCtx(
            ctx.uow,
            ctx.services,
            inbound,
            ctx.user,
            role,
            actor,
            ctx.t,
            ctx.deps.clock.now(),
            ctx.data,
            ctx.step,
        )
        kind = inbound.kind
        if kind is InputKind.COMMAND:
            name = inbound.command or ""
            handler = self._command(role, name)
            if handler is not None:
                replies = await handler(d)
                if name in self.user_commands:
                    replies = await self._then_where_they_were(ctx, conversation, replies)
                return self._step(ctx, d, replies)
        if role is not Role.CUSTOMER:
            relayed = await self._from_staff(ctx, d)
            if relayed is not None:
                return relayed
        ticket = await ctx.uow.tickets.active_for_user(ctx.user.id)
        if ticket is not None and ticket.status is TicketStatus.TAKEN:
            return self._step(ctx, d, await self._from_user(ctx, d, ticket))
        if kind is InputKind.OPTION and (inbound.option or "").startswith("desk."):
            replies = await on_desk_option(d, inbound.option or "")
            replies = await self._then_where_they_were(ctx, conversation, replies)
            return self._step(ctx, d, replies)
        return None

    @staticmethod
    async def _then_where_they_were(
        ctx: Ctx, conversation: Conversation, replies: list[Reply]
    ) -> list[Reply]:
        """A user's desk answer that asks nothing is followed by what their step waits for,
        so the options on their screen are the ones that work."""
        if any(r.options for r in replies):
            return replies
        return [*replies, *await conversation.reprompt(ctx)]

    def _command(self, role: Role, name: str) -> DeskHandler | None:
        handler: DeskHandler | None = None
        if role is Role.ADMIN:
            handler = self.admin_commands.get(name)
        if handler is None and role is not Role.CUSTOMER:
            handler = self.staff_commands.get(name)
        return handler or self.user_commands.get(name)

    @staticmethod
    def _step(ctx: Ctx, d: DeskCtx, replies: list[Reply]) -> Step:
        if not d.notices:
            return Step(ctx.step, tuple(replies))
        signal = ctx.services.outbox_queued

        async def wake() -> AfterCommit:
            signal.set()
            return AfterCommit()

        return Step(ctx.step, tuple(replies), after_commit=wake)

    async def _from_staff(self, ctx: Ctx, d: DeskCtx) -> Step | None:
        """A staff member's message: an image for an admin's broadcast draft, or words for
        the user of the ticket they hold."""
        kind = d.inbound.kind
        if kind is InputKind.IMAGE and d.role is Role.ADMIN and self.admin_image is not None:
            attached = await self.admin_image(d)
            if attached is not None:
                return self._step(ctx, d, attached)
        if kind is InputKind.COMMAND or (kind is InputKind.OPTION and ctx.typed is None):
            return None
        ticket = await d.uow.tickets.current_for(d.actor)
        if ticket is None:
            return None
        if kind in (InputKind.IMAGE, InputKind.DOCUMENT):
            return self._step(ctx, d, [Reply(d.t("desk.text_only"))])
        text = (ctx.typed or d.inbound.text or "").strip()
        assert ticket.id is not None
        await d.uow.tickets.add_message(TicketMessage(ticket.id, d.now, d.actor, text))
        user_t = Translator(resolve_language((await d.uow.users.get(ticket.user_id)).language))
        await d.notify(
            _user_actor(ticket), Reply(user_t("desk.staff_says", ticket=ticket.number, text=text))
        )
        await d.uow.audit.append(
            d.now, d.actor, "ticket.replied", f"ticket:{ticket.id}", {"chars": len(text)}
        )
        held = [t for t in await d.uow.tickets.active() if t.assignee == d.actor]
        if len(held) > 1:
            # Holding several: say where this went (/take N switches).
            return self._step(ctx, d, [Reply(d.t("desk.replied_to", ticket=ticket.number))])
        return self._step(ctx, d, [])

    async def _from_user(self, ctx: Ctx, d: DeskCtx, ticket: Ticket) -> list[Reply]:
        """The flow is paused: what the user says goes to the staff member, redacted."""
        assert ticket.id is not None and ticket.assignee is not None
        kind = d.inbound.kind
        if kind is InputKind.OPTION and ctx.typed is None:
            return [Reply(d.t("desk.paused", ticket=ticket.number))]
        staff_t = await translator_for(d.uow, ticket.assignee, d.now)
        if kind in (InputKind.IMAGE, InputKind.DOCUMENT):
            await d.notify(
                ticket.assignee, Reply(staff_t("desk.user_sent_file", ticket=ticket.number))
            )
            return [Reply(d.t("desk.files_not_relayed"))]
        if self._conversation is not None and ctx.step in self._conversation.flow.sensitive:
            # The user's step waits for a secret, an ID or an account: whatever they type now
            # may be one. Staff hear that something was said, never what; the chat drops it.
            await d.notify(
                ticket.assignee, Reply(staff_t("desk.user_said_hidden", ticket=ticket.number))
            )
            return [Reply(d.t("desk.hidden_from_staff"), delete_inbound=True)]
        if self._conversation is not None and self._conversation.holds_secret(ctx):
            # A card number and its secret, typed at a step that does not ask for one.
            said = staff_t("privacy.user_sent_card_line", ticket=ticket.number)
            await d.notify(ticket.assignee, Reply(said))
            return [Reply(d.t("privacy.card_line_hidden"), delete_inbound=True)]
        typed = ctx.typed if ctx.typed is not None else d.inbound.text or ""
        if kind is InputKind.COMMAND and ctx.typed is None:
            typed = f"/{d.inbound.command} {d.inbound.args}".strip()
        text = redact_for_staff(typed.strip(), ctx.deps.catalog)
        await d.uow.tickets.add_message(TicketMessage(ticket.id, d.now, "user", text))
        await d.notify(
            ticket.assignee, Reply(staff_t("desk.user_says", ticket=ticket.number, text=text))
        )
        return []

    # ----------------------------------------------------------------------------------------
    # Commands that need the flow (to repeat the user's step)

    async def cmd_resolve(self, d: DeskCtx) -> list[Reply]:
        """``/resolve N OUTCOME message``."""
        parts = d.args.split(maxsplit=2)
        ticket_id = _ticket_id(parts[0]) if parts else None
        outcome = _outcome(parts[1]) if len(parts) > 1 else None
        if ticket_id is None or outcome is None:
            return [Reply(d.t("desk.resolve_usage"))]
        note = parts[2].strip() if len(parts) > 2 else ""
        ticket, state = await _lock_ticket_and_user(d, ticket_id)
        resolved = resolve_ticket(ticket, _acting_as(d, ticket), outcome, note, d.now)
        user = await d.uow.users.get(ticket.user_id)
        user_t = Translator(resolve_language(user.language))
        order = await d.uow.orders.get(ticket.order_id) if ticket.order_id else None
        busy = _busy_elsewhere(state, ticket.order_id)
        if outcome is Outcome.REQUOTE and busy:
            # A new quote would take them away from what they are doing now.
            raise TicketError("desk.user_busy", ticket=ticket.number)
        to_step, data_update = await self._apply_outcome(d, ticket, outcome, note, order, user)
        if busy:
            to_step, data_update = None, {}
        await d.uow.tickets.update(resolved)
        assert ticket.id is not None
        await d.uow.tickets.add_message(
            TicketMessage(ticket.id, d.now, d.actor, f"[{outcome.value}] {note}".strip())
        )
        await d.uow.audit.append(
            d.now,
            d.actor,
            "ticket.resolved",
            f"ticket:{ticket.id}",
            {"outcome": outcome.value, "order": ticket.order_id, "note_chars": len(note)},
        )
        said = [
            Reply(
                user_t(
                    "desk.resolved",
                    ticket=ticket.number,
                    outcome=user_t(f"desk.outcome.{outcome.value}"),
                )
            )
        ]
        if note:
            said.append(Reply(user_t("desk.staff_says", ticket=ticket.number, text=note)))
        await self._resume_user(d, ticket, user, said, to_step, data_update)
        return [Reply(d.t("desk.resolved_staff", ticket=ticket.number, outcome=outcome.value))]

    async def _apply_outcome(
        self,
        d: DeskCtx,
        ticket: Ticket,
        outcome: Outcome,
        note: str,
        order: Order | None,
        user: User,
    ) -> tuple[str | None, dict[str, Any]]:
        """Carry out the outcome on the order; the user's new step and data, if they change."""
        deps = d.services.sale
        if outcome is Outcome.ANSWERED:
            return None, {}
        if outcome is Outcome.REJECT and (order is None or order.status is not OrderStatus.REVIEW):
            return None, {}
        if order is None or order.id is None:
            raise TicketError("desk.no_order", ticket=ticket.number)
        if order.user_id != ticket.user_id:
            raise TicketError("desk.no_order", ticket=ticket.number)
        if outcome in (Outcome.APPROVE, Outcome.REJECT):
            if outcome is Outcome.REJECT and not note:
                raise TicketError("desk.reject_needs_note", ticket=ticket.number)
            try:
                await review.decide(
                    d.uow, deps.clock, order.id, outcome is Outcome.APPROVE, d.actor, note
                )
            except PreconditionFailed:
                raise TicketError("desk.not_in_review", order=order.number) from None
            return None, {}
        if outcome is Outcome.REFUND:
            await sale.cancel_order(d.uow, deps, order.id, d.actor)
            return START, {"order_id": None, "card_id": None}
        # Re-quote: the card is checked again and priced at today's rates; the user decides.
        if order.status not in REQUOTABLE:
            raise TicketError("desk.cannot_requote", order=order.number)
        if order.status in sale.CANCELLABLE:
            await sale.cancel_order(d.uow, deps, order.id, d.actor)
        card = await d.uow.cards.get(order.card_id)
        try:
            card = await sale.verify_card(d.uow, deps, card)
            _, fresh = await sale.quote_for(d.uow, deps, user, card, ticket.channel)
        except UserError as refusal:
            raise TicketError("desk.requote_failed", order=order.number, why=refusal.key) from None
        except ExternalError as failure:
            why = type(failure).__name__
            raise TicketError("desk.requote_failed", order=order.number, why=why) from None
        return AWAIT_QUOTE, {"order_id": fresh.id, "card_id": card.id, "requoted_by": d.actor}

    async def _resume_user(
        self,
        d: DeskCtx,
        ticket: Ticket,
        user: User,
        said: list[Reply],
        to_step: str | None,
        data_update: Mapping[str, Any],
    ) -> None:
        """Tell the user and put their conversation back where it stopped (or at ``to_step``),
        with the options of what it now waits for on their screen."""
        conversation = self._conversation
        assert conversation is not None
        state = await d.uow.conversations.get(ticket.channel, ticket.user_key, lock=True)
        step = to_step or (state.step if state else START)
        data = dict(state.data) if state else {}
        data.update({k: v for k, v in data_update.items() if v is not None})
        for key in [k for k, v in data_update.items() if v is None]:
            data.pop(key, None)
        user_t = Translator(resolve_language(user.language))
        user_ctx = Ctx(
            uow=d.uow,
            services=d.services,
            inbound=Inbound(ticket.channel, ticket.user_key, ticket.user_key, "desk"),
            user=user,
            t=user_t,
            step=step,
            data=data,
        )
        prompt = await conversation.reprompt(user_ctx)
        options = next((r.options for r in reversed(prompt) if r.options), ())
        data["_options"] = [o.id for o in options]
        if state is not None or to_step is not None:
            base = state or ConversationState(ticket.channel, ticket.user_key, START)
            await d.uow.conversations.save(replace(base, step=step, data=data, updated_at=d.now))
        # One message, not four: WeChat allows only a few customer-service messages per
        # user message, and the options must arrive with the text they belong to.
        parts = [*said, Reply(user_t("desk.left_resume")), *prompt]
        await d.notify(_user_actor(ticket), Reply("\n\n".join(r.text for r in parts), options))

    async def cmd_release(self, d: DeskCtx) -> list[Reply]:
        """``/release N``: back to the queue; the user's flow resumes meanwhile. An admin may
        release anyone's ticket (its holder has gone)."""
        ticket_id = _ticket_id(d.args)
        if ticket_id is None:
            return [Reply(d.t("desk.release_usage"))]
        ticket, _ = await _lock_ticket_and_user(d, ticket_id)
        await self._release(d, ticket, _acting_as(d, ticket))
        return [Reply(d.t("desk.released_staff", ticket=ticket.number))]

    async def _release(self, d: DeskCtx, ticket: Ticket, holder: str) -> None:
        await d.uow.tickets.update(release_ticket(ticket, holder))
        await d.uow.audit.append(
            d.now, d.actor, "ticket.released", f"ticket:{ticket.id}", {"holder": holder}
        )
        user = await d.uow.users.get(ticket.user_id)
        user_t = Translator(resolve_language(user.language))
        said = [Reply(user_t("desk.released", ticket=ticket.number))]
        await self._resume_user(d, ticket, user, said, None, {})

    async def cmd_revoke(self, d: DeskCtx) -> list[Reply]:
        """``/revoke ACTOR``: a granted role taken away; their taken tickets go back."""
        target = parse_actor(d.args)
        if target is None:
            return [Reply(d.t("desk.revoke_usage"))]
        if d.services.desk.configured_role(target) is not Role.CUSTOMER:
            return [Reply(d.t("desk.role_configured", actor=target))]
        if not await d.uow.role_grants.revoke(target):
            return [Reply(d.t("desk.no_grant", actor=target))]
        await d.uow.audit.append(d.now, d.actor, "role.revoked", f"actor:{target}", {})
        released = 0
        for candidate in await d.uow.tickets.active():
            if candidate.assignee != target or candidate.id is None:
                continue
            ticket, _ = await _lock_ticket_and_user(d, candidate.id)
            if ticket.assignee == target and ticket.status is TicketStatus.TAKEN:
                await self._release(d, ticket, target)
                released += 1
        return [Reply(d.t("desk.revoked", actor=target, released=released))]


async def _lock_ticket_and_user(
    d: DeskCtx, ticket_id: int
) -> tuple[Ticket, ConversationState | None]:
    """The ticket and its user's conversation, both locked — the conversation first, in the
    order the user's own messages take them, so the two never wait for each other."""
    ticket = await _ticket(d, ticket_id)
    state = await d.uow.conversations.get(ticket.channel, ticket.user_key, lock=True)
    return await _ticket(d, ticket_id, lock=True), state


def _acting_as(d: DeskCtx, ticket: Ticket) -> str:
    """Who acts on a taken ticket: its holder; an admin may act for any holder."""
    if d.role is Role.ADMIN and ticket.assignee:
        return ticket.assignee
    return d.actor


def _busy_elsewhere(state: ConversationState | None, order_id: int | None) -> bool:
    """Whether the user is in the middle of something other than this ticket's order."""
    if state is None or state.step == START:
        return False
    return state.data.get("order_id") != order_id


# Orders a re-quote may replace: nothing has been redeemed or paid yet.
REQUOTABLE = frozenset(
    {
        OrderStatus.QUOTED,
        OrderStatus.ACCEPTED,
        OrderStatus.APPROVED,
        OrderStatus.REVIEW,
        OrderStatus.EXPIRED,
        OrderStatus.CANCELLED,
    }
)

_OUTCOME_WORDS = {
    "requote": Outcome.REQUOTE,
    "re-quote": Outcome.REQUOTE,
    "重新报价": Outcome.REQUOTE,
    "approve": Outcome.APPROVE,
    "批准": Outcome.APPROVE,
    "通过": Outcome.APPROVE,
    "refund": Outcome.REFUND,
    "退回": Outcome.REFUND,
    "退卡": Outcome.REFUND,
    "reject": Outcome.REJECT,
    "驳回": Outcome.REJECT,
    "拒绝": Outcome.REJECT,
    "answered": Outcome.ANSWERED,
    "done": Outcome.ANSWERED,
    "已解答": Outcome.ANSWERED,
}


def _outcome(word: str) -> Outcome | None:
    return _OUTCOME_WORDS.get(word.strip().lower())


def _user_actor(ticket: Ticket) -> str:
    return f"{ticket.channel}:{ticket.user_key}"


async def _ticket(d: DeskCtx, ticket_id: int, lock: bool = False) -> Ticket:
    ticket = await d.uow.tickets.get(ticket_id, lock=lock)
    if ticket is None:
        raise TicketError("desk.no_such_ticket", ticket=f"T{ticket_id}")
    return ticket


# --------------------------------------------------------------------------------------------
# Users: asking for a person


REASON_OPTIONS = (Reason.QUOTE, Reason.PAYOUT, Reason.CARD, Reason.OTHER)
_PENDING_ORDER = "_desk_order"
_PENDING_DETAIL = "_desk_detail"


async def cmd_human(d: DeskCtx) -> list[Reply]:
    """``人工``/``/human [what happened]``: ask what it is about, then open a ticket."""
    existing = await d.uow.tickets.active_for_user(d.user.id)
    if existing is not None:
        return [await _ticket_status(d, existing)]
    catalog = d.services.sale.catalog
    hidden = holds_card_line(d.args, catalog)  # a card and its secret: kept as hidden
    d.data[_PENDING_DETAIL] = "[hidden]" if hidden else redact_for_staff(d.args, catalog)[:500]
    return [_ask_reason(d)]


def _ask_reason(d: DeskCtx) -> Reply:
    return Reply(
        d.t("desk.ask_reason"),
        tuple(
            Option(f"desk.reason:{r.value}", d.t(f"desk.reason.{r.value}")) for r in REASON_OPTIONS
        ),
    )


async def on_desk_option(d: DeskCtx, option: str) -> list[Reply]:
    """The desk's buttons: talk to a person, this order has a problem, the reason."""
    action, _, value = option.partition(":")
    if action == "desk.human":
        return await cmd_human(d)
    if action == "desk.order":
        existing = await d.uow.tickets.active_for_user(d.user.id)
        if existing is not None:
            return [await _ticket_status(d, existing)]
        order_id = int(value) if value.isdigit() else None
        order = await d.uow.orders.get(order_id) if order_id is not None else None
        if order is None or order.user_id != d.user.id:
            return [Reply(d.t("error.option_gone"))]
        d.data[_PENDING_ORDER] = order.id
        return [_ask_reason(d)]
    if action == "desk.reason" and value in {r.value for r in Reason}:
        existing = await d.uow.tickets.active_for_user(d.user.id)
        if existing is not None:
            return [await _ticket_status(d, existing)]
        return await open_ticket(d, Reason(value))
    return [Reply(d.t("error.option_gone"))]


async def _ticket_status(d: DeskCtx, ticket: Ticket) -> Reply:
    if ticket.status is TicketStatus.TAKEN:
        return Reply(d.t("desk.already_with_person", ticket=ticket.number))
    ahead = [
        t for t in queue_order(list(await d.uow.tickets.active())) if t.status is TicketStatus.OPEN
    ]
    position = next((i + 1 for i, t in enumerate(ahead) if t.id == ticket.id), len(ahead))
    return Reply(d.t("desk.already_open", ticket=ticket.number, position=position))


async def _order_for_ticket(d: DeskCtx) -> Order | None:
    """The order a ticket is about: the one named, the one in the sale under way, or the
    person's order that moved in the last few days."""
    quoted = _OUR_ORDER.search(str(d.data.get(_PENDING_DETAIL) or ""))
    named = (
        d.data.pop(_PENDING_ORDER, None)
        or (int(quoted.group(1)) if quoted else None)
        or d.data.get("order_id")
    )
    if named:
        try:
            order = await d.uow.orders.get(int(named))
        except (KeyError, LookupError):
            order = None
        if order is not None and order.user_id == d.user.id:
            return order
    for order in await d.uow.orders.for_user(d.user.id, limit=5):
        if d.now - order.updated_at <= RECENT_ORDER:
            return order
    return None


async def open_ticket(d: DeskCtx, reason: Reason) -> list[Reply]:
    """Open the ticket with its evidence (masked) and tell the staff."""
    order = await _order_for_ticket(d)
    detail = str(d.data.pop(_PENDING_DETAIL, "") or "")
    ticket = await d.uow.tickets.add(
        Ticket(
            user_id=d.user.id,
            channel=d.inbound.channel,
            user_key=d.inbound.user_id,
            reason=reason,
            detail=detail,
            priority=priority_for(order.status if order else None, reason),
            opened_at=d.now,
            order_id=order.id if order else None,
            evidence=await _evidence(d, order),
        )
    )
    assert ticket.id is not None
    await d.uow.audit.append(
        d.now,
        f"user:{d.user.id}",
        "ticket.opened",
        f"ticket:{ticket.id}",
        {"reason": reason.value, "order": ticket.order_id, "priority": int(ticket.priority)},
    )
    targets = [*d.services.desk.alert_chats, *await staff_actors(d.uow, d.services)]
    for target in dict.fromkeys(targets):
        staff_t = await translator_for(d.uow, target, d.now)
        await d.notify(target, Reply(_new_ticket_text(staff_t, d, ticket, order)))
    minutes = _minutes(d.services.desk.sla.first_response)
    return [Reply(d.t("desk.opened", ticket=ticket.number, minutes=minutes))]


def _new_ticket_text(t: Translator, d: DeskCtx, ticket: Ticket, order: Order | None) -> str:
    return t(
        "desk.new_ticket",
        ticket=ticket.number,
        id=ticket.id,
        priority=t(f"desk.priority.{int(ticket.priority)}"),
        reason=t(f"desk.reason.{ticket.reason.value}"),
        channel=ticket.channel,
        order=order.number if order else "-",
        detail=ticket.detail or "-",
    )


async def _evidence(d: DeskCtx, order: Order | None) -> dict[str, Any]:
    """What staff need to judge the case, masked: the order, its quote, the card's check, the
    risk reasons, and the conversation's last lines."""
    evidence: dict[str, Any] = {
        "step": d.step,
        "transcript": list(d.data.get(TRANSCRIPT_KEY, []))[-EVIDENCE_LINES:],
    }
    if order is not None:
        quote = await d.uow.quotes.get(order.quote_id)
        card = await d.uow.cards.get(order.card_id)
        evidence["order"] = _order_facts(order)
        evidence["quote"] = {
            "rate_bp": quote.rate_bp,
            "payout_fen": quote.payout_fen,
            "fee_fen": quote.fee_fen,
            "expires_at": quote.expires_at.isoformat(),
            "rates_version": quote.rates_version,
            "lines": [asdict(line) for line in quote.lines],
        }
        evidence["card"] = {
            "masked": card.number_masked,
            "status": card.status,
            "balance_fen": card.balance_fen,
            "verified_at": card.verified_at.isoformat() if card.verified_at else None,
        }
    return evidence


def _order_facts(order: Order) -> dict[str, Any]:
    return {
        "number": order.number,
        "brand": order.brand,
        "card": order.card_masked,
        "status": order.status.value,
        "face_value_fen": order.face_value_fen,
        "balance_fen": order.balance_fen,
        "payout_fen": order.payout_fen,
        "fee_fen": order.fee_fen,
        "risk_outcome": order.risk_outcome,
        "risk_reasons": list(order.risk_reasons),
        "risk_version": order.risk_version,
    }


# --------------------------------------------------------------------------------------------
# Staff


async def cmd_queue(d: DeskCtx) -> list[Reply]:
    """``/queue``: active tickets, urgent first then oldest, with their timers."""
    tickets = queue_order(list(await d.uow.tickets.active()))
    if not tickets:
        return [Reply(d.t("desk.queue_empty"))]
    sla = d.services.desk.sla
    rows = [d.t("desk.queue_header", count=len(tickets))]
    for ticket in tickets:
        if ticket.first_response_at is None:
            timer = _timer(d, "first", first_response_due(ticket, sla))
        else:
            timer = _timer(d, "resolution", resolution_due(ticket, sla))
        who = ticket.assignee or d.t("desk.waiting")
        rows.append(
            d.t(
                "desk.queue_row",
                ticket=ticket.number,
                priority=d.t(f"desk.priority.{int(ticket.priority)}"),
                reason=d.t(f"desk.reason.{ticket.reason.value}"),
                channel=ticket.channel,
                age=_minutes(d.now - ticket.opened_at),
                timer=timer,
                who=who,
            )
        )
    return [Reply("\n".join(rows))]


def _timer(d: DeskCtx, which: str, due: datetime) -> str:
    if d.now >= due:
        return d.t(f"desk.timer.{which}_overdue", minutes=_minutes(d.now - due))
    return d.t(f"desk.timer.{which}_left", minutes=_minutes(due - d.now) + 1)


async def cmd_take(d: DeskCtx) -> list[Reply]:
    """``/take N``: the ticket is theirs; the user's flow pauses and the user is told."""
    ticket_id = _ticket_id(d.args)
    if ticket_id is None:
        return [Reply(d.t("desk.take_usage"))]
    ticket = await _ticket(d, ticket_id, lock=True)
    held_by_other = ticket.status is TicketStatus.TAKEN and ticket.assignee != d.actor
    if held_by_other and d.role is Role.ADMIN and ticket.assignee:
        # An admin takes over a ticket whose holder is away (the timers told them).
        taken = transfer_ticket(ticket, ticket.assignee, d.actor, d.now)
    else:
        taken = take_ticket(ticket, d.actor, d.now)
    await d.uow.tickets.update(taken)
    await d.uow.audit.append(
        d.now, d.actor, "ticket.taken", f"ticket:{ticket_id}", {"from": ticket.assignee}
    )
    user = await d.uow.users.get(ticket.user_id)
    user_t = Translator(resolve_language(user.language))
    if ticket.status is TicketStatus.OPEN:
        await d.notify(_user_actor(ticket), Reply(user_t("desk.joined", ticket=ticket.number)))
    elif held_by_other:
        await d.notify(
            _user_actor(ticket), Reply(user_t("desk.transferred", ticket=ticket.number))
        )
        await d.notify(
            ticket.assignee or d.actor,
            Reply(
                (await translator_for(d.uow, ticket.assignee or d.actor, d.now))(
                    "desk.taken_over", ticket=ticket.number, by=d.actor
                )
            ),
        )
    return [Reply(await ticket_card(d, taken))]


async def ticket_card(d: DeskCtx, ticket: Ticket) -> str:
    """A ticket as staff see it: facts, evidence (masked), what was said, and the commands."""
    assert ticket.id is not None
    t = d.t
    rows = [
        t(
            "desk.card_header",
            ticket=ticket.number,
            priority=t(f"desk.priority.{int(ticket.priority)}"),
            reason=t(f"desk.reason.{ticket.reason.value}"),
            channel=ticket.channel,
            user=ticket.user_id,
            detail=ticket.detail or "-",
        )
    ]
    facts = ticket.evidence.get("order")
    if facts:
        rows.append(_order_line(t, facts))
    quote = ticket.evidence.get("quote")
    if quote:
        rows.append(
            t(
                "desk.card_quote",
                rate=percent(int(quote["rate_bp"])),
                payout=yuan(int(quote["payout_fen"])),
                fee=yuan(int(quote["fee_fen"])),
                version=quote["rates_version"],
            )
        )
    card = ticket.evidence.get("card")
    if card:
        rows.append(
            t(
                "desk.card_card",
                card=card["masked"],
                status=card["status"] or "-",
                balance=yuan(int(card["balance_fen"] or 0)),
            )
        )
    transcript = ticket.evidence.get("transcript") or []
    if transcript:
        rows.append(t("desk.card_transcript"))
        rows.extend(f"  {who}: {text}" for _, who, text in transcript[-10:])
    said = await d.uow.tickets.messages(ticket.id)
    if said:
        rows.append(t("desk.card_said"))
        rows.extend(f"  {'🔒 ' if m.private else ''}{m.author}: {m.text}" for m in said[-10:])
    rows.append(t("desk.card_help", id=ticket.id))
    return "\n".join(rows)


def _order_line(t: Translator, facts: Mapping[str, Any]) -> str:
    return t(
        "desk.card_order",
        order=facts["number"],
        brand=facts["brand"],
        card=facts["card"],
        status=t(f"status.{facts['status']}"),
        balance=yuan(int(facts["balance_fen"])),
        payout=yuan(int(facts["payout_fen"])),
        risk=", ".join(facts.get("risk_reasons") or []) or "-",
    )


async def cmd_note(d: DeskCtx) -> list[Reply]:
    """``/note [N] text``: private, never shown to the user."""
    first, _, rest = d.args.partition(" ")
    ticket_id = _ticket_id(first)
    if ticket_id is not None and rest.strip():
        ticket = await _ticket(d, ticket_id)
        text = rest.strip()
    else:
        current = await d.uow.tickets.current_for(d.actor)
        if current is None or not d.args.strip():
            return [Reply(d.t("desk.note_usage"))]
        ticket, text = current, d.args.strip()
    assert ticket.id is not None
    await d.uow.tickets.add_message(TicketMessage(ticket.id, d.now, d.actor, text, private=True))
    await d.uow.audit.append(
        d.now, d.actor, "ticket.noted", f"ticket:{ticket.id}", {"chars": len(text)}
    )
    return [Reply(d.t("desk.noted", ticket=ticket.number))]


async def cmd_order(d: DeskCtx) -> list[Reply]:
    """``/order N``: an order's facts and payouts, masked."""
    match = _ORDER_ID.match(d.args.strip())
    if match is None:
        return [Reply(d.t("desk.order_usage"))]
    try:
        order = await d.uow.orders.get(int(match.group(1)))
    except (KeyError, LookupError):
        return [Reply(d.t("desk.no_such_order", order=d.args.strip()))]
    await d.uow.audit.append(d.now, d.actor, "order.viewed", f"order:{order.id}", {})
    rows = [_order_line(d.t, _order_facts(order))]
    rows.append(
        d.t(
            "desk.order_more",
            user=order.user_id,
            channel=order.channel,
            created=render.local_time(order.created_at),
            settled=render.local_time(order.settled_at) if order.settled_at else "-",
            review=order.review_note or "-",
        )
    )
    return [Reply("\n".join(rows))]


async def cmd_transfer(d: DeskCtx) -> list[Reply]:
    """``/transfer N @channel:id``: to another staff member, who is told."""
    first, _, rest = d.args.partition(" ")
    ticket_id = _ticket_id(first)
    target = parse_actor(rest)
    if ticket_id is None or target is None:
        return [Reply(d.t("desk.transfer_usage"))]
    if await role_of(d.uow, d.services, target) is Role.CUSTOMER:
        return [Reply(d.t("desk.not_staff", actor=target))]
    ticket = await _ticket(d, ticket_id, lock=True)
    moved = transfer_ticket(ticket, d.actor, target, d.now)
    await d.uow.tickets.update(moved)
    await d.uow.audit.append(
        d.now, d.actor, "ticket.transferred", f"ticket:{ticket_id}", {"to": target}
    )
    target_t = await translator_for(d.uow, target, d.now)
    target_d = replace(d, t=target_t)
    await d.notify(
        target,
        Reply(
            target_t("desk.transferred_to_you", ticket=ticket.number, by=d.actor)
            + "\n"
            + await ticket_card(target_d, moved)
        ),
    )
    d.notices.extend(target_d.notices[len(d.notices) :])
    user = await d.uow.users.get(ticket.user_id)
    user_t = Translator(resolve_language(user.language))
    await d.notify(_user_actor(ticket), Reply(user_t("desk.transferred", ticket=ticket.number)))
    return [Reply(d.t("desk.transferred_staff", ticket=ticket.number, actor=target))]


# --------------------------------------------------------------------------------------------
# Admins: roles and rates


async def cmd_grant(d: DeskCtx) -> list[Reply]:
    """``/grant channel:id staff|admin``."""
    who, _, what = d.args.strip().partition(" ")
    target = parse_actor(who)
    role = {
        "staff": Role.STAFF,
        "客服": Role.STAFF,
        "admin": Role.ADMIN,
        "管理员": Role.ADMIN,
    }.get(what.strip().lower())
    if target is None or role is None:
        return [Reply(d.t("desk.grant_usage"))]
    await d.uow.role_grants.grant(target, role, d.actor, d.now)
    await d.uow.audit.append(
        d.now, d.actor, "role.granted", f"actor:{target}", {"role": role.value}
    )
    return [Reply(d.t("desk.granted", actor=target, role=role.value))]


async def cmd_rates(d: DeskCtx) -> list[Reply]:
    """``/rates``: the table in force, then any scheduled ones."""
    deps = d.services.sale
    pricing = await sale.current_pricing(d.uow, deps)
    rows = [
        d.t("desk.rates_in_force", version=pricing.version),
        render.prices_text(d.t, deps.catalog, pricing),
    ]
    upcoming = [t for t in await d.uow.rates.all() if t.effective_from > d.now]
    for table in sorted(upcoming, key=lambda t: t.effective_from):
        rows.append(
            d.t(
                "desk.rates_scheduled",
                version=table.version,
                at=render.local_time(table.effective_from),
            )
        )
    return [Reply("\n".join(rows))]


_RATE = re.compile(r"^(\d{1,3}(?:\.\d{1,2})?)%?$")


async def cmd_rate(d: DeskCtx) -> list[Reply]:
    """``/rate BRAND BAND RATE [from TIME]``: a new rate table version with one band changed,
    in force from now or from TIME (Asia/Shanghai); quotes already given keep their rate."""
    text = d.args.strip()
    when_text = None
    for marker in (" from ", " 从 "):
        if marker in f" {text} ":
            text, _, when_text = f" {text} ".partition(marker)
            text, when_text = text.strip(), when_text.strip()
            break
    parts = text.split()
    if len(parts) != 3:
        return [Reply(d.t("desk.rate_usage"))]
    brand_text, band_text, rate_text = parts
    deps = d.services.sale
    brand = find_brand(deps.catalog, brand_text)
    match = _RATE.match(rate_text)
    if match is None:
        return [Reply(d.t("desk.rate_usage"))]
    whole, _, cents = match.group(1).partition(".")
    rate_bp = int(whole) * 100 + int((cents + "00")[:2])
    starts = parse_send_time(when_text, d.now) if when_text else d.now
    base = await sale.pricing_in_force(d.uow, deps.pricing, starts)
    version = f"chat-{starts:%Y%m%d%H%M%S}-{brand.code}-{d.now:%H%M%S%f}"[:64]
    try:
        policy = with_band_rate(base, brand.code, band_text, rate_bp, version, starts)
    except RateTableError as exc:
        return [Reply(d.t("desk.rate_refused", why=str(exc)))]
    table = RateTable(
        version=version,
        effective_from=starts,
        content=pricing_to_dict(policy),
        sha256="",
        imported_by=d.actor,
        imported_at=d.now,
    )
    if not await d.uow.rates.add(table):
        return [Reply(d.t("desk.rate_refused", why=version))]
    await d.uow.audit.append(
        d.now,
        d.actor,
        "rates.changed",
        f"rates:{version}",
        {
            "brand": brand.code,
            "band": band_text,
            "rate_bp": rate_bp,
            "effective_from": starts.isoformat(),
            "previous": base.version,
        },
    )
    replies = [
        Reply(
            d.t(
                "desk.rate_set",
                brand=brand.name(d.t.lang),
                band=band_text,
                rate=percent(rate_bp),
                version=version,
                at=render.local_time(starts),
            )
        )
    ]
    # A table already scheduled for later was copied from the rates before this change: carry
    # the change into it (a newer table for the same time wins), or it would undo it then.
    for later in sorted(await d.uow.rates.all(), key=lambda t: t.effective_from):
        if later.effective_from <= starts or later.version == version:
            continue
        try:
            carried = with_band_rate(
                pricing_from_dict(later.content),
                brand.code,
                band_text,
                rate_bp,
                f"{later.version[:40]}+{version[-20:]}",
                later.effective_from,
            )
        except RateTableError as exc:
            replies.append(Reply(d.t("desk.rate_not_carried", version=later.version, why=exc)))
            continue
        await d.uow.rates.add(
            replace(
                table,
                version=carried.version,
                effective_from=later.effective_from,
                content=pricing_to_dict(carried),
            )
        )
        await d.uow.audit.append(
            d.now, d.actor, "rates.carried", f"rates:{carried.version}", {"into": later.version}
        )
        replies.append(
            Reply(
                d.t(
                    "desk.rate_carried",
                    version=later.version,
                    at=render.local_time(later.effective_from),
                )
            )
        )
    return replies


# --------------------------------------------------------------------------------------------
# Background work (run by bot/runtime.py)


async def check_sla(services: Services) -> int:
    """Send the reminders and escalations that are due; returns how many alerts went out."""
    clock = services.sale.clock
    policy = services.desk
    count = 0
    async with services.uow_factory() as uow:
        now = clock.now()
        for ticket in await uow.tickets.active():
            if ticket.assignee and await role_of(uow, services, ticket.assignee) is Role.CUSTOMER:
                # The holder is no longer staff (removed from the settings): back to the queue,
                # or the user's flow would stay paused for someone who is gone.
                await _holder_gone(uow, ticket, now)
                count += 1
                continue
            due = sla_alerts(ticket, now, policy.sla)
            if not due:
                continue
            locked = await uow.tickets.get(ticket.id or 0, lock=True)
            if locked is None:
                continue
            due = sla_alerts(locked, now, policy.sla)
            for kind in due:
                for target in await _alert_targets(uow, services, locked, kind):
                    t = await translator_for(uow, target, now)
                    text = t(
                        f"desk.alert.{kind.value}",
                        ticket=locked.number,
                        id=locked.id,
                        who=locked.assignee or t("desk.waiting"),
                        age=_minutes(now - locked.opened_at),
                    )
                    channel, _, key = target.partition(":")
                    await uow.outbox.add(channel, key, [Reply(text)], now)
                    count += 1
                await uow.audit.append(
                    now, "desk", f"ticket.{kind.value}", f"ticket:{locked.id}", {}
                )
            await uow.tickets.update(with_alerts_sent(locked, due, now))
        await uow.commit()
    if count:
        services.outbox_queued.set()
    return count


async def _holder_gone(uow: UnitOfWork, ticket: Ticket, now: datetime) -> None:
    locked = await uow.tickets.get(ticket.id or 0, lock=True)
    if locked is None or locked.status is not TicketStatus.TAKEN or not locked.assignee:
        return
    await uow.tickets.update(release_ticket(locked, locked.assignee))
    await uow.audit.append(
        now, "desk", "ticket.released", f"ticket:{locked.id}", {"holder": locked.assignee}
    )
    user_t = Translator(
        resolve_language(await uow.users.language_of(locked.channel, locked.user_key))
    )
    await uow.outbox.add(
        locked.channel,
        locked.user_key,
        [Reply(user_t("desk.holder_gone", ticket=locked.number))],
        now,
    )


async def _alert_targets(
    uow: UnitOfWork, services: Services, ticket: Ticket, kind: AlertKind
) -> Sequence[str]:
    if kind.to_admins:
        return await staff_actors(uow, services, admins_only=True)
    if ticket.assignee:
        return [ticket.assignee]
    return list(dict.fromkeys([*services.desk.alert_chats, *await staff_actors(uow, services)]))


async def run_desk(services: Services, stop: asyncio.Event, sla_every: float = 30.0) -> None:
    """Check the tickets' timers every ``sla_every`` seconds until ``stop`` (the alerts go
    through the outbox, delivered by each channel's worker)."""
    while not stop.is_set():
        try:
            await check_sla(services)
        except Exception as exc:  # keep the desk alive; the next round tries again
            log.error("desk round failed: %s", type(exc).__name__, exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), sla_every)
