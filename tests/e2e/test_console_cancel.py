"""/cancel and withdrawing an order, through the console on SQLite and PostgreSQL.

/cancel stops the step in progress and says what it stopped; it never touches an order that
is already submitted (under review, being paid). Withdrawing an order held for review is its
own action, offered under /orders, with a confirmation that names the order and its amount.
"""

from __future__ import annotations

from pathlib import Path

from core import review
from core.model import Order, OrderStatus
from core.money import yuan
from tests.e2e.conftest import Harness
from tests.e2e.test_console_sale import (
    SCRIPT,
    SINOPEC_55K,
    WALMART,
    ZH,
    card_photo,
    play,
    sell_until_quote,
    verify_level_2,
)


async def held_for_review(h: Harness) -> Order:
    await play(h, SCRIPT[:2])
    await h.say(SINOPEC_55K[0])
    await h.say(SINOPEC_55K[1])
    await play(h, SCRIPT[4:])
    await verify_level_2(h)
    [order] = await h.orders()
    assert order.status is OrderStatus.REVIEW
    return order


async def in_review_queue(h: Harness) -> list[int | None]:
    assert h.app is not None
    async with h.app.uow_factory() as uow:
        return [o.id for o in await review.queue(uow)]


async def test_cancel_at_the_menu_leaves_an_order_under_review_where_it_is(
    harness: Harness,
) -> None:
    held = await held_for_review(harness)
    await harness.say("/cancel")
    assert ZH("sell.cancelled") not in harness.text()
    assert ZH("sell.held_not_cancelled", order=held.number) in harness.text()
    [order] = await harness.orders()
    assert order.status is OrderStatus.REVIEW
    assert await in_review_queue(harness) == [order.id]


async def test_cancel_during_a_new_sale_cancels_only_that_sale_and_names_it(
    harness: Harness, tmp_path: Path
) -> None:
    held = await held_for_review(harness)
    await sell_until_quote(harness, card_photo(tmp_path, WALMART[0]), WALMART[1])
    quoted = next(o for o in await harness.orders() if o.status is OrderStatus.QUOTED)
    await harness.say("/cancel")
    said = harness.text()
    assert ZH("cancel.order", order=quoted.number, card=quoted.card_masked) in said
    assert ZH("sell.held_not_cancelled", order=held.number) in said
    statuses = {o.id: o.status for o in await harness.orders()}
    assert statuses == {held.id: OrderStatus.REVIEW, quoted.id: OrderStatus.CANCELLED}
    assert await in_review_queue(harness) == [held.id]


async def test_cancel_while_typing_a_card_says_the_card_step_was_stopped(
    harness: Harness,
) -> None:
    await harness.say("/start")
    await harness.choose("menu.sell")
    await harness.say("/cancel")
    assert ZH("cancel.card_step") in harness.text()
    assert await harness.step() == "start"


async def test_cancel_with_nothing_in_progress_says_so(harness: Harness) -> None:
    await harness.say("/start")
    await harness.say("/cancel")
    assert ZH("sell.nothing_to_cancel") in harness.text()


async def test_a_held_order_is_withdrawn_only_after_a_confirmation_naming_it_and_its_amount(
    harness: Harness,
) -> None:
    held = await held_for_review(harness)
    await harness.say("/orders")
    await harness.choose("order.withdraw")
    asked = harness.text()
    assert ZH("withdraw.confirm", order=held.number, amount=yuan(held.payout_fen)) in asked
    [order] = await harness.orders()
    assert order.status is OrderStatus.REVIEW  # nothing happens before the confirmation

    await harness.choose("withdraw.keep")
    assert ZH("withdraw.kept", order=held.number) in harness.text()
    [order] = await harness.orders()
    assert order.status is OrderStatus.REVIEW

    await harness.say("/orders")
    await harness.choose("order.withdraw")
    await harness.choose("withdraw.yes")
    assert ZH("withdraw.done", order=held.number, amount=yuan(held.payout_fen)) in harness.text()
    [order] = await harness.orders()
    assert order.status is OrderStatus.CANCELLED
    assert await in_review_queue(harness) == []
    assert harness.app is not None
    async with harness.app.uow_factory() as uow:
        events = await uow.audit.for_subject(f"order:{order.id}")
    assert "order.withdrawn" in [e.action for e in events]


async def test_an_order_decided_meanwhile_is_not_withdrawn_by_a_stale_confirmation(
    harness: Harness,
) -> None:
    held = await held_for_review(harness)
    await harness.say("/orders")
    await harness.choose("order.withdraw")
    assert harness.app is not None
    async with harness.app.uow_factory() as uow:
        await review.decide(uow, harness.clock, held.id or 0, False, "staff", "ID mismatch")
        await uow.commit()
    await harness.choose("withdraw.yes")
    assert ZH("withdraw.not_held", order=held.number) in harness.text()
    [order] = await harness.orders()
    assert order.status is OrderStatus.REJECTED
