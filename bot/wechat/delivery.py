"""Everything said to a WeChat user that is not a passive reply goes through the outbox
(``wechat_outbox``) and leaves from here: answers that missed the 5-second window, the overflow
of a long answer, notifications outside a conversation.

- Per user, messages leave in order, one at a time (a message waits while an earlier one is
  undelivered); several processes share the work through leases on the rows.
- Notifications go as a template message when ``WECHAT_TEMPLATE_ID`` is set; otherwise — and
  when the template is refused — like replies, as customer-service (客服) messages.
- Customer-service messages respect WeChat's quota (see :func:`open_window`): outside it the
  message is *held* and goes out with the user's next message (prepended to its passive reply).
  WeChat's own refusals for time or count (45015, 45047) hold it too; any other refusal holds
  it as well (it is never dropped); network trouble and "system busy" retry with back-off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal

from bot.wechat.api import WeChatApi, WeChatApiError, WeChatUnavailable
from bot.wechat.protocol import MAX_TEXT_BYTES, render_texts
from core.messages import Reply
from core.ports import Clock, ContactWindow, OutboundMessage, WeChatUnitOfWorkFactory

log = logging.getLogger(__name__)

# Customer-service quota (developers.weixin.qq.com, 客服消息): after a user's message, 5
# messages within 48 hours; after a menu click or a follow, 3 within one minute.
MESSAGE_WINDOW, MESSAGE_QUOTA = timedelta(hours=48), 5
EVENT_WINDOW, EVENT_QUOTA = timedelta(minutes=1), 3
OUT_OF_WINDOW = frozenset({45015, 45047})
LEASE = timedelta(seconds=60)
POLL_SECONDS = 1.0
BATCH = 20
MAX_TEMPLATE_CHARS = 200
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


def backoff(attempts: int) -> timedelta:
    """How long to wait after a passing failure: 2, 4, 8 … up to 60 seconds."""
    return timedelta(seconds=min(60, 2 ** max(1, attempts)))


class Outbox:
    """Queues messages durably and delivers them."""

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
        self._wake = asyncio.Event()

    async def enqueue(
        self, openid: str, kind: str, texts: Sequence[str], delay: timedelta | None = None
    ) -> None:
        """Keep messages for delivery (durably, after ``delay``) and wake the sender."""
        if not texts:
            return
        now = self._clock.now()
        async with self._uow_factory() as uow:
            await uow.wechat_outbox.add(openid, kind, texts, now, now + delay if delay else None)
            await uow.commit()
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop``; never dies of one failure."""
        while not stop.is_set():
            try:
                busy = await self.deliver_due()
            except Exception:
                log.exception("WeChat outbox delivery failed")
                busy = 0
            if busy:
                continue
            self._wake.clear()
            waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waits, timeout=POLL_SECONDS, return_when="FIRST_COMPLETED")
            finally:
                for waiter in waits:
                    waiter.cancel()

    async def deliver_due(self) -> int:
        """Send what is due now (per user, the oldest undelivered messages); how many."""
        now = self._clock.now()
        async with self._uow_factory() as uow:
            claimed = await uow.wechat_outbox.claim_due(now, now + LEASE, BATCH)
            await uow.commit()
        batches: dict[str, list[OutboundMessage]] = {}
        for message in claimed:
            batches.setdefault(message.openid, []).append(message)
        if batches:
            await asyncio.gather(*(self._deliver(batch) for batch in batches.values()))
        return len(claimed)

    async def _deliver(self, batch: list[OutboundMessage]) -> None:
        """Send a user's leased messages merged into one WeChat message (as many as fit; the
        rest are released for the next round)."""
        merged = [batch[0]]
        size = len(batch[0].text.encode("utf-8"))
        for message in batch[1:]:
            size += len(message.text.encode("utf-8")) + 2
            if size > MAX_TEXT_BYTES:
                break
            merged.append(message)
        rest = batch[len(merged) :]
        if rest:
            await self._later(rest, "", at=self._clock.now())
        text = "\n\n".join(message.text for message in merged)
        head = merged[0]
        if head.kind == "notice" and self._template_id and await self._by_template(merged, text):
            return
        async with self._uow_factory() as uow:
            contact = await uow.wechat_contacts.get(head.openid)
        window = open_window(contact, self._clock.now())
        if window is None:
            await self._hold(merged, "outside the customer-service window")
            return
        try:
            await self._api.send_text(head.openid, text)
        except WeChatUnavailable as exc:
            await self._later(merged, str(exc))
            return
        except WeChatApiError as exc:
            if exc.errcode in OUT_OF_WINDOW:
                async with self._uow_factory() as uow:
                    await uow.wechat_contacts.exhaust(head.openid, MESSAGE_QUOTA, EVENT_QUOTA)
                    await uow.commit()
            await self._hold(merged, f"{exc.errcode} {exc.errmsg}")
            return
        async with self._uow_factory() as uow:
            for message in merged:
                assert message.id is not None
                await uow.wechat_outbox.mark_sent(message.id, "custom", self._clock.now())
            await uow.wechat_contacts.record_send(head.openid, window)
            await uow.commit()

    async def _by_template(self, merged: list[OutboundMessage], text: str) -> bool:
        assert self._template_id is not None
        if len(text) > MAX_TEMPLATE_CHARS:
            text = text[: MAX_TEMPLATE_CHARS - 1] + "…"
        try:
            await self._api.send_template(
                merged[0].openid, self._template_id, {self._template_field: text}
            )
        except (WeChatApiError, WeChatUnavailable) as exc:
            log.warning("template message refused (%s): customer service instead", exc)
            return False
        async with self._uow_factory() as uow:
            for message in merged:
                assert message.id is not None
                await uow.wechat_outbox.mark_sent(message.id, "template", self._clock.now())
            await uow.commit()
        return True

    async def _hold(self, messages: list[OutboundMessage], reason: str) -> None:
        log.info("%d WeChat message(s) held for the next message: %s", len(messages), reason)
        async with self._uow_factory() as uow:
            for message in messages:
                assert message.id is not None
                await uow.wechat_outbox.hold(message.id, reason)
            await uow.commit()

    async def _later(
        self, messages: list[OutboundMessage], reason: str, at: datetime | None = None
    ) -> None:
        if reason:
            log.warning("%d WeChat message(s) not sent (%s): retrying", len(messages), reason)
        async with self._uow_factory() as uow:
            for message in messages:
                assert message.id is not None
                when = at or self._clock.now() + backoff(message.attempts)
                await uow.wechat_outbox.retry_later(message.id, when, reason)
            await uow.commit()


class WeChatNotifier:
    """Notifications outside a conversation (a payout that landed later, …): queued durably and
    delivered by the outbox (template message, else customer service within its window)."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def notify(self, channel: str, user_key: str, reply: Reply) -> None:
        await self._outbox.enqueue(
            user_key, "notice", render_texts([reply]), delay=NOTICE_COALESCE
        )
