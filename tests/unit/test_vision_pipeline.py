"""vision/ beyond the basics: the second engine, misread guards, hostile input, synthetic card
photos with real-world hardships, and OCR of the printed card number."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from bot.democard import Shot, render_hard_card_photo
from core.ports import CardReading
from vision import PyzbarCardReader, engines, symbols
from vision.imaging import AnimatedImage, load_photo
from vision.ocr import DigitReading, digit_runs, ocr_available
from vision.reader import _Evidence, _weigh_printed_digits

from .test_vision import DATA_DIR, UNHURRIED_MS, encode, needs_data, render, texts

CARD_NUMBER = "2088123456789012"
needs_ocr = pytest.mark.skipif(not ocr_available(), reason="OCR extra (cardbot[ocr]) absent")


@pytest.fixture
def reader() -> PyzbarCardReader:
    return PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=None)


# --------------------------------------------------------------------------------------------
# Engines and symbology texts


def test_both_engines_report_upc_a_as_twelve_digits_and_upc_e_as_eight() -> None:
    upca = render("upca", "03600029145")
    upce = Image.open(DATA_DIR / "zxing/upce-1/1.png") if DATA_DIR.is_dir() else None

    assert {(d.symbology, d.text) for d in engines.zbar(upca)} == {("UPCA", "036000291452")}
    assert {(d.symbology, d.text) for d in engines.zxing(upca)} == {("UPCA", "036000291452")}
    if upce is not None:
        assert [d.text for d in engines.zxing(upce.convert("L"))] == ["01234565"]


def test_upca_compresses_back_to_the_upce_it_was_expanded_from() -> None:
    for upce in ["01234565", "00123457", "01234531", "04965802", "03897425", "05096893"]:
        upca = symbols.upce_to_upca(upce)
        assert upca is not None
        assert symbols.upca_to_upce(upca) == upce
    assert symbols.upca_to_upce("036000291452") is None  # no zero-suppressed form


@needs_data
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("zxing/qrcode-2/2.png", "Shift-JIS QR text zbar spells as Latin-1"),
        ("zxing/code39-2/1.png", "full-ASCII Code 39"),
        ("zxing/code128-1/6.png", "Code 128 FNC4 (Latin-1) characters zbar drops"),
        ("zxing/qrcode-2/33.png", "QR payload with control characters"),
    ],
)
def test_second_engine_spells_what_zbar_gets_wrong(
    reader: PyzbarCardReader, name: str, reason: str
) -> None:
    image = DATA_DIR / name
    expected = image.with_suffix(".txt").read_bytes().decode("utf-8")

    assert texts(reader.read_sync(image.read_bytes())) == [expected], reason


@needs_data
def test_a_partial_itf_scan_gives_way_to_the_whole_itf_14(reader: PyzbarCardReader) -> None:
    image = DATA_DIR / "zxing/itf-2/14.png"

    assert texts(reader.read_sync(image.read_bytes())) == ["00012345678905"]


def test_unconfirmed_read_contradicted_by_the_printed_number_is_dropped() -> None:
    shaky = _Evidence("EAN13", "4006381333931", order=0, lines=2, best_lines=2)
    shaky.engines.add(engines.ZBAR)
    shaky.seen_in.append("otsu")
    held_back = _Evidence("I25", "12345678", order=1, lines=3, best_lines=3)
    held_back.engines.add(engines.ZBAR)

    assert shaky.unconfirmed
    kept = _weigh_printed_digits([shaky], [held_back], ("4006381333924", "12345678"))

    assert [e.text for e in kept] == ["12345678"]  # the print confirms ITF, overrules EAN


# --------------------------------------------------------------------------------------------
# Hostile input


def test_animated_gif_says_animated_and_is_not_decoded(reader: PyzbarCardReader) -> None:
    frames = [render("code128", f"{CARD_NUMBER}{i}").convert("P") for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)

    with pytest.raises(AnimatedImage):
        load_photo(buffer.getvalue(), 1600)
    reading = reader.read_sync(buffer.getvalue())

    assert reading == CardReading(hints=("animated",), ms=reading.ms)


def test_single_frame_gif_is_a_still_and_is_read(reader: PyzbarCardReader) -> None:
    still = encode(render("code128", CARD_NUMBER).convert("P"), "GIF")

    assert texts(reader.read_sync(still)) == [CARD_NUMBER]


def test_every_hostile_input_returns_promptly_with_a_hint(reader: PyzbarCardReader) -> None:
    jpeg = render_hard_card_photo(CARD_NUMBER, Shot())
    hostile = {
        "truncated": jpeg[: len(jpeg) // 3],
        "garbage": bytes(range(256)) * 100,
        "zero-bytes-jpeg-header": b"\xff\xd8\xff" + b"\x00" * 5000,
        "oversized": b"\xff" * (reader.max_bytes + 1),
    }
    for name, data in hostile.items():
        reading = reader.read_sync(data)
        assert reading.barcodes == (), name
        assert reading.hints in (("not_an_image",), ("too_large",)), name


# --------------------------------------------------------------------------------------------
# Synthetic card photos: the hardships of real phone photos


@pytest.mark.parametrize(
    "shot",
    [
        pytest.param(Shot(), id="decent"),
        pytest.param(Shot(tilt_deg=30), id="tilted-30"),
        pytest.param(Shot(tilt_deg=-50), id="tilted-minus-50"),
        pytest.param(Shot(tilt_deg=90), id="portrait"),
        pytest.param(Shot(keystone=0.3, tilt_deg=8), id="keystone"),
        pytest.param(Shot(blur_px=2.0), id="soft-focus"),
        pytest.param(Shot(light=0.3, noise=6), id="dim-room"),
        pytest.param(Shot(light=1.6), id="overexposed"),
        pytest.param(Shot(glare=0.8, glare_at=(0.15, 0.2)), id="glare-beside-barcode"),
        pytest.param(Shot(jpeg_quality=25, blur_px=1.2), id="chat-app-recompressed"),
        pytest.param(Shot(canvas=(4000, 3000), card_width_px=2600), id="12-megapixels"),
    ],
)
def test_hard_card_photo_reads_the_card_number(reader: PyzbarCardReader, shot: Shot) -> None:
    reading = reader.read_sync(render_hard_card_photo(CARD_NUMBER, shot))

    assert texts(reading) == [CARD_NUMBER]


def test_12_megapixel_photo_is_read_by_the_plain_pass_alone() -> None:
    # The cheapest stage, on the downscaled copy: what keeps a big photo inside the production
    # budget. How many milliseconds that takes is a figure for bench/vision.py --synthetic.
    photo = render_hard_card_photo(CARD_NUMBER, Shot(canvas=(4000, 3000), card_width_px=2600))
    plain_pass_only = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=None, crops=(), cascade=())

    reading = plain_pass_only.read_sync(photo)

    assert texts(reading) == [CARD_NUMBER]


@pytest.mark.parametrize(
    ("shot", "hint"),
    [
        pytest.param(Shot(blur_px=6.0), "blurred", id="out-of-focus"),
        pytest.param(Shot(light=0.01, noise=1), "dark", id="lights-off"),
        pytest.param(Shot(light=2.5, glare=1.0, glare_at=(0.5, 0.62)), "bright", id="glare"),
    ],
)
def test_unreadable_card_photo_says_how_to_retake_it(
    reader: PyzbarCardReader, shot: Shot, hint: str
) -> None:
    reading = reader.read_sync(render_hard_card_photo(CARD_NUMBER, shot))

    assert reading.barcodes == ()
    assert hint in reading.hints


# --------------------------------------------------------------------------------------------
# OCR of the printed number


def test_digit_runs_join_the_groups_a_card_number_is_printed_in() -> None:
    assert digit_runs("2088 1234 5678 9012") == ["2088123456789012"]
    assert digit_runs("卡号： ２０８８-1234-5678-9O12") == ["2088123456789012"]
    assert digit_runs("有效期 2026 面值 500") == []
    assert digit_runs("NOT REDEEMABLE FOR CASH") == []


class FakeDigitReader:
    """Reads a fixed card number, as OCR would from the print under the barcode."""

    def __init__(self, runs: tuple[str, ...]) -> None:
        self.runs = runs
        self.calls = 0
        self.pictures: list[Image.Image] = []

    def read_digits(self, gray: Image.Image, remaining_ms: object) -> DigitReading:
        self.calls += 1
        self.pictures.append(gray)
        return DigitReading(runs=self.runs)

    def expected_ms(self, gray: Image.Image) -> float:
        return 0.0

    def warm_up(self) -> None:
        pass


def test_a_conclusive_read_has_only_the_print_under_its_bars_read_and_agreeing() -> None:
    ocr = FakeDigitReader((CARD_NUMBER,))
    reader = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=ocr)
    photo = render_hard_card_photo(CARD_NUMBER, Shot())

    reading = reader.read_sync(photo)

    assert texts(reading) == [CARD_NUMBER]
    assert reading.digits == ()  # the print only confirmed the bars
    assert ocr.calls == 1
    (window,) = ocr.pictures
    width, height = Image.open(io.BytesIO(photo)).size
    assert window.width < width / 2 and window.height < height / 4


def test_printed_digits_are_returned_when_no_barcode_reads() -> None:
    ocr = FakeDigitReader((CARD_NUMBER,))
    reader = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=ocr)
    glare = Shot(glare=1.0, glare_at=(0.5, 0.62), blur_px=2.5)

    reading = reader.read_sync(render_hard_card_photo(CARD_NUMBER, glare))

    assert reading.barcodes == ()
    assert reading.digits == (CARD_NUMBER,)
    assert reading.candidates == (CARD_NUMBER,)
    assert reading.hints == ()


@needs_ocr
def test_rapidocr_reads_a_screenshot_of_an_e_card_number() -> None:
    import barcode.writer
    from PIL import ImageDraw, ImageFont

    font = ImageFont.truetype(
        str(Path(barcode.writer.__file__).parent / "fonts" / "DejaVuSansMono.ttf"), 40
    )
    screen = Image.new("RGB", (720, 400), (250, 250, 250))
    ImageDraw.Draw(screen).text((60, 170), "6214 8301 2345 6789", font=font, fill=(30, 30, 30))

    reader = PyzbarCardReader(budget_ms=UNHURRIED_MS)
    assert reader.ocr is not None
    reader.ocr.warm_up()

    reading = reader.read_sync(encode(screen))

    assert reading.digits == ("6214830123456789",)
