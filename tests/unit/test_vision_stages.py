"""vision/ stage by stage: candidate regions, crops, deblurring, failing fast, the one deadline
that OCR shares, the OCR warm-up, and the hints for a card held too far away."""

from __future__ import annotations

import dataclasses
import io
import math
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import zxingcpp
from PIL import Image, ImageFilter

from bot.democard import Shot, render_hard_card_photo
from vision import PyzbarCardReader, engines, imaging, symbols, warpqr
from vision.locate import Region, join_pieces, locate
from vision.ocr import DigitReading, RapidOcrDigitReader, load_ocr, ocr_available
from vision.reader import (
    CASCADE,
    CROPS,
    FIRST_PASS_SIDE,
    HINTS_RESERVE_MS,
    OCR_SHARE,
    Variant,
    _Collector,
    _Evidence,
    _weigh_printed_digits,
    cut_out,
)

from .test_vision import DATA_DIR, UNHURRIED_MS, needs_data, render, texts

CARD_NUMBER = "2088123456789012"
needs_ocr = pytest.mark.skipif(not ocr_available(), reason="OCR extra (cardbot[ocr]) absent")


def gray_photo(shot: Shot) -> Image.Image:
    return imaging.load_photo(render_hard_card_photo(CARD_NUMBER, shot), 1600).gray


def decoded(image: Image.Image) -> set[str]:
    return {d.text for d in engines.zbar(image)} | {d.text for d in engines.zxing(image)}


def turn(a: float, b: float) -> float:
    """Degrees between two undirected directions."""
    diff = abs(a - b) % 180
    return min(diff, 180 - diff)


# --------------------------------------------------------------------------------------------
# Candidate regions


@pytest.mark.parametrize("tilt", [0, 30, -50, 90])
def test_the_best_candidate_is_the_card_barcode_across_its_bars(tilt: float) -> None:
    photo = gray_photo(Shot(tilt_deg=tilt))

    best = locate(photo).regions[0]

    assert best.bar_like
    assert turn(best.angle, tilt) < 5  # the gradient runs across the bars, along the card
    assert best.length > best.height  # a card barcode is wider than tall


@pytest.mark.parametrize("tilt", [30, -50, 90])
def test_a_cut_out_candidate_is_upright_and_decodes_on_its_own(tilt: float) -> None:
    photo = gray_photo(Shot(tilt_deg=tilt))

    crop = cut_out(photo, locate(photo).regions[0])

    assert crop.width > crop.height
    assert {d.text for d in engines.zbar(crop)} == {CARD_NUMBER}  # zbar alone, no rotation


def test_a_small_candidate_is_enlarged_to_a_decodable_module_width() -> None:
    photo = gray_photo(Shot(canvas=(4000, 3000), card_width_px=1000))
    best = locate(photo).regions[0]

    crop = cut_out(photo, best)

    assert crop.width > 2 * best.length
    assert CARD_NUMBER in decoded(crop)
    # The plain pass (the photo at FIRST_PASS_SIDE) does not read it.
    assert CARD_NUMBER not in decoded(imaging.fit(photo, FIRST_PASS_SIDE))


def test_a_blank_wall_has_no_candidates_and_nothing_busy() -> None:
    rng = np.random.default_rng(3)
    wall = np.clip(rng.normal(150, 2.5, (900, 1200)), 0, 255).astype(np.uint8)

    layout = locate(Image.fromarray(wall))

    assert layout.regions == ()
    assert layout.busy_fraction == 0.0


@needs_data
def test_a_qr_code_is_a_two_dimensional_candidate() -> None:
    image = DATA_DIR / "zxing/qrcode-1/1.png"
    photo = imaging.load_photo(image.read_bytes(), 1600).gray

    patches = [r for r in locate(photo).regions if not r.bar_like]

    assert patches
    assert decoded(cut_out(photo, patches[0])) == {image.with_suffix(".txt").read_text()}


def bars(cx: float, length: float, *, cy: float = 100, angle: float = 0.0) -> Region:
    return Region(cx=cx, cy=cy, angle=angle, length=length, height=60, score=1, bar_like=True)


def test_pieces_of_one_barcode_lying_end_to_end_are_joined_into_one_candidate() -> None:
    left, right = bars(100, 80), bars(182, 80, angle=4.0)  # 2 px apart, slightly turned

    (joined,) = join_pieces([left, right], max_gap=8)

    assert joined.bar_like
    assert math.isclose(joined.cx - joined.length / 2, 60, abs_tol=1)
    assert math.isclose(joined.cx + joined.length / 2, 222, abs_tol=1)
    assert joined.score == 2


@pytest.mark.parametrize(
    "other",
    [
        bars(260, 80),  # a second symbol (or a frame line) beyond the gap
        bars(100, 80, cy=180),  # a barcode printed below the first one
        bars(182, 80, angle=30.0),  # bars the other way: not the same barcode
        Region(cx=160, cy=100, angle=0, length=20, height=200, score=1, bar_like=True),  # an edge
    ],
)
def test_candidates_that_are_not_pieces_of_one_barcode_stay_apart(other: Region) -> None:
    assert len(join_pieces([bars(100, 80), other], max_gap=8)) == 2


def test_a_lone_edge_beside_a_barcode_is_not_joined_to_it() -> None:
    # The border of a white label a narrow quiet zone away: as tall as the bars, one edge wide.
    label_edge = bars(147, 12)

    assert len(join_pieces([bars(100, 80), label_edge], max_gap=8, min_length=24)) == 2
    assert len(join_pieces([bars(100, 80), bars(167, 50)], max_gap=8, min_length=24)) == 1


@needs_data
def test_a_barcode_split_in_the_localiser_is_cut_out_whole_and_reads() -> None:
    # A small, soft UPC-A: its blocks fall apart at the middle guard into two components; the
    # crop of either piece alone misses one half of the symbol.
    image = DATA_DIR / "zxing/upca-2/11.png"
    photo = imaging.load_photo(image.read_bytes(), 1600).gray

    best = locate(photo).regions[0]

    assert best.bar_like
    assert best.length > 0.75 * photo.width  # the bars span ~200 of the 240 px
    deblurred = imaging.deconvolve(cut_out(photo, best))
    assert image.with_suffix(".txt").read_text() in decoded(deblurred)


# --------------------------------------------------------------------------------------------
# QR codes on bent surfaces (cloth, curved packs): resampling through a corrected grid

RIPPLED_TEXT = "https://card.example/2088123456"


def rippled_qr(seed: int, amplitude_px: float = 3.0, period_px: float = 220) -> Image.Image:
    """A QR code (5 px modules) printed on a rippled cloth: smooth waves shift its modules by
    up to about a module, then a tilt, a little defocus and sensor noise."""
    rng = np.random.default_rng(seed)
    symbol = zxingcpp.create_barcode(RIPPLED_TEXT, zxingcpp.BarcodeFormat.QRCode, ec_level="M")
    code = np.asarray(symbol.to_image(scale=5), dtype=np.float32)
    pad = 60
    cloth = np.full((code.shape[0] + 2 * pad, code.shape[1] + 2 * pad), 40.0, dtype=np.float32)
    cloth[pad:-pad, pad:-pad] = code * 0.8 + 40
    yy, xx = np.mgrid[0 : cloth.shape[0], 0 : cloth.shape[1]].astype(np.float32)
    phase_x, phase_y = rng.uniform(0, 2 * math.pi, 2)
    dx = amplitude_px * (
        np.sin(2 * math.pi * yy / period_px + phase_x)
        + 0.5 * np.sin(2 * math.pi * xx / (1.7 * period_px) + phase_y)
    )
    dy = amplitude_px * (
        np.sin(2 * math.pi * xx / period_px + phase_y)
        + 0.5 * np.sin(2 * math.pi * yy / (1.3 * period_px) + phase_x)
    )
    rows = np.clip(yy + dy, 0, cloth.shape[0] - 1).astype(int)
    cols = np.clip(xx + dx, 0, cloth.shape[1] - 1).astype(int)
    picture = Image.fromarray(cloth[rows, cols].astype(np.uint8)).rotate(
        8, resample=Image.Resampling.BILINEAR, fillcolor=40
    )
    soft = np.asarray(picture.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)
    soft += rng.normal(0, 4, soft.shape)
    return Image.fromarray(np.clip(soft, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_a_qr_code_on_rippled_cloth_reads_once_resampled_through_a_corrected_grid(
    seed: int,
) -> None:
    photo = rippled_qr(seed)
    assert RIPPLED_TEXT not in decoded(photo)  # one perspective transform misses the modules
    assert warpqr.failed_symbols(photo)  # though zxing-cpp found the symbol and its version

    redrawn = warpqr.resample(photo)

    assert redrawn is not None
    assert RIPPLED_TEXT in decoded(redrawn)


def test_the_reader_returns_the_text_of_a_qr_code_on_rippled_cloth() -> None:
    buffer = io.BytesIO()
    rippled_qr(0).save(buffer, "PNG")

    # The default CPU budget; the wall clock follows the CPU clock, so that a busy machine
    # (other processes taking the core) does not cut the reading short.
    reader = PyzbarCardReader(ocr=None, wall_clock=time.thread_time)

    reading = reader.read_sync(buffer.getvalue())

    assert [(b.symbology, b.text) for b in reading.barcodes] == [("QRCODE", RIPPLED_TEXT)]


@pytest.mark.parametrize("version", [1, 2, 3, 5, 6, 8])
def test_the_function_patterns_are_where_every_qr_code_of_that_version_has_them(
    version: int,
) -> None:
    size = 17 + 4 * version
    # Text of about the capacity of the version at level L, so the encoder picks it.
    text = "x" * {1: 15, 2: 30, 3: 50, 5: 100, 6: 130, 8: 190}[version]
    symbol = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.QRCode, ec_level="L")
    matrix = np.asarray(symbol.to_image(scale=1))
    quiet = (matrix.shape[0] - size) // 2
    assert quiet >= 0, "the encoder chose another version"
    dark = matrix[quiet : quiet + size, quiet : quiet + size] == 0

    known = warpqr.function_patterns(size)

    assert (known != 0).sum() > 150
    assert not (dark & (known > 0)).any()
    assert (dark | (known >= 0)).all()


def test_a_photo_without_a_failed_qr_code_has_nothing_to_resample() -> None:
    assert warpqr.resample(gray_photo(Shot())) is None
    plain_qr = zxingcpp.create_barcode(RIPPLED_TEXT, zxingcpp.BarcodeFormat.QRCode)
    flat = Image.fromarray(np.asarray(plain_qr.to_image(scale=5)))
    assert warpqr.resample(flat) is None  # it decodes as it is


@needs_data
def test_a_qr_code_on_a_crumpled_shirt_reads_through_the_corrected_grid() -> None:
    image = DATA_DIR / "zxing/qrcode-4/31.png"
    photo = imaging.load_photo(image.read_bytes(), 1600).gray
    assert image.with_suffix(".txt").read_text() not in decoded(photo)

    redrawn = warpqr.resample(photo)

    assert redrawn is not None
    assert image.with_suffix(".txt").read_text() in decoded(redrawn)


def test_resampling_runs_only_with_its_fixed_cost_left_and_does_not_price_the_cascade() -> None:
    (qr_step,) = [v for v in CASCADE if v.name == "qr_resample"]
    assert qr_step.fixed_ms is not None
    calls: list[str] = []
    # A budget that leaves less than the step's fixed cost after the plain pass and the crops.
    reader = PyzbarCardReader(
        budget_ms=HINTS_RESERVE_MS + qr_step.fixed_ms - 1,
        wall_cap_ms=UNHURRIED_MS,
        ocr=None,
        crops=(),
        cascade=counting((qr_step,), calls),
        clock=TickingClock(0.0),
        wall_clock=still_wall_clock,
    )

    reader.read_sync(rippled_png := _png(rippled_qr(0)))
    assert calls == []

    roomy = PyzbarCardReader(
        budget_ms=UNHURRIED_MS, ocr=None, crops=(), cascade=counting((qr_step,), calls)
    )
    assert roomy.read_sync(rippled_png).barcodes
    assert calls == ["qr_resample"]


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Small soft photos: doubled, then deconvolved


@needs_data
def test_a_small_soft_photo_reads_doubled_and_deconvolved_not_doubled_alone() -> None:
    image = DATA_DIR / "zxing/upca-2/10.png"  # 240 px, bars about two pixels wide, defocused
    photo = imaging.load_photo(image.read_bytes(), 1600).gray
    (double,) = [v for v in CASCADE if v.name == "double"]
    (double_deblur,) = [v for v in CASCADE if v.name == "double_deblur"]

    assert double_deblur.applies(photo)
    assert image.with_suffix(".txt").read_text() not in decoded(double.transform(photo))
    assert image.with_suffix(".txt").read_text() in decoded(double_deblur.transform(photo))
    # It builds on the doubled picture, so it runs after it and only where doubling does.
    assert CASCADE.index(double_deblur) > CASCADE.index(double)
    assert not double_deblur.applies(imaging.fit(gray_photo(Shot()), 1024))


# --------------------------------------------------------------------------------------------
# A short symbol zbar parsed out of a longer one


def bar_rows(kind: str, code: str) -> tuple[np.ndarray, float, float, float]:
    """A rendered symbol as float pixels, its first and last bar column and module width."""
    pixels = np.asarray(render(kind, code, module_mm=0.3), dtype=np.float32)
    columns = np.nonzero((pixels < 128).any(axis=0))[0]
    first, last = float(columns[0]), float(columns[-1])
    return pixels, first, last, pixels.shape[0] / 2


def test_a_upc_e_read_from_the_left_half_of_an_ean_13_is_inside_a_longer_symbol() -> None:
    # The left guard, six digits and the middle guard of an EAN-13 are a UPC-E to zbar when
    # their parity pattern happens to fit; seen on a soft photo of EAN-13 1515765945552.
    pixels, first, last, row = bar_rows("ean13", "151576594555")
    middle_guard = first + 50 * (last - first + 1) / 95
    box = (middle_guard, row - 3, middle_guard, row + 3)

    assert engines.inside_longer_symbol(pixels, box, True, symbols.UPCE)
    assert engines.inside_longer_symbol(pixels, box, True, symbols.EAN8)


def test_a_short_symbol_on_its_own_is_not_inside_a_longer_one() -> None:
    pixels, first, last, row = bar_rows("ean8", "9638507")

    for x in (first, (first + last) / 2, last):
        assert not engines.inside_longer_symbol(pixels, (x, row - 3, x, row + 3), True, "EAN8")
    turned = np.ascontiguousarray(pixels.T)  # bars along the rows: zbar scanned the columns
    assert not engines.inside_longer_symbol(turned, (row - 3, last, row + 3, last), False, "EAN8")


@needs_data
def test_real_upc_e_and_ean_8_photos_still_read_with_the_partial_scan_guard() -> None:
    for name in ("zxing/upce-1/1.png", "zxing/ean8-1/1.png", "quagga2/upc_e/image-001.jpg"):
        image = DATA_DIR / name
        photo = imaging.load_photo(image.read_bytes(), 1600).gray
        assert image.with_suffix(".txt").read_text() in {d.text for d in engines.zbar(photo)}


# --------------------------------------------------------------------------------------------
# Deblurring variants (on an enlarged, defocused crop: what the crop stage hands them)


@pytest.fixture(scope="module")
def defocused_crop() -> Image.Image:
    bars = render("code128", CARD_NUMBER, module_mm=0.3)
    enlarged = bars.resize((bars.width * 2, bars.height * 2), Image.Resampling.NEAREST)
    soft = np.asarray(enlarged.filter(ImageFilter.GaussianBlur(3.0)), dtype=np.float32)
    soft += np.random.default_rng(1).normal(0, 2, soft.shape)
    return Image.fromarray(np.clip(soft, 0, 255).astype(np.uint8))


def test_the_defocused_crop_does_not_read_as_it_is(defocused_crop: Image.Image) -> None:
    assert decoded(defocused_crop) == set()


@pytest.mark.parametrize("deblur", [imaging.deconvolve, imaging.strong_sharpen])
def test_deblurring_restores_a_defocused_crop(
    defocused_crop: Image.Image, deblur: Callable[[Image.Image], Image.Image]
) -> None:
    assert decoded(deblur(defocused_crop)) == {CARD_NUMBER}


def test_deconvolution_keeps_size_and_grey_range(defocused_crop: Image.Image) -> None:
    restored = imaging.deconvolve(defocused_crop)

    assert restored.size == defocused_crop.size
    assert restored.mode == "L"


# --------------------------------------------------------------------------------------------
# The reader's stages together


def counting(variants: tuple[Variant, ...], calls: list[str]) -> tuple[Variant, ...]:
    def wrap(variant: Variant) -> Variant:
        def transform(image: Image.Image) -> Image.Image:
            calls.append(variant.name)
            return variant.transform(image)

        return dataclasses.replace(variant, transform=transform)

    return tuple(wrap(v) for v in variants)


@pytest.mark.parametrize(
    "shot",
    [
        pytest.param(Shot(tilt_deg=35, blur_px=1.5), id="tilted-soft"),
        pytest.param(Shot(canvas=(3000, 2250), card_width_px=900), id="far-in-a-big-photo"),
        pytest.param(Shot(blur_px=2.6), id="defocused"),
    ],
)
def test_crops_read_card_photos_the_plain_pass_cannot(shot: Shot) -> None:
    photo = render_hard_card_photo(CARD_NUMBER, shot)
    plain_only = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=None, crops=(), cascade=())
    with_crops = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=None, cascade=())

    assert plain_only.read_sync(photo).barcodes == ()
    assert texts(with_crops.read_sync(photo)) == [CARD_NUMBER]


def test_a_photo_with_nothing_barcode_like_skips_every_variant() -> None:
    calls: list[str] = []
    reader = PyzbarCardReader(
        budget_ms=UNHURRIED_MS,
        ocr=None,
        crops=counting(CROPS, calls),
        cascade=counting(CASCADE, calls),
    )
    rng = np.random.default_rng(5)
    wall = Image.fromarray(np.clip(rng.normal(140, 2.0, (1200, 1600)), 0, 255).astype(np.uint8))

    reading = reader.read_sync(imaging_png(wall))

    assert calls == []
    assert reading.barcodes == ()
    assert "no_card" in reading.hints


def test_a_busy_photo_without_a_barcode_does_run_the_variants() -> None:
    calls: list[str] = []
    reader = PyzbarCardReader(
        budget_ms=UNHURRIED_MS,
        ocr=None,
        crops=counting(CROPS, calls),
        cascade=counting(CASCADE, calls),
    )
    stripes = np.zeros((600, 800), dtype=np.uint8)
    stripes[:, ::9] = 255  # bar-like, but no symbology parses it
    stripes[::50, :] = 255

    reading = reader.read_sync(imaging_png(Image.fromarray(stripes)))

    assert reading.barcodes == ()
    assert calls[:1] == ["crop0"]


def imaging_png(image: Image.Image) -> bytes:
    from .test_vision import encode

    return encode(image)


def still_wall_clock() -> float:
    """A wall clock that never moves: with a TickingClock for CPU time, how busy the machine
    is cannot change what a reading affords (the reader prices steps by the slower clock)."""
    return 0.0


class TickingClock:
    """A CPU clock that advances ``step_ms`` each time it is read: fully deterministic."""

    def __init__(self, step_ms: float = 1.0) -> None:
        self.step = step_ms / 1000
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class ReserveRecorder:
    """An OCR stand-in that predicts its cost and records how much time it was left."""

    def __init__(self, expected: float, runs: tuple[str, ...] = ()) -> None:
        self.expected = expected
        self.runs = runs
        self.left_ms: list[float] = []

    def read_digits(self, gray: Image.Image, remaining_ms: Callable[[], float]) -> DigitReading:
        self.left_ms.append(remaining_ms())
        return DigitReading(runs=self.runs)

    def expected_ms(self, gray: Image.Image) -> float:
        return self.expected

    def warm_up(self) -> None:
        pass


THUMB_OVER_BARCODE = Shot(thumb=(0.42, 0.3, 0.58, 0.71))


# Each clock reading costs this much: the barcode stages alone then fill the whole deadline.
SLOW_STEP_MS = 4.0


def wall_ticks(step_ms: float = SLOW_STEP_MS) -> TickingClock:
    """The wall clock ticking like the CPU clock: the cascade prices each step by the slower of
    the two, and a real wall clock would make what runs depend on how busy the machine is."""
    return TickingClock(step_ms)


def test_without_ocr_the_barcode_stages_fill_the_deadline() -> None:
    clock = TickingClock(SLOW_STEP_MS)
    reader = PyzbarCardReader(
        budget_ms=200, wall_cap_ms=UNHURRIED_MS, ocr=None, clock=clock, wall_clock=wall_ticks()
    )

    reader.read_sync(render_hard_card_photo(CARD_NUMBER, THUMB_OVER_BARCODE))

    assert 200 - 2 * SLOW_STEP_MS - HINTS_RESERVE_MS <= clock.now * 1000 <= 200 + SLOW_STEP_MS


def test_ocr_gets_its_predicted_time_out_of_the_one_deadline() -> None:
    ocr = ReserveRecorder(expected=60.0, runs=(CARD_NUMBER,))
    reader = PyzbarCardReader(
        budget_ms=200,
        wall_cap_ms=UNHURRIED_MS,
        ocr=ocr,
        clock=TickingClock(SLOW_STEP_MS),
        wall_clock=wall_ticks(),
    )

    reading = reader.read_sync(render_hard_card_photo(CARD_NUMBER, THUMB_OVER_BARCODE))

    assert reading.barcodes == ()
    assert reading.digits == (CARD_NUMBER,)
    # The barcode stages stopped where OCR's share (its prediction + the hints) began: the last
    # step overruns by its three clock readings, and the deadline is seen up to one reading late.
    (left,) = ocr.left_ms
    assert 60.0 - 4 * SLOW_STEP_MS <= left <= 60.0 + SLOW_STEP_MS


def test_ocr_share_of_the_deadline_is_capped() -> None:
    ocr = ReserveRecorder(expected=10_000.0)
    reader = PyzbarCardReader(
        budget_ms=400,
        wall_cap_ms=UNHURRIED_MS,
        ocr=ocr,
        clock=TickingClock(SLOW_STEP_MS),
        wall_clock=wall_ticks(),
    )

    reader.read_sync(render_hard_card_photo(CARD_NUMBER, THUMB_OVER_BARCODE))

    (left,) = ocr.left_ms
    cap = OCR_SHARE * 400 - HINTS_RESERVE_MS
    assert cap - 3 * SLOW_STEP_MS <= left <= cap + SLOW_STEP_MS


@pytest.mark.parametrize(
    "shot",
    [
        pytest.param(THUMB_OVER_BARCODE, id="crisp"),
        pytest.param(Shot(thumb=(0.42, 0.3, 0.58, 0.71), blur_px=3.0), id="soft"),
    ],
)
def test_ocr_share_is_not_taken_from_the_crops(shot: Shot) -> None:
    calls: list[str] = []
    ocr = ReserveRecorder(expected=10_000.0)
    reader = PyzbarCardReader(
        budget_ms=200,
        wall_cap_ms=UNHURRIED_MS,
        ocr=ocr,
        crops=counting(CROPS, calls),
        cascade=counting(CASCADE, calls),
        clock=TickingClock(SLOW_STEP_MS),
        wall_clock=wall_ticks(),
    )

    reader.read_sync(render_hard_card_photo(CARD_NUMBER, shot))

    # The crops read far more card photos than OCR does in the same time: all of them run
    # before OCR's share is kept back (from the whole-photo cascade).
    assert [name for name in calls if name.startswith("crop")] == [v.name for v in CROPS]
    assert ocr.left_ms  # and OCR still ran, on what was left


def test_ocr_is_not_given_time_on_a_photo_too_blurred_for_print() -> None:
    ocr = ReserveRecorder(expected=60.0, runs=(CARD_NUMBER,))
    reader = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=ocr)

    reading = reader.read_sync(render_hard_card_photo(CARD_NUMBER, Shot(blur_px=8.0)))

    assert ocr.left_ms == []
    assert reading.digits == ()
    assert "blurred" in reading.hints


def test_the_whole_reading_stops_at_the_deadline_on_cpu_time() -> None:
    clock = TickingClock()
    reader = PyzbarCardReader(
        budget_ms=200, wall_cap_ms=UNHURRIED_MS, ocr=None, clock=clock, wall_clock=wall_ticks(1.0)
    )

    reader.read_sync(render_hard_card_photo(CARD_NUMBER, THUMB_OVER_BARCODE))

    # Each tick is a millisecond; the last stage may overrun by its own (tiny) cost.
    assert clock.now * 1000 <= 200 + 5


# --------------------------------------------------------------------------------------------
# Trust rule additions


def evidence(symbology: str, text: str, engine: str, lines: int, order: int) -> _Evidence:
    found = _Evidence(symbology, text, order=order, lines=lines, best_lines=lines)
    found.engines.add(engine)
    found.seen_in.append("crop0_sharpen")
    return found


def test_a_partial_upc_e_scan_gives_way_to_the_upc_a_it_was_cut_from() -> None:
    collector = _Collector()
    upce = evidence(symbols.UPCE, "02212166", engines.ZBAR, lines=6, order=0)
    upce.gentle = True
    upca = evidence(symbols.UPCA, "012546619592", engines.ZXING, lines=0, order=1)
    collector._seen = {("UPCE", upce.text): upce, ("UPCA", upca.text): upca}

    assert [e.text for e in collector.accepted()] == ["012546619592"]


# --------------------------------------------------------------------------------------------
# OCR: warm-up, the real engine on a card photo


class WarmUpRecorder(ReserveRecorder):
    def __init__(self) -> None:
        super().__init__(expected=0.0)
        self.warmed = threading.Event()

    def warm_up(self) -> None:
        self.warmed.set()


def test_warm_up_runs_on_a_background_thread() -> None:
    ocr = WarmUpRecorder()
    reader = PyzbarCardReader(ocr=ocr)

    thread = reader.warm_up_in_background()

    # Not a daemon: a process ending mid-load must wait, or onnxruntime aborts it (exit -6).
    assert thread is not None and not thread.daemon
    thread.join(timeout=5)
    assert ocr.warmed.is_set()


def test_warm_up_without_ocr_is_nothing() -> None:
    assert PyzbarCardReader(ocr=None).warm_up_in_background() is None


def test_a_failing_warm_up_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(ReserveRecorder):
        def warm_up(self) -> None:
            raise RuntimeError("no models")

    thread = PyzbarCardReader(ocr=Broken(expected=0.0)).warm_up_in_background()

    assert thread is not None
    thread.join(timeout=5)
    assert "warming the OCR models up failed" in caplog.text


def test_cold_ocr_reads_nothing_rather_than_blowing_the_deadline() -> None:
    cold = RapidOcrDigitReader()

    found = cold.read_digits(gray_photo(Shot()), lambda: 1000.0)

    assert found == DigitReading(runs=(), complete=False)
    assert cold.expected_ms(gray_photo(Shot())) == 0.0


@needs_ocr
def test_the_process_shares_one_ocr_reader() -> None:
    assert load_ocr() is load_ocr()


@needs_ocr
def test_rapidocr_reads_the_number_off_a_card_photo_whose_barcode_is_covered() -> None:
    ocr = load_ocr()
    assert ocr is not None
    ocr.warm_up()
    reader = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=ocr)

    reading = reader.read_sync(render_hard_card_photo(CARD_NUMBER, THUMB_OVER_BARCODE))

    assert reading.barcodes == ()
    assert reading.digits == (CARD_NUMBER,)


@needs_ocr
@pytest.mark.parametrize(
    "shot",
    [
        pytest.param(Shot(tilt_deg=8, keystone=0.2), id="keystone"),
        pytest.param(Shot(blur_px=2.5), id="soft"),
        pytest.param(Shot(light=0.3, noise=6), id="dim-room"),
    ],
)
def test_rapidocr_reads_hard_card_photos(shot: Shot) -> None:
    ocr = load_ocr()
    assert ocr is not None
    ocr.warm_up()

    found = ocr.read_digits(gray_photo(shot), lambda: UNHURRIED_MS)

    assert found.runs[:1] == (CARD_NUMBER,)


# --------------------------------------------------------------------------------------------
# Hints


@pytest.mark.parametrize("card_width", [500, 700])
def test_a_card_far_away_in_a_12_megapixel_photo_says_move_closer(card_width: int) -> None:
    reader = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=None)

    reading = reader.read_sync(
        render_hard_card_photo(CARD_NUMBER, Shot(canvas=(4000, 3000), card_width_px=card_width))
    )

    assert reading.barcodes == ()
    assert reading.hints[:1] == ("too_small",)


@pytest.mark.parametrize("symbology", [symbols.UPCE, symbols.EAN8])
def test_a_short_symbol_zbar_saw_once_on_a_few_lines_is_held_back(symbology: str) -> None:
    # Seen on a real photo: a crop of a UPC-A's neighbourhood parsed as a check-digit-valid
    # UPC-E on four scan lines, and nothing else read: a wrong number the user would be shown.
    weak = evidence(symbology, "00870340", engines.ZBAR, lines=4, order=0)

    assert not weak.accepted
    assert weak.weak_short_read


def test_a_short_symbol_is_accepted_on_many_lines_a_second_variant_or_both_engines() -> None:
    many_lines = evidence(symbols.UPCE, "00870340", engines.ZBAR, lines=12, order=0)
    two_variants = evidence(symbols.UPCE, "00870340", engines.ZBAR, lines=3, order=0)
    two_variants.seen_in.append("crop0_deblur")
    both_engines = evidence(symbols.UPCE, "00870340", engines.ZBAR, lines=3, order=0)
    both_engines.engines.add(engines.ZXING)
    by_zxing = evidence(symbols.EAN8, "96385074", engines.ZXING, lines=0, order=0)
    long_symbol = evidence(symbols.EAN13, "9780441014989", engines.ZBAR, lines=3, order=0)

    for found in (many_lines, two_variants, both_engines, by_zxing, long_symbol):
        assert found.accepted, found


def test_a_held_back_short_symbol_is_confirmed_by_the_printed_digits() -> None:
    weak = evidence(symbols.EAN8, "96385074", engines.ZBAR, lines=2, order=0)
    collector = _Collector()
    collector._seen = {(weak.symbology, weak.text): weak}

    assert collector.accepted() == []
    assert _weigh_printed_digits([], collector.rejected_unchecked(), ("96385074",)) == [weak]


def test_a_barcode_cut_short_by_a_thumb_is_not_called_too_small() -> None:
    reader = PyzbarCardReader(budget_ms=UNHURRIED_MS, ocr=None)

    reading = reader.read_sync(render_hard_card_photo(CARD_NUMBER, THUMB_OVER_BARCODE))

    assert reading.barcodes == ()
    assert "too_small" not in reading.hints


def test_quad_corners_put_the_bars_upright() -> None:
    from vision.locate import Region

    region = Region(cx=100, cy=50, angle=90, length=40, height=20, score=1, bar_like=True)

    ul_x, ul_y, ll_x, _, _, _, _, ur_y = region.quad(0, 0)

    # Across the bars runs along y here: the output's x axis (upper left → upper right)
    # follows it, and the output's y axis (upper left → lower left) runs along the bars.
    assert math.isclose(ur_y - ul_y, 40, abs_tol=1e-6)
    assert math.isclose(abs(ll_x - ul_x), 20, abs_tol=1e-6)
