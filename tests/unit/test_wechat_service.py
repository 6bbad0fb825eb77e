"""Exactly one answer per push, in one process: the handover between the request waiting for a
passive reply and the outbox (customer service), with retries arriving at any moment."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.wechat.protocol import PushSecurity, parse_push
from bot.wechat.service import PushService
from core.messages import Inbound, Reply
from handlers.engine import Turn, TurnKind
from storage.db import SqlAlchemyUnitOfWorkFactory
from tests.fakes import FakeClock
from tests.wechat_peer import ACCOUNT, APP_ID, TOKEN, text_xml

pytestmark = pytest.mark.parametrize("uow_factory", ["sqlite"], indirect=True)


class GatedConversation:
    """Answers each message once the test opens the gate; counts what it handled."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.handled: list[str] = []

    async def take(self, inbound: Inbound) -> Turn:
        self.handled.append(inbound.message_id)
        await self.gate.wait()
        return Turn(TurnKind.HANDLED, (Reply(f"answer to {inbound.text}"),))


class FailingStorageConversation(GatedConversation):
    """The database is down for the first ``failures`` messages (nothing is kept)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.gate.set()

    async def take(self, inbound: Inbound) -> Turn:
        if self.failures:
            self.failures -= 1
            self.handled.append(inbound.message_id)
            return Turn(TurnKind.RETRY)
        return await super().take(inbound)


class RecordingOutbox:
    def __init__(self) -> None:
        self.queued: list[tuple[str, str, list[str]]] = []

    async def enqueue(self, openid: str, kind: str, texts: Any, delay: Any = None) -> None:
        self.queued.append((openid, kind, list(texts)))


def service(
    uow_factory: SqlAlchemyUnitOfWorkFactory, conversation: GatedConversation | None = None
) -> tuple[PushService, Any, Any]:
    conversation, outbox = conversation or GatedConversation(), RecordingOutbox()
    push_service = PushService(
        PushSecurity(TOKEN, APP_ID, "plaintext", account_id=ACCOUNT),
        conversation,  # type: ignore[arg-type]
        uow_factory,
        api=None,  # type: ignore[arg-type]  # text pushes need no API
        outbox=outbox,  # type: ignore[arg-type]
        clock=FakeClock(),
    )
    return push_service, conversation, outbox


PUSH = parse_push(text_xml("o1", "卖卡", "42"))


async def test_an_answer_ready_in_time_is_the_passive_reply(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    push_service, conversation, outbox = service(uow_factory)
    conversation.gate.set()
    # A deadline no busy machine can pass: "in time" here is about the order of events.
    assert await push_service._answer_in_time(PUSH, 3600) == ["answer to 卖卡"]
    assert outbox.queued == []


async def test_an_answer_too_late_goes_once_by_customer_service(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    push_service, conversation, outbox = service(uow_factory)
    assert await push_service._answer_in_time(PUSH, 0.05) == []
    conversation.gate.set()
    await push_service.drain(5)
    assert outbox.queued == [("o1", "reply", ["answer to 卖卡"])]


async def test_a_retry_while_handling_takes_over_the_wait_and_nothing_runs_twice(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    push_service, conversation, outbox = service(uow_factory)
    first = asyncio.create_task(push_service._answer_in_time(PUSH, 30))
    await asyncio.sleep(0)  # one turn of the loop: the first request is now the one waiting
    assert not first.done()
    second = asyncio.create_task(push_service._answer_in_time(PUSH, 30))
    assert await first == []  # WeChat stopped listening to the first connection
    conversation.gate.set()
    assert await second == ["answer to 卖卡"]
    assert await push_service._answer_in_time(PUSH, 5) == []  # after it was answered
    assert conversation.handled == ["42"]
    assert outbox.queued == []


async def test_a_retry_after_the_deadline_passed_still_gets_the_passive_reply_and_no_copy(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    push_service, conversation, outbox = service(uow_factory)
    assert await push_service._answer_in_time(PUSH, 0.05) == []
    retry = asyncio.create_task(push_service._answer_in_time(PUSH, 30))
    await asyncio.sleep(0)  # one turn of the loop: the retry is now the one waiting
    conversation.gate.set()
    assert await retry == ["answer to 卖卡"]
    await push_service.drain(5)
    assert outbox.queued == []


async def test_storage_down_is_no_answer_and_wechats_retry_is_handled_afresh(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    """Issue 12 item 8: the database fails mid-message → no ``success`` (the push is answered
    503), nothing remembered, so WeChat's next try of the same push is handled and answered."""
    conversation = FailingStorageConversation(failures=1)
    push_service, _, outbox = service(uow_factory, conversation)
    assert await push_service._answer_in_time(PUSH, 5) is None
    assert await push_service._answer_in_time(PUSH, 5) == ["answer to 卖卡"]
    assert conversation.handled == ["42", "42"]
    assert outbox.queued == []
