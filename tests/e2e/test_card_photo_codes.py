"""A card photo whose card-number barcode is worn, beside a crisp shop QR code (issue 12, 22b):
the bot reads the card's number, not the shop's link, and asks for the secret."""

from __future__ import annotations

from pathlib import Path

from bot.app import card_reader
from bot.democard import Shot, render_hard_card_photo
from core.catalog import default_catalog
from tests.e2e.conftest import Harness
from tests.e2e.test_console_sale import WALMART, ZH

# Generous, so that the test does not depend on the machine's speed (the cascade ends at the
# card number well before it).
UNHURRIED_MS = 10_000.0


async def test_a_shop_qr_code_beside_a_worn_card_barcode_still_gives_the_card_number(
    tmp_path: Path, database_url: str
) -> None:
    photo = tmp_path / "card-with-shop-qr.jpg"
    photo.write_bytes(
        render_hard_card_photo(
            WALMART[0], Shot(), promo_qr="https://shop.example/mp?from=card", bars_blur_px=2.5
        )
    )
    h = Harness(
        tmp_path, database_url, reader=card_reader(default_catalog(), budget_ms=UNHURRIED_MS)
    )
    await h.start()
    try:
        await h.say("/start")
        await h.choose("menu.sell")
        await h.say(f"/photo {photo}")

        assert ZH("photo.not_a_card") not in h.text()
        assert await h.step() == "await_secret"
        assert WALMART[0][-4:] in h.text()  # the masked number, as the reply shows it
    finally:
        await h.close()
