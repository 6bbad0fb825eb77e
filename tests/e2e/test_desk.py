"""The desk end to end in one process: a user on one channel, staff and admins on another, the
real app and database; outbox messages (relays, alerts) delivered by the outbox worker to a
recording courier. The same flow over the channels' test servers is in test_desk_channels."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from bot.console import ConsoleChannel
from core.messages import Inbound, Reply
from core.model import OrderStatus
from handlers.desk import check_sla
from tests.e2e.conftest import Harness
from tests.e2e.test_console_sale import ALIPAY, ID_NUMBER, NAME, PHONE, WALMART
from tests.fakes import deliver_outbox

STAFF = "telegram:900"
STAFF_2 = "telegram:901"
ADMIN = "telegram:1"
CHANNELS = ("wechat", "telegram", "console")


class Inboxes:
    """A notifier that keeps what each person was sent."""

    def __init__(self) -> None:
        self.got: dict[str, list[Reply]] = defaultdict(list)

    async def notify(self, channel: str, user_key: str, reply: Reply) -> None:
        self.got[f"{channel}:{user_key}"].append(reply)

    def texts(self, actor: str) -> str:
        return "\n".join(r.text for r in self.got[actor])

    def take(self, actor: str) -> list[Reply]:
        replies, self.got[actor] = self.got[actor], []
        return replies


class Desk:
    """Alice on WeChat, staff and an admin on Telegram, one app."""

    def __init__(self, h: Harness) -> None:
        assert h.app is not None
        self.h = h
        self.inboxes = Inboxes()
        self.people: dict[str, ConsoleChannel] = {}
        self.last: dict[str, list[Reply]] = {}
        user_say = h.say

        async def say_and_deliver(line: str) -> list[Reply]:
            replies = await user_say(line)
            await self.deliver()
            return replies

        h.say = say_and_deliver  # type: ignore[method-assign]

    def person(self, actor: str) -> ConsoleChannel:
        if actor not in self.people:
            channel, _, key = actor.partition(":")
            assert self.h.app is not None
            self.people[actor] = ConsoleChannel(
                self.h.app.conversation,
                user_id=key,
                lang="zh",
                write=lambda _: None,
                channel=channel,
            )
        return self.people[actor]

    async def say(self, actor: str, line: str) -> str:
        replies = await self.person(actor).send(line)
        self.last[actor] = replies
        await self.deliver()
        return "\n".join(r.text for r in replies)

    async def deliver(self) -> None:
        assert self.h.app is not None
        await deliver_outbox(self.h.app.services, self.inboxes, CHANNELS)

    async def tickets(self) -> list:  # type: ignore[type-arg]
        assert self.h.app is not None
        async with self.h.app.uow_factory() as uow:
            return list(await uow.tickets.active())


@pytest.fixture
async def desk(tmp_path: Path, database_url: str) -> AsyncIterator[Desk]:
    h = Harness(
        tmp_path,
        database_url,
        channel="wechat",
        overrides={"staff": f"{STAFF},{STAFF_2}", "admins": ADMIN},
    )
    await h.start()
    try:
        yield Desk(h)
    finally:
        await h.close()


ALICE = "wechat:alice"


async def alice_at_quote(d: Desk, tmp_path: Path) -> None:
    h = d.h
    await h.say("/start")
    await h.choose("menu.sell")
    await h.say(WALMART[0])
    await h.say(WALMART[1])
    assert await h.step() == "await_quote"


async def open_ticket(d: Desk, reason: str = "desk.reason") -> None:
    h = d.h
    await h.say("人工")
    assert "什么" in h.text() or "哪方面" in h.text()
    await h.choose(reason)
    await d.deliver()


# --------------------------------------------------------------------------------------------


async def test_a_disputed_quote_is_taken_over_requoted_and_the_user_is_then_paid(
    desk: Desk, tmp_path: Path
) -> None:
    h = desk.h
    await alice_at_quote(desk, tmp_path)
    [first_order] = await h.orders()
    await open_ticket(desk)
    assert "T1" in h.text() and "继续使用" in h.text()
    assert await h.step() == "await_quote"  # opening a ticket never moves the user

    # Every staff member and the admin hear of it; the queue shows it with its timer.
    for actor in (STAFF, STAFF_2, ADMIN):
        assert "新工单 T1" in desk.inboxes.texts(actor)
    queue = await desk.say(STAFF, "/queue")
    assert "T1" in queue and "首次响应剩" in queue and "待接入" in queue

    # Taking it: the staff member sees the evidence, masked; the user is told.
    card = await desk.say(STAFF, "/take 1")
    assert first_order.card_masked in card and WALMART[0] not in card
    assert "回收率" in card and "/resolve 1" in card
    assert "客服已接入" in desk.inboxes.texts(ALICE)

    # The flow is paused: what Alice writes goes to staff, redacted; nothing moves.
    await h.say(f"价格太低了，卡号 {WALMART[0]} 密码 {WALMART[1]}")
    assert h.last == []
    relayed = desk.inboxes.texts(STAFF)
    assert "价格太低了" in relayed
    assert WALMART[0] not in relayed and WALMART[1] not in relayed and "9136" in relayed
    await h.say("/start")
    assert await h.step() == "await_quote"
    assert "/start" in desk.inboxes.texts(STAFF)

    # Staff answer and keep a private note; the note never reaches the user.
    await desk.say(STAFF, "您好，我帮您重新核验一下余额")
    assert "客服（T1）：您好，我帮您重新核验一下余额" in desk.inboxes.texts(ALICE)
    assert "添加备注" in await desk.say(STAFF, "/note 用户很着急，优先处理")
    assert "用户很着急" not in desk.inboxes.texts(ALICE)

    # Re-quote and resolve: the user gets a fresh quote to accept, on their screen.
    desk.inboxes.take(ALICE)
    done = await desk.say(STAFF, "/resolve 1 requote 已按最新价格重新报价")
    assert "T1" in done
    told = desk.inboxes.take(ALICE)
    said = "\n".join(r.text for r in told)
    assert "已处理完毕" in said and "已按最新价格重新报价" in said and "客服已离开" in said
    assert told[-1].options and told[-1].options[0].id.startswith("quote.accept:")
    assert await h.step() == "await_quote"
    orders = {o.id: o for o in await h.orders()}
    assert orders[first_order.id].status is OrderStatus.CANCELLED
    [fresh] = [o for o in orders.values() if o.id != first_order.id]
    assert fresh.status is OrderStatus.QUOTED

    # Back in the flow: the user accepts the new quote and is paid, once.
    h.last = told
    await h.choose("quote.accept")
    await h.choose("consent.yes")
    await h.say(NAME)
    await h.say(ID_NUMBER)
    await h.say(PHONE)
    await h.choose("method.alipay")
    await h.say(ALIPAY)
    await h.choose("pay.confirm")
    assert "【电子回单】" in h.text()
    orders = {o.id: o for o in await h.orders()}
    assert orders[fresh.id].status is OrderStatus.SETTLED
    assert await desk.tickets() == []

    assert h.app is not None
    async with h.app.uow_factory() as uow:
        actions = [e.action for e in await uow.audit.all()]
    for action in ("ticket.opened", "ticket.taken", "ticket.replied", "ticket.noted"):
        assert action in actions
    assert "ticket.resolved" in actions


async def test_staff_and_admin_commands_answer_a_user_like_unknown_commands_and_do_nothing(
    desk: Desk,
) -> None:
    h = desk.h
    await h.say("/start")
    await open_ticket(desk)
    assert h.app is not None
    async with h.app.uow_factory() as uow:
        audit_before = len(list(await uow.audit.all()))
        rates_before = len(list(await uow.rates.all()))
    for line in (
        "/take 1",
        "/queue",
        "/resolve 1 approve ok",
        "/rate walmart 50 99%",
        "/rates",
        "/broadcast all 大促",
        "/grant @wechat:alice admin",
        "/revoke @telegram:900",
        "/transfer 1 @wechat:alice",
        "/note hi",
    ):
        name = line.split()[0][1:]
        replies = await h.say(line)
        unknown = await h.say(f"/{name}")  # the same command name, no arguments
        assert [r.text for r in replies] == [r.text for r in unknown], line
        assert "未知" in replies[0].text or "不认识" in replies[0].text or name in replies[0].text
    async with h.app.uow_factory() as uow:
        assert len(list(await uow.audit.all())) == audit_before
        assert len(list(await uow.rates.all())) == rates_before
        [ticket] = await uow.tickets.active()
        assert ticket.status.value == "open" and ticket.assignee is None


async def test_a_release_puts_the_ticket_back_and_the_user_goes_on_where_they_were(
    desk: Desk, tmp_path: Path
) -> None:
    h = desk.h
    await alice_at_quote(desk, tmp_path)
    await open_ticket(desk)
    await desk.say(STAFF, "/take 1")
    desk.inboxes.take(ALICE)
    assert "已放回队列" in await desk.say(STAFF, "/release 1")
    told = desk.inboxes.take(ALICE)
    assert "重新排队" in told[0].text
    assert told[-1].options[0].id.startswith("quote.accept:")
    # The flow runs again: the user accepts the quote they had.
    h.last = told
    await h.choose("quote.accept")
    assert await h.step() == "await_consent"
    [ticket] = await desk.tickets()
    assert ticket.status.value == "open"


async def test_a_transferred_ticket_is_the_new_staff_members_and_the_old_cannot_act(
    desk: Desk,
) -> None:
    h = desk.h
    await h.say("/start")
    await open_ticket(desk)
    await desk.say(STAFF, "/take 1")
    desk.inboxes.take(STAFF_2)
    assert "已转给" in await desk.say(STAFF, f"/transfer 1 @{STAFF_2}")
    assert "把 T1 转给了您" in desk.inboxes.texts(STAFF_2)
    assert "另一位客服" in desk.inboxes.texts(ALICE)
    await h.say("还在吗")
    assert "还在吗" in desk.inboxes.texts(STAFF_2)
    refused = await desk.say(STAFF, "/resolve 1 answered 好的")
    assert "已由 telegram:901 处理" in refused
    assert "已解决" in await desk.say(STAFF_2, "/resolve 1 answered 已解答")
    assert "已处理完毕" in desk.inboxes.texts(ALICE)


async def test_refunding_withdraws_the_order_and_the_user_returns_to_the_menu(
    desk: Desk, tmp_path: Path
) -> None:
    h = desk.h
    await alice_at_quote(desk, tmp_path)
    await h.say("人工 我不想卖了")
    await h.choose("desk.reason")
    await desk.say(STAFF, "/take 1")
    desk.inboxes.take(ALICE)
    await desk.say(STAFF, "/resolve 1 refund 已为您撤回订单")
    [order] = await h.orders()
    assert order.status is OrderStatus.CANCELLED
    assert await h.step() == "start"
    told = desk.inboxes.texts(ALICE)
    assert "订单已撤回" in told and "已为您撤回订单" in told


async def test_the_timers_remind_staff_then_escalate_to_admins_once_each(desk: Desk) -> None:
    h = desk.h
    assert h.app is not None
    await h.say("/start")
    await open_ticket(desk)
    for actor in (STAFF, STAFF_2, ADMIN):
        desk.inboxes.take(actor)
    assert await check_sla(h.app.services) == 0
    h.clock.advance(minutes=16)
    assert await check_sla(h.app.services) == 3  # two staff and the admin (also staff)
    await desk.deliver()
    assert "已等待首次回复" in desk.inboxes.texts(STAFF)
    assert await check_sla(h.app.services) == 0  # never twice
    h.clock.advance(minutes=15)
    assert await check_sla(h.app.services) == 1  # the admin
    await desk.deliver()
    assert "仍无人回复" in desk.inboxes.texts(ADMIN)
    assert "仍无人回复" not in desk.inboxes.texts(STAFF)
    queue = await desk.say(STAFF, "/queue")
    assert "首次响应已超时" in queue


async def test_an_admin_grants_and_revokes_staff_in_chat(desk: Desk) -> None:
    bob = "telegram:555"
    before = await desk.say(bob, "/queue")
    assert "没有待处理" not in before
    assert "现在是 staff" in await desk.say(ADMIN, f"/grant @{bob} staff")
    assert "没有待处理" in await desk.say(bob, "/queue")
    assert "来自配置" in await desk.say(ADMIN, f"/revoke @{STAFF}")
    assert "不再是客服" in await desk.say(ADMIN, f"/revoke @{bob}")
    assert await desk.say(bob, "/queue") == before


async def test_a_rate_set_in_chat_applies_from_its_time_and_never_to_a_locked_quote(
    desk: Desk, tmp_path: Path
) -> None:
    h = desk.h
    await alice_at_quote(desk, tmp_path)
    [locked] = await h.orders()
    set_now = await desk.say(ADMIN, "/rate 沃尔玛 >100 95%")
    assert "95%" in set_now and "已给出的报价保持原费率" in set_now
    rates = await desk.say(ADMIN, "/rates")
    assert "95%" in rates
    assert "96%" in await desk.say(ADMIN, "/rate walmart >100 96% from 23:59")
    assert "已排期" in await desk.say(ADMIN, "/rates")
    async with h.app.uow_factory() as uow:  # type: ignore[union-attr]
        quote = await uow.quotes.get(locked.quote_id)
        actions = [e.action for e in await uow.audit.all()]
    assert quote.rate_bp != 9500
    assert actions.count("rates.changed") == 2
    assert "费率未修改" in await desk.say(ADMIN, "/rate walmart 37 90%")
    assert "费率未修改" in await desk.say(ADMIN, "/rate walmart >100 5%")


async def test_a_staff_message_delivered_twice_reaches_the_user_once(desk: Desk) -> None:
    h = desk.h
    await h.say("/start")
    await open_ticket(desk)
    await desk.say(STAFF, "/take 1")
    desk.inboxes.take(ALICE)
    assert h.app is not None
    message = Inbound("telegram", "900", "900", "dup-1", "zh", text="请稍等")
    await h.app.conversation.handle(message)
    await h.app.conversation.handle(message)
    await desk.deliver()
    assert [r.text for r in desk.inboxes.take(ALICE)] == ["客服（T1）：请稍等"]


async def test_a_user_asking_again_hears_where_their_ticket_stands(desk: Desk) -> None:
    h = desk.h
    await h.say("/start")
    await open_ticket(desk)
    await h.say("人工")
    assert "正在排队（第 1 位）" in h.text()
    await desk.say(STAFF, "/take 1")
    await h.say("人工")
    assert "客服已在处理工单 T1" in h.text()


async def test_an_order_problem_from_the_orders_list_opens_a_ticket_about_that_order(
    desk: Desk, tmp_path: Path
) -> None:
    h = desk.h
    await alice_at_quote(desk, tmp_path)
    [order] = await h.orders()
    await h.say("/orders")
    await h.choose("desk.order")
    await h.choose("desk.reason")
    await desk.deliver()
    [ticket] = await desk.tickets()
    assert ticket.order_id == order.id
    assert order.number in desk.inboxes.texts(STAFF)


class Unreachable:
    async def notify(self, channel: str, user_key: str, reply: Reply) -> None:
        raise ConnectionError("blocked")


async def test_a_notice_that_cannot_be_delivered_is_retried_with_pauses_then_given_up(
    desk: Desk,
) -> None:
    from bot.outbox import MAX_ATTEMPTS

    h = desk.h
    assert h.app is not None
    async with h.app.uow_factory() as uow:
        await uow.outbox.add("telegram", "900", [Reply("hello")], h.clock.now())
        await uow.commit()
    services = h.app.services
    assert await deliver_outbox(services, Unreachable(), CHANNELS) == 1  # tried, failed
    assert await deliver_outbox(services, desk.inboxes, CHANNELS) == 0  # pausing, not due
    for _ in range(MAX_ATTEMPTS - 1):
        h.clock.advance(hours=2)
        assert await deliver_outbox(services, Unreachable(), CHANNELS) == 1
    h.clock.advance(days=1)
    assert await deliver_outbox(services, desk.inboxes, CHANNELS) == 0  # given up
    assert desk.inboxes.texts(STAFF) == ""


async def test_while_the_bot_waits_for_a_secret_what_the_user_types_never_reaches_staff(
    desk: Desk,
) -> None:
    h = desk.h
    await h.say("/start")
    await h.choose("menu.sell")
    await h.say(WALMART[0])
    assert await h.step() == "await_secret"
    await open_ticket(desk)
    await desk.say(STAFF, "/take 1")
    replies = await h.say(f"密码是 {WALMART[1]} 对吗")
    assert replies and replies[0].delete_inbound  # the chat drops it
    relayed = desk.inboxes.texts(STAFF)
    assert WALMART[1] not in relayed and "密码是" not in relayed
    assert "内容不予转发" in relayed
    assert h.app is not None
    async with h.app.uow_factory() as uow:
        assert all(WALMART[1] not in m.text for m in await uow.tickets.messages(1))


async def test_a_refund_of_an_old_order_leaves_the_sale_the_user_is_in_alone(
    desk: Desk, tmp_path: Path
) -> None:
    h = desk.h
    await alice_at_quote(desk, tmp_path)
    [old] = await h.orders()
    await h.say("/cancel")
    await h.choose("menu.sell")
    await h.say("2801527364099")  # another card, quoted
    assert await h.step() == "await_quote"
    await h.say(f"人工 {old.number} 这个订单")
    await h.choose("desk.reason")
    [ticket] = await desk.tickets()
    assert ticket.order_id == old.id
    await desk.say(STAFF, "/take 1")
    refused = await desk.say(STAFF, "/resolve 1 requote 重新报价")
    assert "正在机器人里办理别的事" in refused
    await desk.say(STAFF, "/resolve 1 answered 旧订单已取消，无需处理")
    assert await h.step() == "await_quote"  # still at the new card's quote
    statuses = sorted(o.status.value for o in await h.orders())
    assert statuses == ["cancelled", "quoted"]


async def test_an_admin_takes_over_a_ticket_whose_holder_is_away(desk: Desk) -> None:
    h = desk.h
    await h.say("/start")
    await open_ticket(desk)
    await desk.say(STAFF, "/take 1")
    refused = await desk.say(STAFF_2, "/take 1")
    assert "已由 telegram:900 处理" in refused
    card = await desk.say(ADMIN, "/take 1")
    assert "T1" in card
    assert "接手了您的 T1" in desk.inboxes.texts(STAFF)
    await h.say("有人吗")
    assert "有人吗" in desk.inboxes.texts(ADMIN)
    assert "已解决" in await desk.say(ADMIN, "/resolve 1 answered 好的")


async def test_staff_removed_from_the_settings_lose_their_tickets_to_the_queue(
    desk: Desk,
) -> None:
    h = desk.h
    assert h.app is not None
    await h.say("/start")
    await open_ticket(desk)
    await desk.say(ADMIN, "/grant @telegram:555 staff")
    await desk.say("telegram:555", "/take 1")
    async with h.app.uow_factory() as uow:
        await uow.role_grants.revoke("telegram:555")  # as if the role went away elsewhere
        await uow.commit()
    await check_sla(h.app.services)
    await desk.deliver()
    [ticket] = await desk.tickets()
    assert ticket.status.value == "open" and ticket.assignee is None
    assert "已无法继续" in desk.inboxes.texts(ALICE)


async def test_a_staff_group_told_of_tickets_never_becomes_a_user(
    tmp_path: Path, database_url: str
) -> None:
    h = Harness(
        tmp_path,
        database_url,
        channel="wechat",
        overrides={"staff": STAFF, "staff_chats": "telegram:-100500"},
    )
    await h.start()
    try:
        d = Desk(h)
        await h.say("/start")
        await open_ticket(d)
        assert "新工单 T1" in d.inboxes.texts("telegram:-100500")
        assert h.app is not None
        async with h.app.uow_factory() as uow:
            assert await uow.users.language_of("telegram", "-100500") is None
            assert await uow.users.language_of("telegram", "900") is None
    finally:
        await h.close()


async def test_holding_two_tickets_staff_are_told_which_one_they_answer(
    desk: Desk, tmp_path: Path
) -> None:
    h = desk.h
    await h.say("/start")
    await open_ticket(desk)
    bob = desk.person("wechat:bob")
    await bob.send("/start")
    await bob.send("人工 付款没到")
    await bob.send("2")
    await desk.deliver()
    await desk.say(STAFF, "/take 1")
    await desk.say(STAFF, "/take 2")
    assert "→ T2" in await desk.say(STAFF, "马上查")
    assert "马上查" in desk.inboxes.texts("wechat:bob")
    assert "马上查" not in desk.inboxes.texts(ALICE)
    h.clock.advance(seconds=5)
    await desk.say(STAFF, "/take 1")
    assert "→ T1" in await desk.say(STAFF, "您好")
    assert "您好" in desk.inboxes.texts(ALICE)


async def test_a_rate_change_now_is_carried_into_a_table_already_scheduled_for_later(
    desk: Desk,
) -> None:
    h = desk.h
    assert h.app is not None
    await desk.say(ADMIN, "/rate walmart >100 96% from 23:59")
    told = await desk.say(ADMIN, "/rate walmart 50 80%")
    assert "排期费率表" in told
    from core.sale import pricing_in_force

    async with h.app.uow_factory() as uow:
        now = await pricing_in_force(uow, h.app.services.sale.pricing, h.clock.now())
        later = await pricing_in_force(
            uow, h.app.services.sale.pricing, h.clock.now() + timedelta(days=1)
        )
    assert now.rates["walmart"][0].rate_bp == 8_000
    assert later.rates["walmart"][0].rate_bp == 8_000  # not undone at 23:59
    assert later.rates["walmart"][2].rate_bp == 9_600
