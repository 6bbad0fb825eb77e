"""The conversation engine: one inbound message in, replies out, at most one effect.

For each message, in one transaction: record its (channel, external id) — a redelivery stops
here —, load the person and their conversation state, route (state × input kind → step) and
run the step, save the new state, commit. Work that talks to a provider runs after the commit
(``Step.after_commit``) and is resumable on its own. A refusal (``UserError``) rolls the step
back, keeps the state and answers in the user's language; an unexpected failure answers a calm
apology, leaves the message unrecorded so a redelivery may try again, and logs no payload.

What a message came to is a :class:`Turn`: handled (with its replies, possibly none — a
paused conversation while staff hold a ticket answers nothing), a redelivery of a message
already handled, or a failure of the infrastructure (the database or its connection) that kept
nothing — the channel must then make the sender's platform deliver it again (a 5xx to a
webhook, an unconfirmed update, no ``success`` to WeChat), and that redelivery works.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from core.batch import holds_card_line
from core.catalog import Catalog
from core.errors import ConcurrentUpdate, UserError
from core.masking import redact_for_staff
from core.messages import Inbound, InputKind, Option, Reply
from core.model import ConversationState, User
from core.ports import CardReader, CardReading, UnitOfWork, UnitOfWorkFactory
from core.sale import SaleDeps
from core.sealing import conversation_context
from core.tickets import DeskPolicy
from handlers.i18n import Translator, resolve_language

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 4096  # Telegram's longest message: room for a pasted list of 100 cards
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# How often a message is handled again when another message of the same person won a race.
CONCURRENT_ATTEMPTS = 5
START = "start"

# The conversation's last lines, kept (redacted) in its state for a ticket's evidence.
TRANSCRIPT_KEY = "_log"
TRANSCRIPT_LINES = 30
TRANSCRIPT_CHARS = 300

# Words people type instead of commands, in both languages.
KEYWORD_COMMANDS = {
    "取消": "cancel",
    "cancel": "cancel",
    "退出": "cancel",
    "帮助": "help",
    "help": "help",
    "?": "help",
    "？": "help",
    "菜单": "start",
    "menu": "start",
    "开始": "start",
    "start": "start",
    "卖卡": "sell",
    "sell": "sell",
    "回收": "sell",
    "价格": "prices",
    "报价": "prices",
    "prices": "prices",
    "订单": "orders",
    "我的订单": "orders",
    "orders": "orders",
    "人工": "human",
    "人工客服": "human",
    "客服": "human",
    "投诉": "human",
    "human": "human",
    "support": "human",
    "complaint": "human",
}
_OPTION_NUMBER = re.compile(r"^\s*(\d{1,2})\s*[.)、。]?\s*$")


def connection_trouble(exc: BaseException) -> bool:
    """The default test for a failure worth a redelivery: the network or a timeout."""
    return isinstance(exc, (OSError, TimeoutError))


@dataclass(frozen=True)
class Services:
    """What the conversation needs: the sale's ports plus the photo reader and storage."""

    sale: SaleDeps
    reader: CardReader
    uow_factory: UnitOfWorkFactory
    desk: DeskPolicy = field(default_factory=DeskPolicy)
    # Set after a commit that queued outbox messages, so this process delivers them at once.
    outbox_queued: asyncio.Event = field(default_factory=asyncio.Event)
    # Whether a failure is the infrastructure's (storage down, connection lost): then nothing
    # was kept and the message should be delivered again (bot/app.py passes storage's test).
    transient: Callable[[BaseException], bool] = connection_trouble


class TurnKind(StrEnum):
    HANDLED = "handled"  # the message took effect (or was refused); ``replies`` answer it
    DUPLICATE = "duplicate"  # a redelivery of a message already handled: nothing happened
    RETRY = "retry"  # the infrastructure failed; nothing was kept: deliver it again


@dataclass(frozen=True)
class Turn:
    """What one inbound message came to."""

    kind: TurnKind
    replies: tuple[Reply, ...] = ()


@dataclass(frozen=True)
class AfterCommit:
    """What post-commit work says: more replies and, optionally, a new step."""

    replies: tuple[Reply, ...] = ()
    to: str | None = None
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Step:
    """A step's outcome: the next state, the replies, optional work after the commit."""

    to: str
    replies: tuple[Reply, ...] = ()
    after_commit: Callable[[], Awaitable[AfterCommit]] | None = None


@dataclass
class Ctx:
    """Everything a step sees: the open unit of work, the person, their language and state."""

    uow: UnitOfWork
    services: Services
    inbound: Inbound
    user: User
    t: Translator
    step: str
    data: dict[str, Any] = field(default_factory=dict)
    reading: CardReading | None = None
    typed: str | None = None  # the text as typed, before a number became an option

    @property
    def deps(self) -> SaleDeps:
        return self.services.sale

    @property
    def lang(self) -> str:
        return self.t.lang

    def conversation_key(self) -> str:
        """Associated data for ciphertexts kept in this conversation's state."""
        return conversation_context(self.inbound.channel, self.inbound.user_id)


StepHandler = Callable[[Ctx], Awaitable[Step]]
Prompt = Callable[[Ctx], Awaitable[tuple[Reply, ...]]]


@dataclass(frozen=True)
class Flow:
    """The transition table (state × input kind → step), commands, and per-state prompts."""

    table: Mapping[tuple[str, InputKind], StepHandler]
    commands: Mapping[str, StepHandler]
    prompts: Mapping[str, Prompt]
    # Steps whose input is sensitive (a card secret, an ID number): the user's message is
    # deleted from the chat whatever the answer, refusals included.
    sensitive: frozenset[str] = frozenset()


class Interceptor(Protocol):
    """Something that may take a message before the flow does (the desk: staff commands,
    relays while a ticket is taken). None lets the flow have it."""

    async def intercept(self, ctx: Ctx, conversation: Conversation) -> Step | None: ...


class Conversation:
    """Handles inbound messages for every channel."""

    def __init__(self, services: Services, flow: Flow, desk: Interceptor | None = None) -> None:
        self.services = services
        self.flow = flow
        self.desk = desk

    async def handle(self, inbound: Inbound) -> list[Reply]:
        """Process one inbound message; never raises, never leaks internals to the user. (A
        channel that can have a message delivered again uses :meth:`take`.)"""
        turn = await self.take(inbound)
        if turn.kind is TurnKind.RETRY:
            t = Translator(resolve_language(inbound.language))
            return [Reply(t("error.internal"))]
        return list(turn.replies)

    async def take(self, inbound: Inbound) -> Turn:
        """Process one inbound message: what it came to (see :class:`Turn`); never raises."""
        try:
            return await self._handle(inbound)
        except Exception as exc:
            if self.services.transient(exc):
                log.warning(
                    "inbound %s/%s: storage unavailable (%s); to be delivered again",
                    inbound.channel,
                    inbound.message_id,
                    type(exc).__name__,
                )
                return Turn(TurnKind.RETRY)
            # Only ids and the exception type: payloads may hold secrets.
            log.error(
                "inbound %s/%s failed: %s",
                inbound.channel,
                inbound.message_id,
                type(exc).__name__,
                exc_info=not isinstance(exc, ConcurrentUpdate),
            )
            t = Translator(resolve_language(inbound.language))
            return Turn(TurnKind.HANDLED, (Reply(t("error.internal")),))

    async def _handle(self, inbound: Inbound) -> Turn:
        # Reading a photo is slow and needs no database: do it before the transaction opens,
        # so one person's photo never holds up anyone else.
        reading = await self._read_photo(inbound)
        for attempt in range(1, CONCURRENT_ATTEMPTS + 1):
            try:
                outcome = await self._transact(inbound, reading)
                break
            except ConcurrentUpdate:
                # Another message of the same person changed the conversation first (a double
                # tap, a retried push). Nothing of ours was kept: handle it again on top.
                if attempt == CONCURRENT_ATTEMPTS:
                    raise
                log.info("inbound %s/%s raced; again", inbound.channel, inbound.message_id)
        if not isinstance(outcome, Step):
            return outcome
        step = outcome
        replies = list(step.replies)
        if step.after_commit is not None:
            try:
                after = await step.after_commit()
            except Exception as exc:
                # The step itself is committed; what follows is resumable and will be resumed.
                log.error(
                    "after-commit work for %s/%s failed: %s",
                    inbound.channel,
                    inbound.message_id,
                    type(exc).__name__,
                    exc_info=True,
                )
                t = Translator(resolve_language(inbound.language))
                return Turn(TurnKind.HANDLED, (*replies, Reply(t("error.after_commit"))))
            await apply_outcome(self.services, inbound.channel, inbound.user_id, after)
            replies.extend(after.replies)
        return Turn(TurnKind.HANDLED, tuple(replies))

    async def _transact(self, inbound: Inbound, reading: CardReading | None) -> Step | Turn:
        """The message's effect in one transaction: the committed step, or what the message
        came to (a redelivery; a refusal and its replies)."""
        clock = self.services.sale.clock
        async with self.services.uow_factory() as uow:
            if not await uow.inbox.claim(inbound.channel, inbound.message_id, clock.now()):
                log.info("inbound %s/%s is a redelivery", inbound.channel, inbound.message_id)
                return Turn(TurnKind.DUPLICATE)
            ctx = await self._context(uow, inbound)
            ctx.reading = reading
            before = ctx.step
            try:
                step = await self._run(ctx)
            except UserError as refusal:
                await uow.rollback()
                return await self._refuse(uow, inbound, before, refusal, self.holds_secret(ctx))
            if self.holds_secret(ctx):
                step = replace(step, replies=_deleting_inbound(ctx, step.replies))
            await self._save(ctx, step)
            await uow.commit()
        return step

    async def _read_photo(self, inbound: Inbound) -> CardReading | None:
        payload = inbound.image if inbound.image is not None else inbound.document
        if payload is None or len(payload) > MAX_UPLOAD_BYTES:
            return None
        return await self.services.reader.read(payload)

    async def _context(self, uow: UnitOfWork, inbound: Inbound) -> Ctx:
        now = self.services.sale.clock.now()
        lang = resolve_language(inbound.language)
        user, _ = await uow.users.for_channel(
            inbound.channel, inbound.user_id, inbound.chat_id, lang, now
        )
        if inbound.language and resolve_language(inbound.language) != user.language:
            user = replace(user, language=resolve_language(inbound.language))
            await uow.users.update(user)
        # One message of a person at a time, whichever process has it: the others wait here.
        state = await uow.conversations.get(inbound.channel, inbound.user_id, lock=True)
        if state is None:
            state = ConversationState(inbound.channel, inbound.user_id, START)
        ctx = Ctx(
            uow=uow,
            services=self.services,
            inbound=inbound,
            user=user,
            t=Translator(resolve_language(inbound.language, user.language)),
            step=state.step,
            data=dict(state.data),
        )
        ctx.data["_version"] = state.version
        return ctx

    async def _run(self, ctx: Ctx) -> Step:
        inbound = ctx.inbound
        problem = self._precheck(inbound)
        if problem:
            return Step(ctx.step, (Reply(ctx.t(problem)), *await self.reprompt(ctx)))
        ctx.typed = inbound.text
        inbound = self._normalise(ctx, inbound)
        ctx.inbound = inbound
        if self.desk is not None:
            taken = await self.desk.intercept(ctx, self)
            if taken is not None:
                return taken
        kind = inbound.kind
        if kind is InputKind.COMMAND:
            command = self.flow.commands.get(inbound.command or "")
            if command is None:
                return Step(
                    ctx.step,
                    (
                        Reply(ctx.t("error.unknown_command", command=inbound.command)),
                        *await self.reprompt(ctx),
                    ),
                )
            return await command(ctx)
        if kind is InputKind.OPTION and inbound.option not in self.current_options(ctx):
            key = "error.no_such_option" if inbound.option == "?" else "error.option_gone"
            return Step(ctx.step, (Reply(ctx.t(key)), *await self.reprompt(ctx)))
        handler = self.flow.table.get((ctx.step, kind))
        if handler is None:
            return Step(
                ctx.step,
                (Reply(ctx.t(f"error.unexpected_{kind.value}")), *await self.reprompt(ctx)),
            )
        return await handler(ctx)

    def _precheck(self, inbound: Inbound) -> str | None:
        if inbound.text is not None and len(inbound.text) > MAX_TEXT_CHARS:
            return "error.too_long"
        payload = inbound.image if inbound.image is not None else inbound.document
        if payload is not None and len(payload) > MAX_UPLOAD_BYTES:
            return "error.file_too_large"
        if inbound.kind is InputKind.TEXT and not (inbound.text or "").strip():
            return "error.empty_message"
        return None

    def _normalise(self, ctx: Ctx, inbound: Inbound) -> Inbound:
        """A typed number answers the menu on screen; a typed keyword is a command."""
        if inbound.kind is not InputKind.TEXT or inbound.text is None:
            return inbound
        text = inbound.text.strip()
        if text.startswith("/") and len(text) > 1:
            name, _, args = text[1:].partition(" ")
            return replace(inbound, text=None, command=name.lower(), args=args.strip())
        options = self.current_options(ctx)
        match = _OPTION_NUMBER.match(text)
        if options and match:
            index = int(match.group(1)) - 1
            chosen = options[index] if 0 <= index < len(options) else "?"
            return replace(inbound, text=None, option=chosen)
        command = KEYWORD_COMMANDS.get(text.lower())
        if command is not None:
            return replace(inbound, text=None, command=command)
        first, _, rest = text.partition(" ")
        if KEYWORD_COMMANDS.get(first.lower()) == "human" and rest.strip():
            # "人工 my payout has not arrived": asking for a person, with what happened.
            return replace(inbound, text=None, command="human", args=rest.strip())
        return inbound

    def is_sensitive(self, ctx: Ctx) -> bool:
        """Whether the message must never be kept or shown to staff: its step asks for a secret,
        an ID or an account, or it holds a card number and its secret, whatever the step."""
        return ctx.step in self.flow.sensitive or self.holds_secret(ctx)

    @staticmethod
    def holds_secret(ctx: Ctx) -> bool:
        """Whether the message as typed holds a card number and (what may be) its secret."""
        inbound = ctx.inbound
        typed = ctx.typed if ctx.typed is not None else inbound.text
        if typed is None and inbound.kind is InputKind.COMMAND:
            typed = f"{inbound.command or ''} {inbound.args or ''}"
        return bool(typed) and holds_card_line(typed or "", ctx.deps.catalog)

    @staticmethod
    def current_options(ctx: Ctx) -> list[str]:
        """Ids of the options on screen, in their numbered order."""
        return [str(o) for o in ctx.data.get("_options", [])]

    async def reprompt(self, ctx: Ctx) -> tuple[Reply, ...]:
        """Say again what the current step is waiting for."""
        prompt = self.flow.prompts.get(ctx.step) or self.flow.prompts[START]
        return await prompt(ctx)

    async def _save(self, ctx: Ctx, step: Step) -> None:
        data = {k: v for k, v in ctx.data.items() if k != "_version"}
        data[TRANSCRIPT_KEY] = transcript_with(
            data.get(TRANSCRIPT_KEY, []),
            self.services.sale.clock.now(),
            ctx.inbound,
            self.is_sensitive(ctx),
            step.replies,
            ctx.deps.catalog,
        )
        options = _last_options(step.replies)
        if options is not None:
            data["_options"] = [o.id for o in options]
        version = int(ctx.data.get("_version", 0))
        await ctx.uow.conversations.save(
            ConversationState(
                ctx.inbound.channel,
                ctx.inbound.user_id,
                step.to,
                data,
                version,
                self.services.sale.clock.now(),
            )
        )

    async def _refuse(
        self,
        uow: UnitOfWork,
        inbound: Inbound,
        step_name: str,
        refusal: UserError,
        holds_secret: bool = False,
    ) -> Turn:
        """Answer a refusal; the only thing kept is that this message was handled."""
        await uow.inbox.claim(inbound.channel, inbound.message_id, self.services.sale.clock.now())
        ctx = await self._context(uow, inbound)
        ctx.step = step_name
        ctx.typed = inbound.text
        hidden = holds_secret or step_name in self.flow.sensitive
        first = Reply(ctx.t(refusal.key, **refusal.params), delete_inbound=hidden)
        replies = (first, *await self.reprompt(ctx))
        await self._save(ctx, Step(ctx.step, replies))
        await uow.commit()
        return Turn(TurnKind.HANDLED, replies)


async def apply_outcome(
    services: Services,
    channel: str,
    user_key: str,
    outcome: AfterCommit,
    only_for_order: int | None = None,
) -> None:
    """Bring a conversation up to date after work done outside its transaction (settlement):
    the new step, data, and the options now on the user's screen. With ``only_for_order``, a
    conversation busy with something else is left alone."""
    if outcome.to is None and outcome.data is None and not outcome.replies:
        return
    async with services.uow_factory() as uow:
        await move_conversation(
            uow,
            services.sale.clock.now(),
            channel,
            user_key,
            outcome,
            only_for=None if only_for_order is None else ("order_id", only_for_order),
        )
        await uow.commit()


async def move_conversation(
    uow: UnitOfWork,
    now: datetime,
    channel: str,
    user_key: str,
    outcome: AfterCommit,
    only_for: tuple[str, int | None] | None = None,
) -> None:
    """:func:`apply_outcome` inside an open unit of work (the one that recorded what the person
    is told). With ``only_for`` (a data key and its value: the order or batch the outcome is
    about), a conversation busy with something else is left alone."""
    if outcome.to is None and outcome.data is None and not outcome.replies:
        return
    state = await uow.conversations.get(channel, user_key, lock=True)
    if state is None:
        state = ConversationState(channel, user_key, START)
    if only_for is not None and state.step != START:
        key, value = only_for
        if state.data.get(key) != value:
            return
    data = dict(state.data)
    data.update(outcome.data or {})
    options = _last_options(outcome.replies)
    if options is not None:
        data["_options"] = [o.id for o in options]
    await uow.conversations.save(
        replace(state, step=outcome.to or state.step, data=data, updated_at=now)
    )


def _inbound_line(inbound: Inbound, sensitive: bool, catalog: Catalog | None = None) -> str:
    """A person's message as the transcript keeps it: never a secret, never a full number."""
    if sensitive:
        return "[hidden]"
    kind = inbound.kind
    if kind is InputKind.COMMAND:
        return redact_for_staff(f"/{inbound.command} {inbound.args}".strip(), catalog)
    if kind is InputKind.OPTION:
        return f"[{inbound.option}]"
    if kind is InputKind.IMAGE:
        return "[photo]"
    if kind is InputKind.DOCUMENT:
        return "[file]"
    return redact_for_staff(inbound.text or "", catalog)


def transcript_with(
    log: list[Any],
    at: datetime,
    inbound: Inbound,
    sensitive: bool,
    replies: Sequence[Reply],
    catalog: Catalog | None = None,
) -> list[Any]:
    """The conversation's recent lines ([time, "user"|"bot", text]), for a ticket's evidence."""
    said = _inbound_line(inbound, sensitive, catalog)[:TRANSCRIPT_CHARS]
    lines = [*log, [at.isoformat(), "user", said]]
    # The bot's own words are redacted too: a reply may echo what the person typed.
    lines += [
        [at.isoformat(), "bot", redact_for_staff(r.text, catalog)[:TRANSCRIPT_CHARS]]
        for r in replies
        if r.text
    ]
    return lines[-TRANSCRIPT_LINES:]


def _deleting_inbound(ctx: Ctx, replies: tuple[Reply, ...]) -> tuple[Reply, ...]:
    """The replies, the first asking the chat to delete the user's message (which holds a
    secret); a note saying so when there was nothing to answer."""
    if any(r.delete_inbound for r in replies):
        return replies
    if not replies:
        return (Reply(ctx.t("privacy.card_line_hidden"), delete_inbound=True),)
    return (replace(replies[0], delete_inbound=True), *replies[1:])


def _last_options(replies: tuple[Reply, ...]) -> tuple[Option, ...] | None:
    """The options of the last reply that offers any (those are the ones on screen)."""
    for reply in reversed(replies):
        if reply.options:
            return reply.options
    return () if replies else None
