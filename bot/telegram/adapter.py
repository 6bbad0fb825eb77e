"""The Telegram adapter: update → one call into the conversation → replies rendered.

Routing by update type is aiogram's (a router built per adapter by :func:`build_router`); the
translation rules are in :mod:`bot.telegram.inbound`, sending in :mod:`bot.telegram.outbound`.
Updates come from the inbound queue (:mod:`bot.inflow`): a chat's one after another, chats at
once; a per-chat lock keeps that order within the process whatever calls in.

What each kind of update does:

- text, commands (``/sell@bot`` too), photos (largest size within 20 MB), image files → the
  conversation; a message over 20 MB is refused before anything is downloaded;
- other files, stickers, voice, video, locations… → a clear reply, no effect;
- service messages in a private chat, group chats, channel posts, unknown update types →
  ignored on purpose (logged by id);
- edited messages → a reply that edits are not read (the original was already handled);
- a button press → the conversation (an option from an old keyboard is refused there); the
  query is always answered, with the refusal as its toast; the pressed keyboard is removed —
  also when the press is a redelivery of one already handled (after a restart);
- the storage failing while a message is handled → :class:`RedeliverLater`: the update stays
  in the inbound queue and is handled again once the storage is back;
- ``my_chat_member`` → the user is (un)reachable when they block (unblock) the bot;
- a reply marked ``delete_inbound`` (it carried a card secret, an ID or account number) →
  the user's message is deleted and the reply says so (or asks them to delete it themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import PurePosixPath

import aiohttp
from aiogram import Bot, Dispatcher, F, Router
from aiogram.enums import ChatType, ContentType
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.types import CallbackQuery, ChatMemberUpdated, Message, Update
from aiogram.types.update import UpdateTypeLookupError

from bot.inflow import RetryLater
from bot.telegram.inbound import (
    LIST_SUFFIXES,
    MAX_DOWNLOAD_BYTES,
    MAX_LIST_BYTES,
    callback_key,
    decode_option,
    is_image_document,
    is_list_document,
    message_key,
    parse_command,
    pick_photo,
)
from bot.telegram.outbound import CHANNEL, TelegramSender
from bot.telegram.roles import Roles
from core.messages import Inbound, Reply
from core.model import Role
from core.ports import QueuedUpdate, UnitOfWorkFactory
from handlers.engine import Conversation, TurnKind
from handlers.i18n import Translator, resolve_language

log = logging.getLogger(__name__)

# Answer a button press with the outcome when it is known this fast, else answer at once.
ANSWER_WITHIN_SECONDS = 2.0
# Chats handled at once by one process (each holds a database connection while it works).
CONCURRENT_CHATS = 16

# Content a person sends that we cannot use: they get a clear reply.
UNSUPPORTED = frozenset(
    {
        ContentType.STICKER,
        ContentType.VOICE,
        ContentType.AUDIO,
        ContentType.VIDEO,
        ContentType.VIDEO_NOTE,
        ContentType.ANIMATION,
        ContentType.LOCATION,
        ContentType.VENUE,
        ContentType.CONTACT,
        ContentType.POLL,
        ContentType.DICE,
        ContentType.GAME,
        ContentType.STORY,
        ContentType.PAID_MEDIA,
        ContentType.CHECKLIST,
    }
)


class _TooLarge(Exception):
    """The file is over the 20 MB the Bot API lets a bot download."""


class RedeliverLater(RetryLater):
    """Handling failed in the infrastructure (nothing was kept): the update stays in the
    inbound queue and is handled again later (bot/inflow.py)."""


def build_router(adapter: TelegramAdapter) -> Router:
    """Routes for one adapter (a fresh router each time, so tests build their own)."""
    router = Router(name="cardbot-telegram")
    private = F.chat.type == ChatType.PRIVATE
    router.message.register(adapter.on_message, private)
    router.edited_message.register(adapter.on_edited_message, private)
    router.callback_query.register(adapter.on_callback)
    router.my_chat_member.register(adapter.on_my_chat_member, private)
    return router


def chat_of(update: Update) -> int | None:
    """The chat an update belongs to (its updates are handled in order)."""
    if update.message is not None:
        return update.message.chat.id
    if update.edited_message is not None:
        return update.edited_message.chat.id
    if update.callback_query is not None and update.callback_query.message is not None:
        return update.callback_query.message.chat.id
    if update.my_chat_member is not None:
        return update.my_chat_member.chat.id
    return None


class TelegramAdapter:
    """Translates Telegram updates for the conversation and renders its replies."""

    def __init__(
        self,
        bot: Bot,
        conversation: Conversation,
        uow_factory: UnitOfWorkFactory,
        sender: TelegramSender,
        roles: Roles | None = None,
    ) -> None:
        self.bot = bot
        self.conversation = conversation
        self.uow_factory = uow_factory
        self.sender = sender
        self.roles = roles or Roles()
        self.dispatcher = Dispatcher()
        self.dispatcher.include_router(build_router(self))
        self._locks: defaultdict[int | None, asyncio.Lock] = defaultdict(asyncio.Lock)

    def role_of(self, user_id: str) -> Role:
        """Customer, staff or admin (``CARDBOT_STAFF`` / ``CARDBOT_ADMINS``)."""
        return self.roles.role_of(user_id)

    # ----------------------------------------------------------------------------------------
    # Entry points

    async def handle_update(self, update: Update) -> None:
        """Handle one update; updates of the same chat wait for each other."""
        try:
            update.event_type  # noqa: B018 - raises for update types this aiogram does not know
        except UpdateTypeLookupError:
            log.info("update %s of an unknown type ignored", update.update_id)
            return
        async with self._chat_lock(chat_of(update)):
            await self.dispatcher.feed_update(self.bot, update)

    async def handle_queued(self, item: QueuedUpdate) -> None:
        """Handle one update the inbound worker took from the queue (bot/inflow.py)."""
        update = Update.model_validate(json.loads(item.payload), context={"bot": self.bot})
        await self.handle_update(update)

    @contextlib.asynccontextmanager
    async def _chat_lock(self, chat: int | None) -> AsyncIterator[None]:
        lock = self._locks[chat]
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._locks.get(chat) is lock:
                del self._locks[chat]

    # ----------------------------------------------------------------------------------------
    # Handlers (registered by build_router)

    async def on_message(self, message: Message) -> None:
        user = message.from_user
        if user is None or user.is_bot:
            return
        chat_id = message.chat.id
        t = Translator(resolve_language(user.language_code))
        base = Inbound(
            channel=CHANNEL,
            user_id=str(user.id),
            chat_id=str(chat_id),
            message_id=message_key(chat_id, message.message_id),
            language=user.language_code,
        )
        try:
            inbound = await self._translate(message, base)
        except _TooLarge:
            await self.sender.send_reply(chat_id, Reply(t("error.file_too_large")))
            return
        except (TelegramAPIError, OSError, aiohttp.ClientError) as exc:
            log.warning(
                "telegram message %s: file download failed: %s",
                base.message_id,
                type(exc).__name__,
            )
            await self.sender.send_reply(chat_id, Reply(t("telegram.download_failed")))
            return
        if inbound is None:
            if message.content_type in UNSUPPORTED:
                await self.sender.send_reply(chat_id, Reply(t("telegram.unsupported")))
            elif message.document is not None:
                await self.sender.send_reply(chat_id, Reply(t("telegram.not_an_image_file")))
            else:
                log.info("telegram message %s (%s) ignored", base.message_id, message.content_type)
            return
        turn = await self.conversation.take(inbound)
        if turn.kind is TurnKind.RETRY:
            raise RedeliverLater(base.message_id)
        await self._deliver(chat_id, message.message_id, t, turn.replies)

    async def on_edited_message(self, message: Message) -> None:
        user = message.from_user
        if user is None or user.is_bot:
            return
        t = Translator(resolve_language(user.language_code))
        await self.sender.send_reply(message.chat.id, Reply(t("telegram.edit_ignored")))

    async def on_callback(self, query: CallbackQuery) -> None:
        message = query.message
        if query.data is None or message is None or message.chat.type != ChatType.PRIVATE:
            await self.sender.answer_callback(query.id)
            return
        user, chat_id = query.from_user, message.chat.id
        if chat_id != user.id:
            # In a private chat with the bot the chat is the user: a press on a message in
            # someone else's chat is forged. Its replies would go there and strip that keyboard.
            log.warning("telegram callback %s on a message in another chat refused", query.id)
            await self.sender.answer_callback(query.id)
            return
        t = Translator(resolve_language(user.language_code))
        option = decode_option(query.data, await self._options_on_screen(str(user.id), query.data))
        inbound = Inbound(
            channel=CHANNEL,
            user_id=str(user.id),
            chat_id=str(chat_id),
            message_id=callback_key(query.id),
            language=user.language_code,
            option=option,
        )
        handling = asyncio.create_task(self.conversation.take(inbound))
        done, _ = await asyncio.wait({handling}, timeout=ANSWER_WITHIN_SECONDS)
        toast = None
        if handling in done:
            if handling.result().kind is TurnKind.RETRY:
                raise RedeliverLater(inbound.message_id)  # answered when it comes again
            refusals = {t("error.option_gone"), t("error.no_such_option")}
            toast = next(
                (r.text for r in handling.result().replies[:1] if r.text in refusals), None
            )
        await self.sender.answer_callback(query.id, toast)
        turn = await handling
        if turn.kind is TurnKind.RETRY:
            raise RedeliverLater(inbound.message_id)
        if isinstance(message, Message) and message.reply_markup is not None:
            # The choice is made (or refused, or was made before a restart and is pressed
            # again): its buttons should not be pressed again.
            await self.sender.remove_keyboard(chat_id, message.message_id)
        await self._deliver(chat_id, None, t, turn.replies)

    async def on_my_chat_member(self, event: ChatMemberUpdated) -> None:
        status = event.new_chat_member.status
        if status in ("kicked", "left"):
            await self.sender.mark_reachable(str(event.chat.id), False)
        elif status == "member":
            await self.sender.mark_reachable(str(event.chat.id), True)

    # ----------------------------------------------------------------------------------------
    # Helpers

    async def _translate(self, message: Message, base: Inbound) -> Inbound | None:
        """The message as an inbound for the conversation; None when it carries nothing the
        conversation takes (the caller says why)."""
        if message.text is not None:
            command = parse_command(message.text)
            if command is not None:
                return replace(base, command=command[0], args=command[1])
            return replace(base, text=message.text)
        if message.photo:
            size = pick_photo(message.photo)
            if size is None:
                raise _TooLarge
            return replace(base, image=await self._download(size.file_id))
        document = message.document
        if document is not None and is_image_document(document):
            if document.file_size is not None and document.file_size > MAX_DOWNLOAD_BYTES:
                raise _TooLarge
            return replace(base, image=await self._download(document.file_id))
        if document is not None and is_list_document(document):
            if document.file_size is not None and document.file_size > MAX_LIST_BYTES:
                raise _TooLarge
            name = document.file_name or "cards.csv"
            if PurePosixPath(name).suffix.lower() not in LIST_SUFFIXES:
                name += ".csv" if "csv" in (document.mime_type or "") else ".txt"
            payload = await self._download(document.file_id)
            return replace(base, document=payload, filename=name)
        return None

    async def _download(self, file_id: str) -> bytes:
        try:
            file = await self.bot.get_file(file_id)
        except TelegramBadRequest as exc:
            if "too big" in exc.message.lower():
                raise _TooLarge from exc
            raise
        if file.file_size is not None and file.file_size > MAX_DOWNLOAD_BYTES:
            raise _TooLarge
        if not file.file_path:
            raise OSError("getFile returned no file_path")
        buffer = io.BytesIO()
        await self.bot.download_file(file.file_path, destination=buffer, timeout=60)
        payload = buffer.getvalue()
        if len(payload) > MAX_DOWNLOAD_BYTES:
            raise _TooLarge
        return payload

    async def _options_on_screen(self, user_key: str, data: str) -> list[str]:
        """The option ids on the user's screen — needed only to map a hashed callback."""
        if not data.startswith("#"):
            return []
        async with self.uow_factory() as uow:
            state = await uow.conversations.get(CHANNEL, user_key)
        return [str(o) for o in (state.data.get("_options", []) if state else [])]

    async def _deliver(
        self, chat_id: int, inbound_id: int | None, t: Translator, replies: Sequence[Reply]
    ) -> None:
        """Send the replies; first delete the user's message when one of them asks for it."""
        out = list(replies)
        if inbound_id is not None and any(r.delete_inbound for r in out):
            deleted = await self.sender.delete_message(chat_id, inbound_id)
            note = t("telegram.deleted_inbound" if deleted else "telegram.delete_failed")
            at = next(n for n, r in enumerate(out) if r.delete_inbound)
            out[at] = replace(out[at], text=f"{out[at].text}\n{note}")
        await self.sender.send_replies(chat_id, out)
