"""Issuer data is checked, not trusted (issue 12, item 21), on SQLite and PostgreSQL: an issuer
that reports a balance above the card's face value would have had that balance quoted and
paid. It is refused as an issuer error, and the user is told plainly."""

from __future__ import annotations

import os
from pathlib import Path

from bot.sandbox.issuer import SandboxCardIssuer
from core.catalog import default_catalog
from core.model import OrderStatus
from storage.crypto import AesGcmVault
from tests.e2e.conftest import Harness, database_url
from tests.e2e.test_console_batch import card_file, walmart
from tests.e2e.test_console_sale import ZH
from tests.fakes import MisreportingIssuer

__all__ = ["database_url"]  # the e2e fixture, for these tests

INFLATED = walmart(90)  # face ¥500, but the issuer says ¥5,000 is on it
GOOD = walmart(91)


def misreporting(h: Harness, tmp_path: Path) -> None:
    """The cards are real ¥500 cards; the issuer reports ¥5,000 on INFLATED."""
    inner = SandboxCardIssuer(
        h.settings.sandbox_cards,
        tmp_path / "issuer.sqlite3",
        default_catalog(),
        h.clock,
        fingerprint=AesGcmVault([os.urandom(32)]).fingerprint,
    )
    h.ports["issuer"] = MisreportingIssuer(inner, {INFLATED[0]: 500_000})


async def started(tmp_path: Path, url: str) -> Harness:
    h = Harness(tmp_path, url, cards=card_file(tmp_path, count=100))
    misreporting(h, tmp_path)
    await h.start()
    return h


async def test_a_balance_above_the_face_value_is_refused_and_never_quoted(
    tmp_path: Path, database_url: str
) -> None:
    h = await started(tmp_path, database_url)
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
    h = await started(tmp_path, database_url)
    try:
        await h.say("/sell")
        await h.say(f"{INFLATED[0]} {INFLATED[1]}\n{GOOD[0]} {GOOD[1]}")
        text = h.text()
        assert ZH("error.issuer_inconsistent") in text
        orders = await h.orders()
        assert [(o.balance_fen, o.status) for o in orders] == [(50_000, OrderStatus.QUOTED)]
    finally:
        await h.close()
