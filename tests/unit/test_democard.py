"""Demo card photos look like phone photos and their barcode decodes to exactly the number."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.democard import render_card_photo

try:
    from pyzbar import pyzbar
except ImportError as exc:  # the zbar shared library is a system package
    pytestmark = pytest.mark.skip(reason=f"pyzbar cannot load the zbar library: {exc}")
    pyzbar = None


def decoded(photo: bytes) -> list[tuple[str, str]]:
    assert pyzbar is not None
    return [
        (symbol.type, symbol.data.decode("ascii"))
        for symbol in pyzbar.decode(Image.open(io.BytesIO(photo)))
    ]


@pytest.mark.parametrize(
    ("brand_name", "number", "face_value_text", "seed"),
    [
        ("沃尔玛购物卡", "6222021234567890123", "¥500", 0),
        ("JD E-Card", "1234567890123456", "面值 1000元", 1),
        ("星巴克 Starbucks", "GC2024ABCDEF1234", "¥100", 2),
        ("家乐福", "2088-7Xk9Qa_z", "200元", 3),
        ("Carrefour International Shopping Card", "9000000000000000001", "CNY 2,000", 4),
        ("永辉超市", "0012345678901234", "¥50", 5),
    ],
)
def test_the_barcode_in_the_photo_decodes_to_exactly_the_number(
    brand_name: str, number: str, face_value_text: str, seed: int
) -> None:
    photo = render_card_photo(brand_name, number, face_value_text, seed=seed)

    assert decoded(photo) == [("CODE128", number)]


def test_every_seed_gives_a_photo_that_still_decodes() -> None:
    for seed in range(6, 12):
        photo = render_card_photo("沃尔玛", "6222021234567890123", "¥500", seed=seed)
        assert decoded(photo) == [("CODE128", "6222021234567890123")], seed


def test_the_photo_is_a_phone_sized_jpeg() -> None:
    photo = render_card_photo("沃尔玛", "1234567890123456", "¥500")

    image = Image.open(io.BytesIO(photo))
    assert (image.format, image.size, image.mode) == ("JPEG", (1600, 1200), "RGB")


def test_the_same_seed_gives_the_same_bytes_and_another_seed_another_photo() -> None:
    first = render_card_photo("沃尔玛", "1234567890123456", "¥500", seed=7)

    assert render_card_photo("沃尔玛", "1234567890123456", "¥500", seed=7) == first
    assert render_card_photo("沃尔玛", "1234567890123456", "¥500", seed=8) != first


@pytest.mark.parametrize("number", ["", "卡号123", "12\n34"])
def test_a_number_code_128_cannot_carry_is_refused(number: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        render_card_photo("沃尔玛", number, "¥500")


def test_a_number_too_long_for_the_card_is_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        render_card_photo("沃尔玛", "X" * 60, "¥500")
