"""WeChat's customer-service window while staff hold a ticket (issue 12, item 12), with the real
app, push service, outbox worker and database — on SQLite and PostgreSQL.

The attack it repeats: a user whose ticket is taken writes (the desk answers nothing while
staff hold it); the push service used to read "no replies" as "a redelivery" and never renewed
the user's window, so after five staff messages every further one was held.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.console import ConsoleChannel
from bot.outbox import OutboxWorker
from bot.wechat.delivery import MESSAGE_QUOTA, WeChatCourier, WeChatOutbox
from bot.wechat.protocol import PushSecurity, parse_push
from bot.wechat.service import PushService
from tests.e2e.conftest import Harness
from tests.wechat_peer import ACCOUNT, APP_ID, TOKEN, text_xml

STAFF = "telegram:900"


class RecordingApi:
    """The customer-service API as WeChat answers it within the quota."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    async def send_text(self, openid: str, text: str) -> None:
        self.texts.append((openid, text))

    async def send_template(self, openid: str, template_id: str, data: Any) -> None:
        raise AssertionError("no template configured")


class WeChatDesk:
    def __init__(self, h: Harness) -> None:
        assert h.app is not None
        self.h = h
        self.api = RecordingApi()
        self.push = PushService(
            PushSecurity(TOKEN, APP_ID, "plaintext", account_id=ACCOUNT),
            h.app.conversation,
            h.app.uow_factory,
            api=None,  # type: ignore[arg-type]  # text pushes need no API
            outbox=WeChatOutbox(h.app.uow_factory, h.clock, h.app.services.outbox_queued),
            clock=h.clock,
        )
        self.worker = OutboxWorker(
            h.app.uow_factory,
            WeChatCourier(h.app.uow_factory, self.api, h.clock),
            h.clock,  # type: ignore[arg-type]
        )
        self.staff = ConsoleChannel(
            h.app.conversation, user_id="900", lang="zh", write=lambda _: None, channel="telegram"
        )
        self._ids = (str(9_000_000 + n) for n in itertools.count())

    async def user_says(self, text: str) -> list[str] | None:
        xml = text_xml(self.h.user, text, next(self._ids))
        return await self.push._answer_in_time(parse_push(xml), 30)

    async def deliver(self) -> None:
        while await self.worker.deliver_due():
            pass

    async def held(self) -> int:
        assert self.h.app is not None
        async with self.h.app.uow_factory() as uow:
            mine = await uow.outbox.for_recipient("wechat", self.h.user)
        return sum(m.state.value == "held" for m in mine)


@pytest.fixture
async def desk(tmp_path: Path, database_url: str) -> AsyncIterator[WeChatDesk]:
    h = Harness(tmp_path, database_url, channel="wechat", overrides={"staff": STAFF})
    await h.start()
    try:
        yield WeChatDesk(h)
    finally:
        await h.close()


async def test_a_user_writing_to_staff_renews_the_window_so_staff_replies_keep_flowing(
    desk: WeChatDesk,
) -> None:
    assert await desk.user_says("/start")
    assert await desk.user_says("人工")
    assert await desk.user_says("1")  # the first reason on the menu: a ticket opens
    await desk.staff.send("/take 1")
    await desk.deliver()
    assert len(desk.api.texts) == 1  # "staff took over" is the window's first message

    for n in range(MESSAGE_QUOTA - 1):
        await desk.staff.send(f"第{n + 1}条")
        await desk.deliver()
    assert len(desk.api.texts) == MESSAGE_QUOTA
    await desk.staff.send("第五条")
    await desk.deliver()
    assert await desk.held() == 1  # WeChat would refuse a sixth: kept for the user's next

    # The user answers; the paused conversation says nothing back of its own — that is an
    # answer, not a redelivery: the held message rides on the passive reply and the window
    # opens again.
    desk.h.clock.advance(minutes=1)
    answer = await desk.user_says("好的，谢谢")
    assert answer is not None and any("第五条" in text for text in answer)
    for n in range(3):
        await desk.staff.send(f"再说{n + 1}")
        await desk.deliver()
    assert await desk.held() == 0
    texts = [text for _, text in desk.api.texts]
    assert len(texts) == MESSAGE_QUOTA + 3
    assert all(any(f"再说{n + 1}" in t for t in texts) for n in range(3))
