"""Rate tables as an operator changes them: imported with a time they take effect, recorded on
each quote, never changing a locked quote, and membership tiers earned by past sales — on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.cli import main
from core.model import OrderStatus
from tests.e2e.conftest import Harness
from tests.e2e.test_console_sale import (
    WALMART,
    ZH,
    card_photo,
    identity_and_payout,
    sell_until_quote,
)

WALMART_2 = ("2326081744338610", "007007")  # ¥500 like WALMART
T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)


def table(
    tmp_path: Path, version: str, walmart_top_bp: int, silver_from_fen: int = 500_000
) -> Path:
    path = tmp_path / f"{version}.toml"
    path.write_text(
        f'version = "{version}"\nfee_fen = 100\nmin_payout_fen = 1000\nlock_minutes = 10\n'
        "[expiry]\nwindow_days = 30\nadjust_bp = -300\n"
        "[batch]\nmin_cards = 11\nbonus_bp = 300\n"
        f"[tiers.silver]\nmin_lifetime_fen = {silver_from_fen}\nbonus_bp = 100\n"
        "[brands.walmart]\n"
        f"bands = [{{up_to_fen = 5000, rate_bp = 8500}}, {{rate_bp = {walmart_top_bp}}}]\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
async def shop(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Harness:
    for name in list(os.environ):
        if name.startswith("CARDBOT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CARDBOT_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CARDBOT_DATABASE_URL", database_url)
    monkeypatch.setenv("CARDBOT_DATA_KEY_FILE", str(tmp_path / "data.key"))
    h = Harness(tmp_path, database_url)
    h.clock._now = T0
    await h.start()
    yield h  # type: ignore[misc]
    await h.close()


async def cardbot(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def import_rates(path: Path, effective: str) -> int:
    return await cardbot("prices", "import", str(path), "--from", effective)


async def quote_versions(h: Harness) -> list[str]:
    assert h.app is not None
    async with h.app.uow_factory() as uow:
        orders = sorted(await uow.orders.recent(), key=lambda o: o.id or 0)
        return [(await uow.quotes.get(o.quote_id)).rates_version for o in orders]


async def test_a_table_takes_effect_at_its_time_and_a_locked_quote_keeps_its_price(
    shop: Harness, tmp_path: Path
) -> None:
    h = shop
    await sell_until_quote(h, card_photo(tmp_path, WALMART[0]), WALMART[1])
    assert "您将收到：¥459.00" in h.text()  # the shipped table: 92 % of ¥500, less ¥1
    # A better rate from 06:05; the quote shown at 06:00 is locked until 06:10.
    rates = table(tmp_path, "2026-11-22.2", 9_500)
    assert (
        await cardbot("prices", "import", str(rates), "--from", "2026-11-22T06:05:00+00:00") == 0
    )
    assert await cardbot("prices", "import", str(rates)) == 1  # a version is never replaced
    h.clock.advance(minutes=8)
    await identity_and_payout(h)
    [first] = await h.orders()
    assert first.status is OrderStatus.SETTLED and first.payout_fen == 45_900

    await sell_until_quote(h, card_photo(tmp_path, WALMART_2[0]), WALMART_2[1])
    assert "您将收到：¥474.00" in h.text()  # 95 % of ¥500, less ¥1
    assert await quote_versions(h) == ["default-1", "2026-11-22.2"]


async def test_a_quote_past_its_lock_is_priced_again_with_the_new_table(
    shop: Harness, tmp_path: Path
) -> None:
    h = shop
    await sell_until_quote(h, card_photo(tmp_path, WALMART[0]), WALMART[1])
    lower = table(tmp_path, "2026-11-22.3", 9_000)
    assert (
        await cardbot("prices", "import", str(lower), "--from", "2026-11-22T06:05:00+00:00") == 0
    )
    h.clock.advance(minutes=11)  # the lock has run out
    await h.choose("quote.accept")
    assert ZH("quote.expired_requoted") in h.text()
    assert "您将收到：¥449.00" in h.text()  # 90 % now, and the user must agree again
    assert await quote_versions(h) == ["default-1", "2026-11-22.3"]


async def test_a_member_tier_is_earned_by_past_sales_and_shown_on_the_quote(
    shop: Harness, tmp_path: Path
) -> None:
    h = shop
    rates = table(tmp_path, "tiers-1", 9_200, silver_from_fen=40_000)
    assert (
        await cardbot("prices", "import", str(rates), "--from", "2026-11-22T00:00:00+08:00") == 0
    )
    await sell_until_quote(h, card_photo(tmp_path, WALMART[0]), WALMART[1])
    assert "会员加成" not in h.text()
    await identity_and_payout(h)  # ¥459 sold: silver from ¥400
    await sell_until_quote(h, card_photo(tmp_path, WALMART_2[0]), WALMART_2[1])
    assert "会员加成（白银）：+1%" in h.text() and "您将收到：¥464.00" in h.text()


async def test_prices_show_the_table_in_force_with_its_bonuses(
    shop: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = shop
    rates = table(tmp_path, "shown-1", 9_400)
    assert (
        await cardbot("prices", "import", str(rates), "--from", "2026-11-22T00:00:00+08:00") == 0
    )
    await h.say("/prices")
    text = h.text()
    assert "94%" in text and "白银会员" in text and "11 张及以上" in text
    csv = tmp_path / "rates.csv"
    csv.write_text("brand,up_to_fen,rate_bp\nwalmart,,ninety\n", encoding="utf-8")
    capsys.readouterr()
    assert await cardbot("prices", "import", str(csv), "--version", "bad") == 2
    assert "line 2" in capsys.readouterr().err
    assert await cardbot("prices", "list") == 0
    assert "shown-1" in capsys.readouterr().out
