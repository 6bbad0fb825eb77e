"""T+1 settlement: the card is redeemed at once, the payout waits for the next day's batch and
goes out then, once, with the receipt — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from core.messages import Reply
from core.model import OrderStatus, PayoutState
from tests.e2e.conftest import Harness
from tests.e2e.test_console_sale import (
    WALMART,
    ZH,
    card_photo,
    identity_and_payout,
    sell_until_quote,
)
from tests.fakes import ScriptedGateway, finish_and_tell

EVENING = datetime(2026, 11, 22, 13, 30, tzinfo=UTC)  # 21:30 in Shanghai


class Told:
    def __init__(self) -> None:
        self.texts: list[str] = []

    async def notify(self, channel: str, user_key: str, reply: Reply) -> None:
        self.texts.append(reply.text)


async def test_a_t1_payout_waits_for_the_next_morning_batch_then_pays_once(
    tmp_path: Path, database_url: str
) -> None:
    gateway = ScriptedGateway()
    h = Harness(tmp_path, database_url, overrides={"settlement": "t1"}, gateway=gateway)
    h.clock._now = EVENING
    await h.start()
    try:
        await sell_until_quote(h, card_photo(tmp_path, WALMART[0]), WALMART[1])
        await identity_and_payout(h)
        [order] = await h.orders()
        assert (
            ZH("pay.scheduled", order=order.number, amount="459.00", time="2026-11-23 10:00")
            in h.text()
        )
        assert order.status is OrderStatus.PAYING and gateway.sent == []
        assert h.app is not None

        told = Told()
        h.clock.advance(hours=12, minutes=29)  # 09:59 next day in Shanghai: not yet
        await finish_and_tell(h.app.services, told)
        assert gateway.sent == [] and told.texts == []

        # The user unfollowed meanwhile: the notice still goes to the channel, which keeps it
        # for them (WeChat holds it for their next message) rather than dropping it here.
        async with h.app.uow_factory() as uow:
            await uow.users.set_reachable("console", h.user, False)
            await uow.commit()
        h.clock.advance(minutes=1)  # 10:00: the batch goes
        await finish_and_tell(h.app.services, told)
        await finish_and_tell(h.app.services, told)  # a second pass pays nothing more
        assert len(gateway.sent) == 1
        assert any("【电子回单】" in text for text in told.texts)
        async with h.app.uow_factory() as uow:
            payout = await uow.payouts.for_order(order.id or 0)
            after = await uow.orders.get(order.id or 0)
        assert payout is not None and payout.state is PayoutState.SUCCEEDED
        assert after.status is OrderStatus.SETTLED
    finally:
        await h.close()
