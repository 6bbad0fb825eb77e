"""Issuer data is checked, not trusted (issue 12, item 21), on SQLite and PostgreSQL: an issuer
that reports a balance above the card's face value would have had that balance quoted and
paid. It is refused as an issuer error, and the user is told plainly."""

from __future__ import annotations

from pathlib import Path

from bot.settings import DEFAULT_CARDS
from core.model import OrderStatus
from tests.e2e.conftest import Harness
from tests.e2e.test_console_batch import walmart
from tests.e2e.test_console_sale import ZH

INFLATED = walmart(90)  # face ¥500, but the issuer says ¥5,000 is on it
GOOD = walmart(91)


def cards(tmp_path: Path) -> Path:
    path = tmp_path / "cards.csv"
    path.write_text(
        DEFAULT_CARDS.read_text(encoding="utf-8").rstrip("\n")
        + f"\nwalmart,{INFLATED[0]},{INFLATED[1]},50000,500000,2099-12-31,active"
        + f"\nwalmart,{GOOD[0]},{GOOD[1]},50000,50000,2099-12-31,active\n",
        encoding="utf-8",
    )
    return path


async def test_a_balance_above_the_face_value_is_refused_and_never_quoted(
    tmp_path: Path, database_url: str
) -> None:
    h = Harness(tmp_path, database_url, cards=cards(tmp_path))
    await h.start()
    try:
        await h.say("/sell")
        await h.say(INFLATED[0])
        await h.say(INFLATED[1])
        assert ZH("error.issuer_inconsistent") in h.text()
        assert ZH("error.internal") not in h.text()
        assert "¥5,000" not in h.text()
        assert await h.orders() == []
        assert await h.step() == "await_card"
        assert h.app is not None
        async with h.app.uow_factory() as uow:
            actions = [e.action for e in await uow.audit.all()]
        assert "card.issuer_inconsistent" in actions
    finally:
        await h.close()


async def test_in_a_batch_the_inflated_card_is_refused_and_the_others_go_on(
    tmp_path: Path, database_url: str
) -> None:
    h = Harness(tmp_path, database_url, cards=cards(tmp_path))
    await h.start()
    try:
        await h.say("/sell")
        await h.say(f"{INFLATED[0]} {INFLATED[1]}\n{GOOD[0]} {GOOD[1]}")
        text = h.text()
        assert ZH("error.issuer_inconsistent") in text
        orders = await h.orders()
        assert [(o.balance_fen, o.status) for o in orders] == [(50_000, OrderStatus.QUOTED)]
    finally:
        await h.close()
