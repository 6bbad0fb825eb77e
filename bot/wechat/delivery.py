"""Everything said to a WeChat user that is not a passive reply goes through the outbox
(``core.ports.OutboxRepository``, delivered by :class:`bot.outbox.OutboxWorker`) and leaves
through :class:`WeChatCourier`: answers that missed the 5-second window, the overflow of a long
answer, notices outside a conversation (outcomes, decisions, relays).

- Per user, messages leave in order (a message waits while an earlier one is undelivered);
  several processes share the work through leases on the rows.
- Notifications go as a template message when ``WECHAT_TEMPLATE_ID`` is set; otherwise — and
  when the template is refused — like replies, as customer-service (客服) messages.
- Customer-service messages respect WeChat's quota (see :func:`open_window`), worked out from
  the stored time of the user's last message and the customer-service messages the outbox
  sent since: outside it the message is *held* and goes out with the user's next message
  (prepended to its passive reply). WeChat's own refusals for time or count (45015, 45047) hold
  it too; any other refusal holds it as well (it is never dropped); network trouble and
  "system busy" retry with back-off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal

from bot.outbox import Delivered, Handed, Held, Retry
from bot.wechat.api import WeChatApi, WeChatApiError, WeChatUnavailable
from bot.wechat.protocol import MAX_TEXT_BYTES, render_texts
from core.messages import Channel, Reply
from core.ports import (
    WECHAT_CUSTOM,
    Clock,
    ContactWindow,
    OutboxKind,
    OutboxMessage,
    WeChatUnitOfWorkFactory,
)

log = logging.getLogger(__name__)

# Customer-service quota (developers.weixin.qq.com, 客服消息): after a user's message, 5
# messages within 48 hours; after a menu click or a follow, 3 within one minute.
MESSAGE_WINDOW, MESSAGE_QUOTA = timedelta(hours=48), 5
EVENT_WINDOW, EVENT_QUOTA = timedelta(minutes=1), 3
OUT_OF_WINDOW = frozenset({45015, 45047})
MAX_TEMPLATE_CHARS = 200
CHANNEL = Channel.WECHAT.value
# A notification is often several replies in a row (a receipt, then the menu): waiting this
# long lets them leave as one WeChat message (one template, one unit of customer-service quota).
NOTICE_COALESCE = timedelta(seconds=1)


def open_window(
    contact: ContactWindow | None, now: datetime
) -> Literal["message", "event"] | None:
    """Which quota a customer-service message may use now, or None when WeChat would refuse."""
    if contact is None:
        return None
    if (
        contact.last_message_at is not None
        and now < contact.last_message_at + MESSAGE_WINDOW
        and contact.message_sends < MESSAGE_QUOTA
    ):
        return "message"
    if (
        contact.last_event_at is not None
        and now < contact.last_event_at + EVENT_WINDOW
        and contact.event_sends < EVENT_QUOTA
    ):
        return "event"
    return None


class WeChatOutbox:
    """Queues WeChat messages in the outbox (the answers that miss the 5 s window, the overflow
    of a long answer) and wakes this process's WeChat worker."""

    def __init__(
        self, uow_factory: WeChatUnitOfWorkFactory, clock: Clock, wake: asyncio.Event
    ) -> None:
        self._uow_factory = uow_factory
        self._clock = clock
        self._wake = wake

    async def enqueue(
        self, openid: str, kind: str, texts: Sequence[str], delay: timedelta | None = None
    ) -> None:
        """Keep messages for delivery (durably, after ``delay``) and wake the sender."""
        if not texts:
            return
        now = self._clock.now()
        async with self._uow_factory() as uow:
            await uow.outbox.add(
                CHANNEL,
                openid,
                [Reply(text) for text in texts],
                now,
                kind=OutboxKind(kind),
                not_before=now + delay if delay else None,
            )
            await uow.commit()
        self._wake.set()


class WeChatCourier:
    """Sends a WeChat user's outbox messages as one WeChat message (as many as fit): a notice
    by template message when one is configured, else — and when the template is refused — by
    customer-service message within the user's window; outside it, or refused by WeChat for
    time or count, the message is held for the user's next message."""

    channel = CHANNEL

    def __init__(
        self,
        uow_factory: WeChatUnitOfWorkFactory,
        api: WeChatApi,
        clock: Clock,
        template_id: str | None = None,
        template_field: str = "content",
    ) -> None:
        self._uow_factory = uow_factory
        self._api = api
        self._clock = clock
        self._template_id = template_id
        self._template_field = template_field

    async def deliver(self, recipient: str, messages: Sequence[OutboxMessage]) -> Handed:
        texts = [render_texts([m.reply]) for m in messages]
        merged = [texts[0]]
        size = sum(len(t.encode("utf-8")) + 2 for t in texts[0])
        for more in texts[1:]:
            size += sum(len(t.encode("utf-8")) + 2 for t in more)
            if size > MAX_TEXT_BYTES + 2:
                break
            merged.append(more)
        # One message's text too long for one WeChat message goes as its pieces, in order.
        pieces = merged[0] if len(merged[0]) > 1 else ["\n\n".join(t for p in merged for t in p)]
        text = "\n\n".join(pieces)
        taken = len(merged)
        notice = messages[0].kind is OutboxKind.NOTICE
        if notice and self._template_id and await self._by_template(recipient, text):
            return Handed(taken, Delivered("template"))
        async with self._uow_factory() as uow:
            contact = await uow.wechat_contacts.get(recipient)
        if open_window(contact, self._clock.now()) is None:
            return Handed(taken, Held("outside the customer-service window"))
        try:
            for piece in pieces:
                await self._api.send_text(recipient, piece)
        except WeChatUnavailable as exc:
            return Handed(taken, Retry(str(exc)))
        except WeChatApiError as exc:
            # Out of time or count (45015, 45047), or any other refusal: never dropped.
            return Handed(taken, Held(f"{exc.errcode} {exc.errmsg}"))
        return Handed(taken, Delivered(WECHAT_CUSTOM))

    async def _by_template(self, openid: str, text: str) -> bool:
        assert self._template_id is not None
        if len(text) > MAX_TEMPLATE_CHARS:
            text = text[: MAX_TEMPLATE_CHARS - 1] + "…"
        try:
            await self._api.send_template(openid, self._template_id, {self._template_field: text})
        except (WeChatApiError, WeChatUnavailable) as exc:
            log.warning("template message refused (%s): customer service instead", exc)
            return False
        return True
