"""Taking Telegram updates in: validated, limited per sender, queued durably, then confirmed.

Both ways updates arrive — a getUpdates batch, a webhook POST — end in
:meth:`TelegramIntake.take`. It keeps every update it admits in the inbound queue in one
transaction and only then returns, so the caller can confirm them to Telegram (the next
``offset``, a 200): a crash after that loses nothing, and a storage failure raises, so nothing is
confirmed and Telegram delivers the updates again. Handling happens later, chat by chat
(:mod:`bot.inflow`).

A sender over their allowance (:class:`core.inflow.InboundAllowance`) gets one calm "slow down"
and the rest of their flood is dropped on purpose (logged with a count, never silently): a
pressed button is still answered, so it does not spin.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiogram import Bot
from aiogram.types import Update
from pydantic import ValidationError

from bot.telegram.adapter import chat_of
from bot.telegram.inbound import callback_key, message_key, out_of_bounds
from bot.telegram.outbound import CHANNEL, TelegramSender
from core.inflow import Admission, InboundAllowance
from core.messages import Reply
from core.ports import Clock, InboundQueue, TakenUpdate
from handlers.i18n import Translator, resolve_language

log = logging.getLogger(__name__)

MAX_KEY_CHARS = 64


def update_key(update: Update) -> str:
    """The queue's key of an update: the same message or button press always has the same key
    (Telegram may reuse an ``update_id`` after a quiet week; a message key it never reuses)."""
    if update.message is not None:
        key = message_key(update.message.chat.id, update.message.message_id)
    elif update.callback_query is not None:
        key = callback_key(update.callback_query.id)
    elif update.edited_message is not None:
        edited = update.edited_message
        key = f"e:{edited.chat.id}:{edited.message_id}:{edited.edit_date or 0}"
    else:
        key = f"u:{update.update_id}"
    if len(key) > MAX_KEY_CHARS:
        key = "h:" + hashlib.sha256(key.encode()).hexdigest()[:40]
    return key


def sender_of(update: Update) -> int | None:
    """Who sent an update that counts against their allowance (messages, edits, presses)."""
    for event in (update.message, update.edited_message, update.callback_query):
        if event is not None and event.from_user is not None:
            return event.from_user.id
    return None


class TelegramIntake:
    """Turns raw updates into queued work (see the module docstring)."""

    def __init__(
        self,
        bot: Bot,
        queue: InboundQueue,
        sender: TelegramSender,
        allowance: InboundAllowance,
        clock: Clock,
        *,
        on_queued: Callable[[], None] = lambda: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bot = bot
        self._queue = queue
        self._sender = sender
        self._allowance = allowance
        self._clock = clock
        self._on_queued = on_queued
        self._monotonic = monotonic
        self._refusals: set[asyncio.Task[None]] = set()
        self.dropped = 0

    async def take(self, raw: Sequence[Mapping[str, Any]]) -> None:
        """Queue the updates of one delivery; returns once they are durable (raises if not)."""
        taken: list[TakenUpdate] = []
        refused: list[tuple[Update, Admission]] = []
        for item in raw:
            try:
                update = Update.model_validate(item, context={"bot": self._bot})
            except (ValidationError, RecursionError):
                log.warning("telegram update %s is malformed; skipped", item.get("update_id"))
                continue
            too_big = out_of_bounds(update)
            if too_big is not None:
                log.warning(
                    "telegram update %s: %s out of bounds; skipped", update.update_id, too_big
                )
                continue
            who = sender_of(update)
            if who is not None:
                admission = self._allowance.admit(str(who), self._monotonic())
                if admission is not Admission.ADMIT:
                    refused.append((update, admission))
                    continue
            chat = chat_of(update)
            taken.append(
                TakenUpdate(
                    update_key=update_key(update),
                    chat_key=str(chat if chat is not None else f"u{update.update_id}"),
                    payload=json.dumps(item, ensure_ascii=False, separators=(",", ":")),
                )
            )
        if taken:
            await self._queue.put(CHANNEL, taken, self._clock.now())
            self._on_queued()
        if refused:
            self.dropped += len(refused)
            log.info("telegram: %d update(s) over their sender's allowance dropped", len(refused))
            for update, admission in refused:
                task = asyncio.create_task(self._refuse(update, admission))
                self._refusals.add(task)
                task.add_done_callback(self._refusals.discard)

    async def _refuse(self, update: Update, admission: Admission) -> None:
        """Tell the sender to slow down (once a streak); always answer a pressed button."""
        try:
            event = update.message or update.edited_message or update.callback_query
            user = event.from_user if event is not None else None
            t = Translator(resolve_language(user.language_code if user else None))
            text = t("inbound.slow_down") if admission is Admission.SLOW_DOWN else None
            query = update.callback_query
            if query is not None:
                await self._sender.answer_callback(query.id, text)
            elif text is not None:
                message = update.message or update.edited_message
                if message is not None:
                    await self._sender.send_reply(message.chat.id, Reply(text))
        except Exception:
            log.exception("telegram: telling a sender to slow down failed")

    async def aclose(self) -> None:
        """Finish the slow-down answers in flight."""
        if self._refusals:
            await asyncio.gather(*self._refusals, return_exceptions=True)
