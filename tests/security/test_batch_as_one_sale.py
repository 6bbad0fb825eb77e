"""A batch is one sale to the amount rules (issue 12, item 15), on SQLite and PostgreSQL.

A new account was paid ¥2,145 through an 11-card batch with no review, while a single ¥2,849
sale from a new account is held: each card was its own order, each under the new-account line.
The same split let the first cards of a batch past the daily line be paid."""

from __future__ import annotations

from pathlib import Path

from core.model import OrderStatus
from tests.e2e.conftest import Harness, database_url, harness
from tests.e2e.test_console_batch import identity_and_alipay, started, transfers, walmart
from tests.e2e.test_console_sale import ZH

__all__ = ["database_url", "harness"]  # the e2e fixtures, for these tests


async def sell_batch(h: Harness, count: int) -> None:
    await h.say("/sell")
    await h.say("\n".join(f"{n} {s}" for n, s in (walmart(i) for i in range(count))))
    await identity_and_alipay(h)
    await h.choose("pay.confirm")


async def test_a_new_account_selling_eleven_small_cards_at_once_is_held_like_one_large_sale(
    tmp_path: Path, database_url: str
) -> None:
    h = await started(tmp_path, database_url, aged=False)
    try:
        await sell_batch(h, 11)  # 11 × ¥474 = ¥5,214: each card under the ¥2,000 line
        orders = [o for o in await h.orders() if o.status is not OrderStatus.CANCELLED]
        assert len(orders) == 11
        assert {o.status for o in orders} == {OrderStatus.REVIEW}
        assert all("risk.new_account" in o.risk_reasons for o in orders)
        assert transfers(h) == []
        assert ZH("error.internal") not in h.text()
    finally:
        await h.close()


async def test_a_batch_that_crosses_the_daily_line_is_held_whole(
    tmp_path: Path, database_url: str
) -> None:
    rules = tmp_path / "risk.toml"
    rules.write_text(
        'version = "daily-3000"\n[daily_amount]\nreview_at_fen = 300_000\n', encoding="utf-8"
    )
    h = await started(tmp_path, database_url, risk_rules=rules)
    try:
        # ¥5,214 in all: the first six cards (¥2,844) used to be paid before the line was met.
        await sell_batch(h, 11)
        orders = [o for o in await h.orders() if o.status is not OrderStatus.CANCELLED]
        assert {o.status for o in orders} == {OrderStatus.REVIEW}
        assert all(o.risk_reasons == ("risk.daily_amount",) for o in orders)
        assert transfers(h) == []
    finally:
        await h.close()


async def test_a_batch_under_every_line_from_an_established_account_is_paid(
    tmp_path: Path, database_url: str
) -> None:
    h = await started(tmp_path, database_url)
    try:
        await sell_batch(h, 3)
        orders = [o for o in await h.orders() if o.status is not OrderStatus.CANCELLED]
        assert {o.status for o in orders} == {OrderStatus.SETTLED}
    finally:
        await h.close()


async def test_a_batch_over_the_level_one_day_limit_needs_level_two_though_every_card_is_under(
    tmp_path: Path, database_url: str
) -> None:
    h = await started(tmp_path, database_url)
    try:
        await sell_batch(h, 22)  # 22 × ¥474 = ¥10,428: over the ¥10,000 level-1 day limit
        assert await h.step() == "await_level2_card"
        orders = [o for o in await h.orders() if o.status is not OrderStatus.CANCELLED]
        assert {o.status for o in orders} == {OrderStatus.ACCEPTED}
        assert transfers(h) == []
    finally:
        await h.close()
