"""Importing a rate table that lists only some brands (issue 12, item 14), on SQLite and
PostgreSQL: a one-brand CSV used to make a table with that brand only, and then selling any
other brand crashed into the generic apology."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.model import OrderStatus
from tests.e2e.conftest import Harness
from tests.e2e.test_console_sale import RTMART, WALMART, ZH, card_photo, sell_until_quote
from tests.e2e.test_rates import cardbot, shop, table

__all__ = ["shop"]  # the fixture, imported for these tests

LONG_AGO = "2026-11-22T00:00:00+08:00"  # before the harness's clock (06:00 UTC that day)


def walmart_csv(tmp_path: Path, top_bp: int) -> Path:
    path = tmp_path / "walmart.csv"
    path.write_text(
        f"brand,up_to_fen,rate_bp\nwalmart,5000,8500\nwalmart,,{top_bp}\n", encoding="utf-8"
    )
    return path


async def test_a_one_brand_csv_changes_that_brand_and_keeps_every_other(
    shop: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = shop
    csv = walmart_csv(tmp_path, 9_500)
    assert await cardbot("prices", "import", str(csv), "--version", "w-1", "--from", LONG_AGO) == 0
    assert "14 brands" in capsys.readouterr().out
    await sell_until_quote(h, card_photo(tmp_path, WALMART[0]), WALMART[1])
    assert "您将收到：¥474.00" in h.text()  # the new walmart rate: 95 % of ¥500, less ¥1
    await h.say("/cancel")
    await h.say(RTMART)
    assert await h.step() == "await_quote"  # rtmart keeps its rate: still bought
    assert "大润发" in h.text()
    assert ZH("error.internal") not in h.text()


async def test_a_table_that_drops_brands_is_refused_naming_them_unless_replace_is_given(
    shop: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = shop
    csv = walmart_csv(tmp_path, 9_500)
    capsys.readouterr()
    assert (
        await cardbot(
            "prices", "import", str(csv), "--version", "only-w", "--from", LONG_AGO, "--replace"
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "1 brands" in out and "no longer bought" in out and "rtmart" in out
    # A brand without a rate is a clear refusal, told before the user types anything more.
    await h.say("/start")
    await h.say(RTMART)
    assert ZH("error.brand_not_bought") in h.text()
    assert ZH("error.internal") not in h.text()
    assert await h.orders() == []


async def test_the_in_force_note_tells_the_truth_when_a_later_table_exists(
    shop: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    later = table(tmp_path, "later-1", 9_300)
    earlier = table(tmp_path, "earlier-1", 9_100)
    future = table(tmp_path, "future-1", 9_000)
    assert (
        await cardbot("prices", "import", str(later), "--from", "2026-01-02T00:00:00+08:00") == 0
    )
    assert (
        await cardbot("prices", "import", str(future), "--from", "2099-01-01T00:00:00+08:00") == 0
    )
    capsys.readouterr()
    assert (
        await cardbot("prices", "import", str(earlier), "--from", "2026-01-01T00:00:00+08:00") == 0
    )
    out = capsys.readouterr().out
    assert "in force at once" not in out
    assert "later-1" in out and "not in force" in out
    now = table(tmp_path, "now-1", 9_200)
    assert await cardbot("prices", "import", str(now), "--from", "2026-06-01T00:00:00+08:00") == 0
    out = capsys.readouterr().out
    assert "in force at once" in out and "future-1" in out and "2099-01-01" in out


async def test_selling_a_brand_the_table_in_force_has_no_rate_for_is_refused_in_a_batch_too(
    shop: Harness, tmp_path: Path
) -> None:
    h = shop
    csv = walmart_csv(tmp_path, 9_500)
    assert (
        await cardbot(
            "prices", "import", str(csv), "--version", "only-w", "--from", LONG_AGO, "--replace"
        )
        == 0
    )
    await h.say("/start")
    await h.say(f"{WALMART[0]} {WALMART[1]}\n{RTMART}")
    said = h.text()
    assert ZH("error.internal") not in said
    assert "大润发" in said or RTMART[-4:] in said
    orders = await h.orders()
    assert [o.brand for o in orders] == ["walmart"]
    assert orders[0].status is OrderStatus.QUOTED
