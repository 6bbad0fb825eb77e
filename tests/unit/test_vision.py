"""vision/: image bytes → CardReading (barcodes, photo-quality hints), and ``cardbot scan``."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import barcode
import numpy as np
import pytest
from barcode.ean import EAN13
from barcode.writer import ImageWriter
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from core.ports import Barcode, CardReader, CardReading
from vision import PyzbarCardReader
from vision.cli import scan_main
from vision.imaging import NotAnImage, load_photo, otsu_level
from vision.symbols import check_digit_valid, mod10_valid, plausible, upce_to_upca

CARD_NUMBER = "2088123456789012"

# Real photos and scans with their expected text (see the README there); skipped when absent.
DATA_DIR = Path(
    os.environ.get(
        "CARDBOT_BARCODE_DATA", Path(__file__).resolve().parents[3] / "shared/data/barcodes"
    )
)
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"no sample photos in {DATA_DIR}")

# Generous: the cascade stops at the first conclusive read, so this only matters on a loaded
# machine, where a 250 ms budget could end the cascade before the variant that proves the point.
UNHURRIED_MS = 10_000.0


@pytest.fixture
def reader() -> PyzbarCardReader:
    # Barcodes only: OCR has its own tests (test_vision_pipeline.py, test_vision_stages.py).
    return PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=None)


# --------------------------------------------------------------------------------------------
# Pictures made in the test


def render(kind: str, code: str, module_mm: float = 0.38, **options: object) -> Image.Image:
    """A barcode as python-barcode draws it: black bars on white, no human-readable text."""
    writer_options = {
        "write_text": False,
        "module_width": module_mm,
        "module_height": 10.0,
        "quiet_zone": 6.5,
        "dpi": 200,
    }
    symbol = barcode.get_barcode_class(kind)(code, writer=ImageWriter(), **options)
    drawn: Image.Image = symbol.render(writer_options)
    return drawn.convert("L")


def card_photo(
    symbol: Image.Image,
    *,
    angle: float = 0,
    contrast: tuple[int, int] = (0, 255),
    soften: float = 1.0,
    noise: float = 0.0,
    size: tuple[int, int] = (640, 480),
) -> Image.Image:
    """A card carrying the barcode on a darker table, optionally tilted, flat, soft and noisy."""
    card = Image.new("L", (int(symbol.width * 1.6), int(symbol.height * 2.2)), 235)
    card.paste(symbol, ((card.width - symbol.width) // 2, (card.height - symbol.height) // 2))
    card = card.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=90)
    photo = Image.new("L", size, 90)
    photo.paste(card, ((size[0] - card.width) // 2, (size[1] - card.height) // 2))
    low, high = contrast
    pixels = np.asarray(photo, dtype=np.float32) * (high - low) / 255 + low
    if noise:
        pixels += np.random.default_rng(7).normal(0, noise, pixels.shape)
    photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if soften != 1.0:
        # Down then up again: what a low-resolution camera or a chat app's recompression does.
        small = (int(size[0] * soften), int(size[1] * soften))
        photo = photo.resize(small, Image.Resampling.BILINEAR).resize(size)
    return photo


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def texts(reading: CardReading) -> list[str]:
    return [b.text for b in reading.barcodes]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims the given size (the shape of a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------------------------
# Reading barcodes


def test_pyzbar_reader_implements_the_card_reader_port(reader: PyzbarCardReader) -> None:
    port: CardReader = reader
    assert port is reader


def test_clean_code128_card_number_is_read(reader: PyzbarCardReader) -> None:
    reading = reader.read_sync(encode(card_photo(render("code128", CARD_NUMBER))))

    assert reading.barcodes == (Barcode("CODE128", CARD_NUMBER),)
    assert reading.hints == ()
    assert reading.candidates == (CARD_NUMBER,)
    assert reading.ms > 0


async def test_async_read_gives_the_same_answer_off_the_event_loop(
    reader: PyzbarCardReader,
) -> None:
    reading = await reader.read(encode(render("code128", CARD_NUMBER)))

    assert texts(reading) == [CARD_NUMBER]


@pytest.mark.parametrize("angle", [30, -25, 45, 60])
def test_tilted_card_is_read(reader: PyzbarCardReader, angle: float) -> None:
    photo = card_photo(render("code128", CARD_NUMBER), angle=angle)

    assert texts(reader.read_sync(encode(photo))) == [CARD_NUMBER]


def test_low_contrast_soft_noisy_tilted_photo_is_read(reader: PyzbarCardReader) -> None:
    photo = card_photo(
        render("code128", CARD_NUMBER), angle=30, contrast=(90, 170), soften=0.5, noise=4
    )

    assert texts(reader.read_sync(encode(photo, "JPEG", quality=80))) == [CARD_NUMBER]


def test_downscaled_then_upscaled_photo_is_read(reader: PyzbarCardReader) -> None:
    photo = card_photo(render("code128", CARD_NUMBER), soften=0.4)

    assert texts(reader.read_sync(encode(photo))) == [CARD_NUMBER]


def test_grainy_photo_is_read(reader: PyzbarCardReader) -> None:
    photo = card_photo(render("code128", CARD_NUMBER), noise=30)

    assert texts(reader.read_sync(encode(photo))) == [CARD_NUMBER]


def test_very_flat_photo_is_read(reader: PyzbarCardReader) -> None:
    photo = card_photo(render("code128", CARD_NUMBER), contrast=(110, 140))

    assert texts(reader.read_sync(encode(photo))) == [CARD_NUMBER]


def test_light_bars_on_a_dark_card_are_read(reader: PyzbarCardReader) -> None:
    negative = ImageOps.invert(card_photo(render("code128", CARD_NUMBER)))

    assert texts(reader.read_sync(encode(negative))) == [CARD_NUMBER]


def test_exif_rotated_jpeg_is_turned_upright_before_reading() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to view
    data = encode(Image.new("RGB", (400, 300), "white"), "JPEG", exif=exif)

    photo = load_photo(data, max_side=1600)

    assert photo.gray.size == (300, 400)
    assert photo.original_size == (300, 400)


def test_barcode_on_a_transparent_background_is_read(reader: PyzbarCardReader) -> None:
    bars = render("code128", CARD_NUMBER)
    # Black bars, everything else fully transparent *black*: only the alpha says it is a card.
    transparent = Image.new("RGBA", bars.size, (0, 0, 0, 0))
    transparent.putalpha(bars.point(lambda v: 255 - v))

    assert texts(reader.read_sync(encode(transparent))) == [CARD_NUMBER]


def test_large_photo_is_downscaled_and_read(reader: PyzbarCardReader) -> None:
    photo = card_photo(render("code128", CARD_NUMBER, module_mm=1.2), size=(3000, 2000))

    reading = reader.read_sync(encode(photo, "JPEG", quality=90))

    assert texts(reading) == [CARD_NUMBER]


def test_upc_a_is_reported_as_upca_with_twelve_digits(reader: PyzbarCardReader) -> None:
    reading = reader.read_sync(encode(render("upca", "03600029145")))

    assert reading.barcodes == (Barcode("UPCA", "036000291452"),)


@pytest.mark.parametrize(
    ("kind", "code", "expected"),
    [
        ("ean13", "590123412345", Barcode("EAN13", "5901234123457")),
        ("ean8", "9638507", Barcode("EAN8", "96385074")),
        ("itf", "12345678901231", Barcode("I25", "12345678901231")),
        ("code39", "CARD-12345", Barcode("CODE39", "CARD-12345")),
    ],
)
def test_each_card_symbology_is_read_with_its_pyzbar_name(
    reader: PyzbarCardReader, kind: str, code: str, expected: Barcode
) -> None:
    options = {"add_checksum": False} if kind == "code39" else {}

    reading = reader.read_sync(encode(render(kind, code, **options)))

    assert reading.barcodes == (expected,)


def test_ean13_with_a_wrong_check_digit_is_never_reported(reader: PyzbarCardReader) -> None:
    wrong = "5901234123458"  # the check digit of 590123412345 is 7
    symbol = EAN13(wrong, writer=ImageWriter(), no_checksum=True)
    image = symbol.render({"write_text": False, "module_width": 0.38, "dpi": 200})

    reading = reader.read_sync(encode(card_photo(image.convert("L"))))

    assert wrong not in texts(reading)
    assert not [b for b in reading.barcodes if b.symbology in {"EAN13", "UPCA", "EAN8", "UPCE"}]


def test_budget_spent_stops_the_cascade_after_the_plain_pass() -> None:
    ticks = iter(range(0, 10_000, 1))

    def slow_clock() -> float:
        return float(next(ticks))  # every look at the clock costs a whole second

    reader = PyzbarCardReader(budget_ms=250, clock=slow_clock, ocr=None)
    tilted = card_photo(render("code128", CARD_NUMBER), angle=30)

    reading = reader.read_sync(encode(tilted))

    assert reading.barcodes == ()  # only a tilt variant reads it, and none was afforded


def test_wall_clock_cap_stops_the_cascade_on_an_overloaded_machine() -> None:
    ticks = iter(range(0, 10_000, 1))

    def slow_wall_clock() -> float:
        return float(next(ticks))  # as if other processes took the core for a second

    reader = PyzbarCardReader(budget_ms=250, wall_clock=slow_wall_clock, ocr=None)
    tilted = card_photo(render("code128", CARD_NUMBER), angle=30)

    reading = reader.read_sync(encode(tilted))

    assert reading.barcodes == ()
    assert reading.ms >= 1000


# --------------------------------------------------------------------------------------------
# Bad input never raises


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"this is not a picture", id="text"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, id="broken-png"),
    ],
)
def test_bytes_that_are_not_a_usable_image_say_not_an_image(
    reader: PyzbarCardReader, data: bytes
) -> None:
    reading = reader.read_sync(data)

    assert reading.barcodes == ()
    assert reading.hints == ("not_an_image",)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(png_header_only(8000, 8000), id="64-megapixel-png"),
        pytest.param(png_header_only(30000, 30000), id="decompression-bomb"),
        pytest.param(png_header_only(200_000, 500), id="a-hundred-megapixel-strip"),
    ],
)
def test_pictures_with_too_many_pixels_say_too_large_without_decoding(
    reader: PyzbarCardReader, data: bytes
) -> None:
    reading = reader.read_sync(data)

    assert reading.barcodes == ()
    assert reading.hints == ("too_large",)


def test_truncated_jpeg_says_not_an_image(reader: PyzbarCardReader) -> None:
    jpeg = encode(card_photo(render("code128", CARD_NUMBER)), "JPEG")

    reading = reader.read_sync(jpeg[: len(jpeg) // 2])

    assert reading.hints == ("not_an_image",)


def test_file_over_20_megabytes_says_too_large(reader: PyzbarCardReader) -> None:
    reading = reader.read_sync(b"\xff" * (20 * 1024 * 1024 + 1))

    assert reading.hints == ("too_large",)


def test_formats_a_chat_app_never_sends_are_refused_unparsed(reader: PyzbarCardReader) -> None:
    eps = encode(Image.new("RGB", (300, 200), "white"), "EPS")  # Pillow would run Ghostscript

    assert reader.read_sync(eps).hints == ("not_an_image",)


def test_not_an_image_is_raised_by_the_loader_for_garbage() -> None:
    with pytest.raises(NotAnImage):
        load_photo(b"GIF89a garbage", max_side=1600)


# --------------------------------------------------------------------------------------------
# Photo-quality hints


def test_black_photo_says_dark() -> None:
    reading = PyzbarCardReader(ocr=None).read_sync(encode(Image.new("L", (640, 480), 5)))

    assert reading.barcodes == ()
    assert reading.hints == ("dark",)


def test_white_photo_says_bright() -> None:
    reading = PyzbarCardReader(ocr=None).read_sync(encode(Image.new("RGB", (640, 480), "white")))

    assert reading.hints == ("bright",)


def test_badly_blurred_barcode_says_blurred_or_is_read() -> None:
    photo = card_photo(render("code128", CARD_NUMBER)).filter(ImageFilter.GaussianBlur(4))

    reading = PyzbarCardReader(ocr=None).read_sync(encode(photo))

    assert texts(reading) == [CARD_NUMBER] or "blurred" in reading.hints


def test_tiny_photo_says_too_small() -> None:
    reading = PyzbarCardReader(ocr=None).read_sync(encode(Image.new("L", (120, 90), 128)))

    assert "too_small" in reading.hints


def test_plain_wall_says_no_card() -> None:
    texture = np.random.default_rng(3).normal(140, 3, (480, 640)).clip(0, 255)

    reading = PyzbarCardReader(ocr=None).read_sync(
        encode(Image.fromarray(texture.astype(np.uint8)))
    )

    assert reading.hints == ("no_card",)


def test_photo_without_a_barcode_reads_nothing() -> None:
    rng = np.random.default_rng(11)
    scene = Image.fromarray(
        (np.linspace(60, 200, 640)[None, :] + rng.normal(0, 6, (480, 640)))
        .clip(0, 255)
        .astype(np.uint8)
    )
    draw = ImageDraw.Draw(scene)
    draw.ellipse((100, 80, 300, 260), fill=30)
    draw.rectangle((380, 200, 560, 420), fill=220)
    draw.line((0, 470, 640, 300), fill=0, width=6)

    reading = PyzbarCardReader(ocr=None).read_sync(encode(scene, "JPEG"))

    assert reading.barcodes == ()


# --------------------------------------------------------------------------------------------
# Real photos


def _samples_per_folder() -> Iterator[Path]:
    folders = [
        "zxing/code128-1",
        "zxing/code39-1",
        "zxing/ean13-3",
        "zxing/ean8-1",
        "zxing/itf-1",
        "zxing/upca-2",
        "zxing/upce-1",
        "zxing/qrcode-1",
        "zxing/qrcode-3",
        "zxing/qrcode-6",
        "quagga2/ean_8",
        "quagga2/upc_e",
        "quagga2/code_128",
    ]
    for folder in folders:
        labelled = sorted((DATA_DIR / folder).glob("*.txt"))
        for text_file in labelled[:1]:
            yield next(p for p in text_file.parent.glob(text_file.stem + ".*") if p != text_file)


@needs_data
@pytest.mark.parametrize(
    "image", list(_samples_per_folder()), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_real_photo_reads_to_its_expected_text(reader: PyzbarCardReader, image: Path) -> None:
    expected = image.with_suffix(".txt").read_bytes().decode("utf-8")

    assert expected in texts(reader.read_sync(image.read_bytes()))


@needs_data
@pytest.mark.parametrize(
    "name", ["zxing/falsepositives-2/01.png", "zxing/falsepositives-2/13.png", "quagga2/no_code"]
)
def test_real_photo_without_a_barcode_reads_to_nothing(name: str) -> None:
    path = DATA_DIR / name
    image = path if path.is_file() else sorted(path.glob("*.jpg"))[0]

    assert PyzbarCardReader(ocr=None).read_sync(image.read_bytes()).barcodes == ()


# --------------------------------------------------------------------------------------------
# Misread guards


@pytest.mark.parametrize(
    ("symbology", "text", "ok"),
    [
        ("EAN13", "5901234123457", True),
        ("EAN13", "5901234123458", False),
        ("EAN13", "590123412345", False),
        ("EAN8", "96385074", True),
        ("UPCA", "036000291452", True),
        ("UPCA", "036000291453", False),
        ("UPCE", "04252614", True),
        ("UPCE", "04252615", False),
        ("UPCE", "24252614", False),
        ("I25", "12345678901231", True),
        ("I25", "1234567", False),
        ("I25", "1234", False),
        ("I25", "12345a", False),
        ("CODE39", "CARD-12345", True),
        ("CODE39", "card", True),  # full-ASCII Code 39 spells lower case
        ("CODE39", "卡号", False),
        ("CODE128", CARD_NUMBER, True),
        ("CODE128", "  ", False),
        ("CODE128", "12\x0734", False),
        ("CODE128", "0109501101530003\x1d10ABC", True),  # GS1-128 with its FNC1 separator
        ("QRCODE", "BEGIN:VCARD\r\nN:Wang\r\nEND:VCARD", True),
        ("QRCODE", "\x01\x10AD:SUB:阿;;", True),  # Reed-Solomon vouches for binary headers
        ("QRCODE", "bad\ufffdbytes", False),
        ("PDF417", "anything", False),
    ],
)
def test_plausible_rejects_what_a_symbology_cannot_carry(
    symbology: str, text: str, ok: bool
) -> None:
    assert plausible(symbology, text) is ok


def test_upce_expands_to_the_upca_it_stands_for() -> None:
    assert upce_to_upca("04252614") == "042100005264"
    assert upce_to_upca("04965802") == "049000006582"
    assert check_digit_valid("UPCE", "01234505")
    assert check_digit_valid("UPCE", "01234565")
    assert not check_digit_valid("UPCE", "01234566")
    assert upce_to_upca("9123456") is None


def test_mod10_matches_the_gs1_check_digit() -> None:
    assert mod10_valid("4006381333931")
    assert not mod10_valid("4006381333932")
    assert not mod10_valid("")


def test_otsu_level_splits_a_two_peak_histogram_between_the_peaks() -> None:
    histogram = np.zeros(256)
    histogram[40] = 1000
    histogram[200] = 3000

    assert 40 <= otsu_level(histogram) < 200


# --------------------------------------------------------------------------------------------
# cardbot scan


def test_scan_main_prints_one_json_object_per_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = tmp_path / "card.png"
    card.write_bytes(encode(render("code128", CARD_NUMBER)))
    junk = tmp_path / "notes.jpg"
    junk.write_bytes(b"not a photo")

    status = scan_main([str(card), str(junk)], as_json=True)

    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    assert status == 0
    assert [r["path"] for r in records] == [str(card), str(junk)]
    for record in records:
        assert {"path", "barcodes", "digits", "hints", "ms"} <= record.keys()
        assert isinstance(record["ms"], float | int)
    assert records[0]["barcodes"] == [{"symbology": "CODE128", "text": CARD_NUMBER}]
    assert records[0]["digits"] == []
    assert records[1]["hints"] == ["not_an_image"]


def test_scan_main_prints_a_line_per_image_and_fails_on_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = tmp_path / "card.png"
    card.write_bytes(encode(render("code128", CARD_NUMBER)))

    status = scan_main([str(card), str(tmp_path / "missing.png")], as_json=False)

    lines = capsys.readouterr().out.splitlines()
    assert status == 1
    assert len(lines) == 2
    assert f'CODE128 "{CARD_NUMBER}"' in lines[0]
    assert "missing.png: cannot open" in lines[1]
