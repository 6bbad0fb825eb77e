"""Everything the bot sends: replies rendered for Telegram, through the process's one
:class:`~bot.telegram.limiter.FlowControl`, with Telegram's failures handled in one place.

- 429 ``retry_after``: pause *all* calls for that long (the limiter), then try again;
- 403 (blocked by the user, deactivated): mark the user unreachable, stop;
- network errors and 5xx: try again with exponential backoff, a bounded number of times, then
  log an error naming the method and chat (ids only) — never dropped without a trace;
- 400 (message to delete is gone, keyboard already removed, query too old): logged, not retried.

A retried send whose first attempt did reach Telegram (the answer was lost) shows the message
twice; inbound effects are at most once, outbound messages at least once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from aiogram import Bot
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import (
    AnswerCallbackQuery,
    DeleteMessage,
    EditMessageReplyMarkup,
    SendDocument,
    SendMessage,
    SendPhoto,
)
from aiogram.methods.base import TelegramMethod
from aiogram.types import (
    BufferedInputFile,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
)

from bot.outbox import Delivered, Handed, Retry, Undeliverable
from bot.telegram.inbound import encode_option
from bot.telegram.limiter import CallKind, FlowControl
from core.messages import Channel, Option, Reply
from core.ports import OutboxMessage, UnitOfWorkFactory

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_TEXT = 4096
CHANNEL = Channel.TELEGRAM.value


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Cut a text into pieces Telegram accepts (≤ ``limit`` characters), at line breaks when
    possible, else at spaces, else anywhere; nothing is lost but the break's whitespace."""
    text = text or " "
    pieces: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit + 1)
        if cut <= 0:
            cut = text.rfind(" ", 0, limit + 1)
        if cut <= 0:
            cut = limit
        pieces.append(text[:cut])
        text = text[cut:]
        if text[:1] in ("\n", " "):
            text = text[1:]
    pieces.append(text)
    return [p if p.strip() else "." for p in pieces]


def merge_replies(replies: Sequence[Reply]) -> list[Reply]:
    """The replies to one message as few Telegram messages as possible: texts joined by a blank
    line, under the keyboard of the last reply that offers options — the only options the
    conversation still accepts, so no dead buttons are shown. Images and documents stay messages
    of their own (in order). Fewer messages also keep a chat within its 1 message/s."""
    merged: list[Reply] = []
    texts: list[str] = []
    options: tuple[Option, ...] = ()
    for reply in replies:
        if reply.image is not None or reply.document is not None:
            merged.append(replace(reply, text="", options=()))
        if reply.text:
            texts.append(reply.text)
        if reply.options:
            options = reply.options
    if texts or options:
        merged.append(Reply("\n\n".join(texts), options))
    return merged


def keyboard(reply: Reply) -> InlineKeyboardMarkup | None:
    """Options as an inline keyboard, one button a row (labels can be long in Chinese)."""
    if not reply.options:
        return None
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [InlineKeyboardButton(text=o.label, callback_data=encode_option(o.id))]
            for o in reply.options
        ]
    )


class TelegramSender:
    """Calls the Bot API for the bot: rate-limited, retried, failures accounted for."""

    def __init__(
        self,
        bot: Bot,
        flow: FlowControl,
        uow_factory: UnitOfWorkFactory,
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.bot = bot
        self.flow = flow
        self.uow_factory = uow_factory
        self.attempts = attempts
        self.backoff = backoff
        self._sleep = sleep

    async def call(
        self, method: TelegramMethod[T], chat: int | str | None, kind: CallKind
    ) -> T | None:
        """Make one API call within the limits; None when it could not be done (logged)."""
        name = method.__api_method__
        chat_key = None if chat is None else str(chat)
        failures = 0
        pauses = 0
        while True:
            try:
                async with self.flow.slot(chat_key, kind):
                    return await self.bot(method)
            except TelegramRetryAfter as exc:
                pauses += 1
                self.flow.pause(float(exc.retry_after))
                log.warning("telegram %s: 429, all sends paused %ss", name, exc.retry_after)
                if pauses > self.attempts * 2:
                    log.error(
                        "telegram %s to chat %s: still 429 after %d pauses, given up",
                        name,
                        chat_key,
                        pauses,
                    )
                    return None
            except TelegramForbiddenError:
                log.info("telegram %s: chat %s is unreachable (403)", name, chat_key)
                if chat_key is not None:
                    await self.mark_reachable(chat_key, False)
                return None
            except TelegramBadRequest as exc:
                log.warning("telegram %s to chat %s refused: %s", name, chat_key, exc.message)
                return None
            except TelegramEntityTooLarge:
                log.error("telegram %s to chat %s: too large, not sent", name, chat_key)
                return None
            except (TelegramNetworkError, TelegramServerError, ClientDecodeError) as exc:
                failures += 1
                if failures >= self.attempts:
                    log.error(
                        "telegram %s to chat %s failed %d times (%s), given up",
                        name,
                        chat_key,
                        failures,
                        type(exc).__name__,
                    )
                    return None
                await self._sleep(self.backoff * 2 ** (failures - 1))

    async def mark_reachable(self, user_key: str, reachable: bool) -> None:
        """Remember whether we can reach a user (403 / blocked → no; unblocked → yes)."""
        try:
            async with self.uow_factory() as uow:
                await uow.users.set_reachable(CHANNEL, user_key, reachable)
                await uow.commit()
        except Exception:
            log.exception("could not mark telegram user %s reachable=%s", user_key, reachable)

    async def send_reply(self, chat_id: int, reply: Reply) -> list[Message]:
        """Send one reply: its image or document first, then its text in ≤ 4,096-character
        pieces, the keyboard on the last piece. Returns what was delivered."""
        sent: list[Message] = []
        if reply.image is not None:
            photo = BufferedInputFile(reply.image, filename="image.jpg")
            msg = await self.call(
                SendPhoto(chat_id=chat_id, photo=photo), chat_id, CallKind.MESSAGE
            )
            sent += [msg] if msg else []
        if reply.document is not None:
            doc = BufferedInputFile(reply.document, filename=reply.document_name or "file")
            msg = await self.call(
                SendDocument(chat_id=chat_id, document=doc), chat_id, CallKind.MESSAGE
            )
            sent += [msg] if msg else []
        if not reply.text and not reply.options:
            return sent
        pieces = split_text(reply.text)
        markup = keyboard(reply)
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            text_msg = await self.call(
                SendMessage(chat_id=chat_id, text=piece, reply_markup=markup if last else None),
                chat_id,
                CallKind.MESSAGE,
            )
            if text_msg is None:
                break  # the rest would arrive out of context
            sent.append(text_msg)
        return sent

    async def send_replies(self, chat_id: int, replies: Sequence[Reply]) -> None:
        """Send the replies to one message, merged (see :func:`merge_replies`)."""
        for reply in merge_replies(replies):
            await self.send_reply(chat_id, reply)

    async def delete_message(self, chat_id: int, message_id: int) -> bool:
        done = await self.call(
            DeleteMessage(chat_id=chat_id, message_id=message_id), chat_id, CallKind.CHAT_ACTION
        )
        return bool(done)

    async def remove_keyboard(self, chat_id: int, message_id: int) -> None:
        await self.call(
            EditMessageReplyMarkup(chat_id=chat_id, message_id=message_id, reply_markup=None),
            chat_id,
            CallKind.CHAT_ACTION,
        )

    async def answer_callback(self, query_id: str, text: str | None = None) -> None:
        await self.call(
            AnswerCallbackQuery(callback_query_id=query_id, text=text), None, CallKind.OTHER
        )


class TelegramCourier:
    """Sends outbox messages on Telegram (a user's private chat id is their user id): a
    recipient's leased messages merged like the replies to one message."""

    channel = CHANNEL

    def __init__(self, sender: TelegramSender) -> None:
        self.sender = sender

    async def deliver(self, recipient: str, messages: Sequence[OutboxMessage]) -> Handed:
        try:
            chat_id = int(recipient)
        except ValueError:
            return Handed(len(messages), Undeliverable(f"not a chat id: {recipient[:32]!r}"))
        for reply in merge_replies([m.reply for m in messages]):
            if not await self.sender.send_reply(chat_id, reply):
                # Blocked, gone, or Telegram kept failing: the worker tries again later.
                return Handed(len(messages), Retry("not delivered"))
        return Handed(len(messages), Delivered("message"))
