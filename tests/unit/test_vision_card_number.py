"""vision/ reads the card's number, not whatever else a card carries (issue 12, item 22).

(a) A 1-D read that the digits printed under its bars contradict is not trusted, however sure
the engines were of the bars. (b) Only a symbol that can be a card number (the caller's test:
the catalog's, in the bot) ends the search; a shop's QR code beside a worn card barcode is
reported but leaves the reader looking for the number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from bot.app import card_reader
from bot.democard import Shot, render_hard_card_photo
from core.catalog import default_catalog, luhn_check_digit
from vision import PyzbarCardReader, engines, imaging, printed
from vision.ocr import DigitReading, ocr_available
from vision.reader import FIRST_PASS_SIDE, FULL_SIDE, PRINT_CHECK_MS, Variant

from .test_vision import UNHURRIED_MS, texts

# A Walmart card number in the shipped catalog (prefix 2326, 16 digits, Luhn).
WALMART = "232612345678901" + luhn_check_digit("232612345678901")
OTHER_WALMART = "232698765432101" + luhn_check_digit("232698765432101")
SHOP_QR = "https://shop.example/mp?brand=walmart&from=card"
needs_ocr = pytest.mark.skipif(not ocr_available(), reason="OCR extra (cardbot[ocr]) absent")


def is_card_number(text: str) -> bool:
    return default_catalog().recognises(text)


class FakeDigitReader:
    """OCR that reads fixed runs, recording what it was shown and the time it was left."""

    def __init__(self, runs: tuple[str, ...]) -> None:
        self.runs = runs
        self.pictures: list[Image.Image] = []
        self.left_ms: list[float] = []

    def read_digits(self, gray: Image.Image, remaining_ms: Callable[[], float]) -> DigitReading:
        self.pictures.append(gray)
        self.left_ms.append(remaining_ms())
        return DigitReading(runs=self.runs)

    def expected_ms(self, gray: Image.Image) -> float:
        return 0.0

    def warm_up(self) -> None:
        pass


def counting(variants: tuple[Variant, ...], calls: list[str]) -> tuple[Variant, ...]:
    def wrap(variant: Variant) -> Variant:
        def transform(image: Image.Image) -> Image.Image:
            calls.append(variant.name)
            return variant.transform(image)

        return dataclasses.replace(variant, transform=transform)

    return tuple(wrap(v) for v in variants)


def counted_reader(calls: list[str], **options: object) -> PyzbarCardReader:
    plain = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=None)
    return PyzbarCardReader(
        budget_ms=UNHURRIED_MS,
        crops=counting(plain.crops, calls),
        cascade=counting(plain.cascade, calls),
        **options,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------------------------
# (b) A shop's QR code is not the card's number


# The card-number barcode smudged just enough that the plain pass misses it and a crop reads it.
WORN_BARS_PX = 2.5


def test_a_shop_qr_code_beside_a_worn_card_barcode_does_not_end_the_search() -> None:
    photo = render_hard_card_photo(WALMART, Shot(), promo_qr=SHOP_QR, bars_blur_px=WORN_BARS_PX)
    calls: list[str] = []
    reader = counted_reader(calls, ocr=None, is_card_number=is_card_number)

    reading = reader.read_sync(photo)

    # The card number first, then the other code the card carries: reported, not an answer.
    assert texts(reading) == [WALMART, SHOP_QR]
    assert calls, "the QR code read on the plain pass must not end the search"


def test_without_a_card_number_test_any_sure_read_ends_the_search() -> None:
    # The contract for callers that know no catalog (bench/vision.py, `cardbot scan`).
    photo = render_hard_card_photo(WALMART, Shot(), promo_qr=SHOP_QR, bars_blur_px=WORN_BARS_PX)
    calls: list[str] = []

    reading = counted_reader(calls, ocr=None).read_sync(photo)

    assert texts(reading) == [SHOP_QR]
    assert calls == []


def test_a_card_number_barcode_beside_a_shop_qr_code_still_ends_the_search_at_once() -> None:
    photo = render_hard_card_photo(WALMART, Shot(), promo_qr=SHOP_QR)
    calls: list[str] = []
    reader = counted_reader(calls, ocr=None, is_card_number=is_card_number)

    reading = reader.read_sync(photo)

    assert texts(reading) == [WALMART, SHOP_QR]
    assert calls == []  # the hot path: the plain pass read the number


def test_with_only_a_shop_qr_code_readable_the_printed_number_is_read() -> None:
    # The card-number bars are past reading; the print under them is not.
    photo = render_hard_card_photo(WALMART, Shot(), promo_qr=SHOP_QR, bars_blur_px=4.0)
    ocr = FakeDigitReader((WALMART,))
    reader = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=ocr, is_card_number=is_card_number)

    reading = reader.read_sync(photo)

    assert texts(reading) == [SHOP_QR]
    assert reading.digits == (WALMART,)
    assert reading.candidates == (SHOP_QR, WALMART)


def test_the_bot_reader_takes_only_what_the_catalog_recognises_for_a_card_number() -> None:
    reader = card_reader(default_catalog())

    assert reader.is_card_number(WALMART)
    assert reader.is_card_number("2326 " + WALMART[4:])  # as the catalog normalises numbers
    assert not reader.is_card_number(SHOP_QR)
    assert not reader.is_card_number(WALMART[:-1] + str((int(WALMART[-1]) + 1) % 10))


def test_the_catalog_recognises_numbers_that_fit_a_brand_without_raising() -> None:
    catalog = default_catalog()

    assert catalog.recognises(WALMART)
    assert not catalog.recognises("6901234567892")  # a product EAN-13, no brand's prefix
    assert not catalog.recognises("")


# --------------------------------------------------------------------------------------------
# (a) The digits printed under the bars


def test_a_sure_read_contradicted_by_the_digits_under_its_bars_is_not_reported() -> None:
    # Both engines read the bars on the plain pass; the print under them says another number.
    photo = render_hard_card_photo(WALMART, Shot())
    ocr = FakeDigitReader((OTHER_WALMART,))
    reader = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=ocr, is_card_number=is_card_number)

    reading = reader.read_sync(photo)

    assert reading.barcodes == ()
    assert reading.digits == (OTHER_WALMART,)


def test_print_that_agrees_but_for_one_ocr_slip_confirms_the_read() -> None:
    slipped = WALMART[:6] + str((int(WALMART[6]) + 5) % 10) + WALMART[7:]
    photo = render_hard_card_photo(WALMART, Shot())
    ocr = FakeDigitReader((slipped,))
    reader = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=ocr, is_card_number=is_card_number)

    reading = reader.read_sync(photo)

    assert texts(reading) == [WALMART]
    assert reading.digits == ()


def test_reading_the_print_under_the_bars_gets_one_lines_worth_of_the_deadline() -> None:
    photo = render_hard_card_photo(WALMART, Shot())
    ocr = FakeDigitReader((WALMART,))
    reader = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=ocr)

    reader.read_sync(photo)

    (left,) = ocr.left_ms
    assert 0 < left <= PRINT_CHECK_MS


@needs_ocr
def test_a_card_printed_with_another_number_under_its_bars_reads_as_the_print() -> None:
    reader = PyzbarCardReader(budget_ms=UNHURRIED_MS, is_card_number=is_card_number)
    assert reader.ocr is not None
    reader.ocr.warm_up()
    relabelled = render_hard_card_photo(WALMART, Shot(), printed_number=OTHER_WALMART)
    honest = render_hard_card_photo(WALMART, Shot())

    assert reader.read_sync(relabelled).candidates == (OTHER_WALMART,)
    assert reader.read_sync(honest).candidates == (WALMART,)


@pytest.mark.parametrize("quarter", [0, 1, 2, 3])
def test_the_window_under_the_bars_is_found_however_the_photo_is_turned(quarter: int) -> None:
    photo = imaging.load_photo(render_hard_card_photo(WALMART, Shot()), FULL_SIDE)
    upright = imaging.fit(photo.gray, FIRST_PASS_SIDE)
    turn = {
        0: None,
        1: Image.Transpose.ROTATE_270,  # the symbol turned a quarter clockwise
        2: Image.Transpose.ROTATE_180,
        3: Image.Transpose.ROTATE_90,
    }[quarter]
    turned = upright if turn is None else upright.transpose(turn)

    (found,) = [d for d in engines.zbar(turned) if d.text == WALMART]
    (reference,) = [d for d in engines.zbar(upright) if d.text == WALMART]
    window = printed.window_under_bars(turned, found.box, found.quarter)
    expected = printed.window_under_bars(upright, reference.box, reference.quarter)

    assert found.quarter == quarter
    assert window is not None and expected is not None
    assert abs(window.width - expected.width) <= 3
    assert abs(window.height - expected.height) <= 3
    # Mostly bright paper with dark print in the lower part, as in the upright photo.
    assert _dark_rows(window) == pytest.approx(_dark_rows(expected), abs=0.1)


def _dark_rows(window: Image.Image) -> float:
    """Where, from 0 (top) to 1 (bottom), the window's darkest rows lie on average."""
    darkness = 255 - np.asarray(window, dtype=np.float64).mean(axis=1)
    rows = np.arange(len(darkness))
    return float((rows * darkness).sum() / (darkness.sum() * len(darkness)))


def test_a_barcode_too_small_for_legible_print_has_no_window() -> None:
    picture = Image.new("L", (400, 300), 255)

    assert printed.window_under_bars(picture, (100, 100, 140, 130), 0) is None
    assert printed.window_under_bars(picture, (100, 250, 300, 295), 0) is None  # edge below


@pytest.mark.parametrize(
    ("runs", "contradicted"),
    [
        ((), False),  # nothing legible: no evidence
        ((WALMART,), False),
        ((OTHER_WALMART,), True),
        ((WALMART[:7] + "0" + WALMART[8:],), False),  # one OCR slip
        ((WALMART[:-3],), False),  # the window cut the print short
        (("20261231",), False),  # a date, not the number
        ((OTHER_WALMART, WALMART), False),  # the number is there too
    ],
)
def test_printed_runs_contradict_a_read_only_when_they_clearly_spell_another_number(
    runs: tuple[str, ...], contradicted: bool
) -> None:
    assert printed.contradicts(WALMART, runs) is contradicted


# --------------------------------------------------------------------------------------------
# A small, heavily compressed card barcode in a chat screenshot


def chat_screenshot(number: str, module_px: int = 1, quality: int = 50) -> bytes:
    """A phone screenshot (1080 x 2340) of a chat whose card picture has a small Code 128."""
    import io

    import barcode
    from barcode.writer import ImageWriter
    from PIL import ImageDraw

    code = barcode.Code128(number, writer=ImageWriter())
    modules = len(code.build()[0]) + 20
    bars = code.render(
        writer_options={
            "module_width": 1,
            "module_height": 10,
            "quiet_zone": 10,
            "write_text": False,
            "margin_top": 0,
            "margin_bottom": 0,
        }
    )
    bars = bars.convert("RGB").resize(
        (modules * module_px, 30 * module_px), Image.Resampling.NEAREST
    )
    screen = Image.new("RGB", (1080, 2340), (237, 237, 237))
    draw = ImageDraw.Draw(screen)
    for top in range(150, 2200, 180):
        draw.rounded_rectangle((40, top, 900, top + 140), 20, fill=(255, 255, 255))
        draw.text((70, top + 40), "message 12:30", fill=(30, 30, 30))
    card = Image.new("RGB", (bars.width + 80, bars.height + 120), (255, 250, 240))
    card.paste(bars, (40, 40))
    screen.paste(card, (200, 1100))
    out = io.BytesIO()
    screen.save(out, "JPEG", quality=quality)
    return out.getvalue()


def test_a_small_compressed_barcode_in_a_chat_screenshot_reads_at_full_resolution() -> None:
    # One-pixel modules: every downscaled copy the cascade works on has lost the bars.
    reader = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=None, is_card_number=is_card_number)

    reading = reader.read_sync(chat_screenshot(WALMART))

    assert texts(reading) == [WALMART]
