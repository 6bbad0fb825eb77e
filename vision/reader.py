"""``PyzbarCardReader``: image bytes → ``CardReading`` with pyzbar behind a staged cascade.

Pipeline, under one deadline for the whole reading (``DEFAULT_BUDGET_MS`` of CPU time, capped
at ``DEFAULT_WALL_CAP_MS`` of wall-clock time):

1. decode the bytes (EXIF-upright, grayscale, long side ≤ 1600 px);
2. both engines on the plain picture: the cheap path, where most photos end; then zxing-cpp
   alone on the photo as decoded, when that is larger (small codes in chat screenshots);
3. exposure/focus measures and candidate regions (``vision.locate``); a photo with nothing busy
   in it stops here (fail fast). When OCR is installed and print would be legible, OCR's
   predicted cost (at most ``OCR_SHARE`` of the deadline) is held back from the next stages;
4. crops of the best candidate regions (deskewed, enlarged, then sharpened and deconvolved;
   pieces of one barcode the localiser found apart are joined first), then a QR code that
   zxing-cpp found but could not decode resampled through a locally corrected grid
   (``vision.warpqr``: cloth, curved packs), then whole-photo variants, most useful first,
   until a conclusive read or the deadline;
5. OCR of the printed number, when no read can be the card's number or one is unsure
   (fallback and confirmation);
6. photo-quality hints if nothing was read.

Trust rule (what keeps misreads out):

1. Every decode must be plausible for its symbology (``vision.symbols.plausible``): EAN/UPC
   check digits re-verified, ITF of even length ≥ 6, Code 39 alphabet, printable text.
2. A read is *accepted* when its symbology carries a mandatory check (EAN/UPC, Code 128, QR),
   whichever variant produced it, except a short symbol (EAN-8, UPC-E) that only zbar read,
   in one variant, on fewer than ``UNCHECKED_MIN_LINES`` lines: part of a longer or blurred
   symbol parses as one now and then (the printed digits may still confirm it). Code 39 and
   ITF have no mandatory check, so a read of theirs is accepted only from a gentle variant
   (plain, rescaled, equalised, negative) or when a second variant confirms it, and in both
   cases only if one variant decoded it on at least ``UNCHECKED_MIN_LINES`` scan lines: stray
   text and partial ITF scans parse on one to four lines, real bars on dozens.
3. A read is *sure* when it is accepted and is a QR code, was read by both engines, or was
   decoded on at least ``STRONG_LINES`` scan lines of one variant. Blurred EAN photos do yield
   check-digit-valid misreads, but only on a few lines; those do not stop the search for better.
   A sure read is *conclusive* (the cascade stops) when it can be a card number by the caller's
   test (``is_card_number``: the catalog's, in the bot): a shop's mini-program QR code beside a
   worn card-number barcode is reported, never the end of the search.
4. A conclusive 1-D read of digits has the print under its bars read (``vision.printed``, when
   OCR is installed and print legible): legible digits there that clearly spell another number
   make the read untrusted. It is dropped, the search goes on, and the print is reported as
   digits: the bars were read right, but they are not the number the card shows.
5. The result lists accepted reads: conclusive first, then sure, then self-checking, then by
   scan-line support. A read that is not sure is dropped when a better read of the same family
   (EAN/UPC are one family) is listed: it is almost always a partial or misread scan of that
   same barcode.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final, Literal, cast

from PIL import Image

from core.ports import Barcode, CardReading
from vision import engines, imaging, printed, symbols, warpqr
from vision.engines import Box
from vision.locate import MARGIN_ACROSS, MARGIN_ALONG, Layout, Region, locate
from vision.ocr import DigitReader, load_ocr
from vision.quality import legible, measure, photo_hints

log = logging.getLogger(__name__)

NOT_AN_IMAGE: Final = "not_an_image"
TOO_LARGE: Final = "too_large"
ANIMATED: Final = "animated"

# One deadline for the whole reading (decode, localise, crops, cascade, OCR, hints), in CPU time
# of one core; p95 lands at about this figure, since a photo nothing can be read from spends all
# of it. The goal is 250 ms; the margin covers the last step's overrun and a busy machine.
DEFAULT_BUDGET_MS: Final = 220.0
# What the user may wait, in wall-clock time, however busy the machine: the reading stops here
# even if its CPU budget is not spent (other processes took the core).
DEFAULT_WALL_CAP_MS: Final = 250.0
# At most this share of the deadline is held back for OCR while the barcode stages run, and only
# on photos sharp and well exposed enough for print to be legible.
OCR_SHARE: Final = 0.5
MAX_IMAGE_BYTES: Final = 20 * 1024 * 1024
FULL_SIDE: Final = 1600  # enough for a card barcode filling a fifth of a phone photo
FIRST_PASS_SIDE: Final = 1024  # a card barcode filling half the frame; zbar costs per pixel
CASCADE_SIDE: Final = 1024  # filters run smaller: each variant then costs ~25 ms, not ~80
TILT_SIDE: Final = 800  # rotating grows the canvas up to 2x; keep each tilt pass cheap
UPSCALE_MAX_SIDE: Final = 480  # doubling only helps pictures whose bars are a pixel or two wide
DOUBLE_DEBLUR_SIGMA: Final = 3.0  # px of the doubled picture: 1.5 px of the photo
HALF_MIN_SIDE: Final = 120  # halving anything smaller leaves bars under a pixel wide
CROP_TARGET: Final = 560  # px across the bars after resampling: ~5 px per module of an EAN-13
CROP_MAX_UP: Final = 4.0
CROP_MAX_HEIGHT: Final = 160  # bars need few rows; fewer pixels make each crop variant cheap
CROP_MIN_HEIGHT: Final = 48
PATCH_TARGET: Final = 400  # px per side of a 2D (QR) candidate after resampling
PATCH_MAX_UP: Final = 3.0
MAX_CROPS: Final = 3
STRONG_LINES: Final = 10
UNCHECKED_MIN_LINES: Final = 5
# zbar's cost per pixel varies with content (filtered and rotated pictures have more edges);
# predictions use the worst rate seen so far times this margin.
COST_MARGIN: Final = 1.25
HINTS_RESERVE_MS: Final = 10.0  # the photo-quality measures run after the cascade
# What reading the print under a barcode's bars may cost: text detection in a small window and
# recognition of one line, on one core (~25 ms); more lines would be the card's fine print.
PRINT_CHECK_MS: Final = 40.0
# zxing-cpp alone on the photo as decoded, when that is larger than the plain pass's copy: small,
# heavily compressed codes in chat screenshots (a 1080 x 2340 screenshot, 1-2 px modules) lose
# their bars in any downscaled copy, and zxing-cpp reads them at full size in ~6 ms. Up to this
# many pixels (a 1440 x 3200 screenshot; a 12 Mpx JPEG is decoded at 3 Mpx), with this much of
# the deadline left (~20 ms at the cap on one core).
FULL_RESOLUTION_MAX_PIXELS: Final = 6_000_000
FULL_RESOLUTION_MS: Final = 25.0
# What resampling a bent QR code costs at most (one symbol of up to 41 modules, two lattices,
# on one core); the step runs only with this much of the deadline left.
QR_RESAMPLE_MS: Final = 80.0

_EAN_UPC: Final = "EAN/UPC"
_FAMILY: Final = {
    symbols.EAN13: _EAN_UPC,
    symbols.EAN8: _EAN_UPC,
    symbols.UPCA: _EAN_UPC,
    symbols.UPCE: _EAN_UPC,
}


View = Literal["full", "work", "cascade", "tilt", "crop0", "crop1", "crop2"]


class _Views:
    """The same photo at the sizes the cascade works on, and the candidate regions cut out of
    it (made on first use: a photo that reads early never pays for them)."""

    def __init__(self, full: Image.Image, work: Image.Image, regions: tuple[Region, ...]) -> None:
        self._pictures: dict[str, Image.Image] = {"full": full, "work": work}
        factor = full.width / work.width
        self._regions = {f"crop{i}": r.scaled(factor) for i, r in enumerate(regions[:MAX_CROPS])}
        self._fill: int | None = None

    def get(self, view: View) -> Image.Image | None:
        """The picture of a view; None for a crop of a region the photo does not have."""
        picture = self._pictures.get(view)
        if picture is not None:
            return picture
        if view == "cascade":
            picture = imaging.fit(self._pictures["work"], CASCADE_SIDE)
        elif view == "tilt":
            cascade = self.get("cascade")
            assert cascade is not None
            picture = imaging.fit(cascade, TILT_SIDE)
        elif view in self._regions:
            if self._fill is None:
                self._fill = imaging.median_grey(self._pictures["work"])
            picture = cut_out(self._pictures["full"], self._regions[view], self._fill)
        else:
            return None
        self._pictures[view] = picture
        return picture


def cut_out(full: Image.Image, region: Region, fill: int | None = None) -> Image.Image:
    """A candidate region cut out of the photo, deskewed (bars upright) and resampled so that
    its modules are a few pixels wide: small, far or tilted codes become plain ones."""
    if region.bar_like:
        quad = region.quad(MARGIN_ACROSS, MARGIN_ALONG)
        across = region.length * (1 + 2 * MARGIN_ACROSS)
        factor = min(CROP_MAX_UP, max(1.0, CROP_TARGET / across))
        along = region.height * (1 + 2 * MARGIN_ALONG) * factor
        size = (round(across * factor), round(min(CROP_MAX_HEIGHT, max(CROP_MIN_HEIGHT, along))))
    else:
        quad = region.quad(MARGIN_ACROSS, MARGIN_ACROSS)
        side = max(region.length, region.height) * (1 + 2 * MARGIN_ACROSS)
        factor = min(PATCH_MAX_UP, max(1.0, PATCH_TARGET / side))
        size = (round(side * factor), round(side * factor))
    return imaging.warp_quad(full, quad, size, fill)


def _always(image: Image.Image) -> bool:
    return True


Transform = Callable[[Image.Image], Image.Image]


@dataclass(frozen=True)
class Variant:
    """One cascade step: a transform of one view of the photo, gentle or aggressive."""

    name: str
    aggressive: bool  # see the trust rule: binarising, rotating, hard sharpening can fake bars
    view: View
    transform: Callable[[Image.Image], Image.Image]
    growth: float = 1.0  # output pixels per input pixel, at most: the cost estimate uses it
    applies: Callable[[Image.Image], bool] = _always
    # A step whose cost does not follow its output's pixels (it searches the picture and draws
    # a small one) is not priced per pixel: it runs when this many milliseconds are left, and
    # it teaches the cost estimate nothing.
    fixed_ms: float | None = None

    @property
    def is_crop(self) -> bool:
        return self.view.startswith("crop")


def _larger_than_work(image: Image.Image) -> bool:
    return max(image.size) > FIRST_PASS_SIDE


def _halve(image: Image.Image) -> Image.Image:
    return imaging.scale(image, 0.5)


def _double(image: Image.Image) -> Image.Image:
    return imaging.scale(image, 2.0)


def _double_deblur(image: Image.Image) -> Image.Image:
    return imaging.deconvolve(imaging.scale(image, 2.0), sigma=DOUBLE_DEBLUR_SIGMA)


def _big_enough_to_halve(image: Image.Image) -> bool:
    return min(image.size) >= HALF_MIN_SIDE


def _small_enough_to_double(image: Image.Image) -> bool:
    return max(image.size) <= UPSCALE_MAX_SIDE


def _tilt(degrees: int) -> Variant:
    # An expanded canvas holds at most (|cos|+|sin|)² = 1 + |sin 2θ| times the pixels.
    growth = 1 + abs(math.sin(math.radians(2 * degrees)))
    turn = functools.partial(imaging.rotate, degrees=degrees)
    return Variant(f"tilt{degrees:+d}", True, "tilt", turn, growth=growth)


def _crop(index: int, name: str, aggressive: bool, transform: Transform) -> Variant:
    return Variant(f"crop{index}{name}", aggressive, cast(View, f"crop{index}"), transform)


def _same(image: Image.Image) -> Image.Image:
    return image


_BLANK: Final = Image.new("L", (8, 8), 255)


def _resample_qr(image: Image.Image) -> Image.Image:
    return warpqr.resample(image) or _BLANK


# Candidate regions first: each crop is a fraction of the photo's pixels, so three crops and
# their deblurred versions cost less than one whole-photo variant. Measured on the shared set
# (the held-out quarter rescued none, so it did not steer the choice): the best region's crop
# sharpened hard, then deconvolved, rescued most of the small, blurred UPC/EAN photos the
# whole-photo cascade missed; the other regions matter when print or a second code outscored
# the barcode. The crops as cut run first: they are the cheapest.
CROPS: Final[tuple[Variant, ...]] = (
    _crop(0, "", False, _same),
    _crop(1, "", False, _same),
    _crop(2, "", False, _same),
    _crop(0, "_sharpen", True, imaging.strong_sharpen),
    _crop(0, "_deblur", True, imaging.deconvolve),
    _crop(1, "_sharpen", True, imaging.strong_sharpen),
)

# Order: cheapest rescue first. Averaging pixel pairs removes sensor noise and JPEG ringing
# around bars (the most useful variant for soft phone photos); doubling gives zbar's edge
# detector room on tiny pictures; local thresholding beats glare and shadow. Then tilts, kept
# together so that a Code 39/ITF read from one tilt is confirmed by its neighbour before the
# budget runs out: zbar scans rows and columns, so quarter turns are free and each pass
# tolerates roughly ±15° for a typical card barcode; +45° and ±30° cover the angles in between
# (+45° also covers -45°, whose bars then lie along the columns). Contrast filters next, then
# the negative (light bars printed on a dark card), and ±15° last, for slim barcodes whose
# tolerance is narrower.
CASCADE: Final[tuple[Variant, ...]] = (
    # First, and nearly free unless zxing-cpp found a QR code it could not decode: that code
    # resampled through a locally corrected grid (cloth, curved and crumpled surfaces).
    Variant("qr_resample", True, "work", _resample_qr, fixed_ms=QR_RESAMPLE_MS),
    Variant("half", False, "work", _halve, growth=0.25, applies=_big_enough_to_halve),
    Variant("double", False, "work", _double, growth=4.0, applies=_small_enough_to_double),
    # A small photo is often a soft one too (a thumbnail, a far shot cropped): doubled, then
    # deconvolved for a defocus of ~1.5 of its own pixels, its modules get their edges back.
    Variant(
        "double_deblur", True, "work", _double_deblur, growth=4.0, applies=_small_enough_to_double
    ),
    Variant("local_threshold", True, "cascade", imaging.local_threshold),
    _tilt(45),
    _tilt(30),
    _tilt(-30),
    Variant("equalize", False, "cascade", imaging.equalize),
    Variant("otsu", True, "cascade", imaging.otsu_threshold),
    Variant("sharpen", True, "cascade", imaging.sharpen),
    Variant("invert", False, "cascade", imaging.invert),
    _tilt(15),
    _tilt(-15),
    # Last: the photo at up to 1600 px, for a card far from the camera in a big photo.
    Variant("full", False, "full", lambda image: image, applies=_larger_than_work),
)


@dataclass
class _Evidence:
    """Everything the cascade saw of one (symbology, text)."""

    symbology: str
    text: str
    order: int
    lines: int = 0  # zbar scan lines that decoded it, summed over variants
    best_lines: int = 0  # zbar scan lines in the single best variant
    gentle: bool = False  # some engine read it from a gentle variant
    zxing_gentle: bool = False  # zxing-cpp read it from a gentle variant
    engines: set[str] = field(default_factory=set)
    seen_in: list[str] = field(default_factory=list)  # variant names, in cascade order
    card_like: bool = True  # the caller's test: this text can be a card number
    # Where it was decoded (picture, box, clockwise quarter turns), for the print under the
    # bars; a whole-photo view is preferred to a crop, which holds little beside the bars.
    where: tuple[Image.Image, Box, int] | None = None
    where_is_crop: bool = False
    print_checked: bool = False
    contradicted: bool = False  # legible digits printed under the bars say something else

    @property
    def variants(self) -> int:
        return len(self.seen_in)

    @property
    def self_checking(self) -> bool:
        return self.symbology in symbols.SELF_CHECKING

    @property
    def both_engines(self) -> bool:
        return len(self.engines) >= 2

    @property
    def accepted(self) -> bool:
        if self.contradicted:
            return False
        if self.both_engines:
            return True
        if self.weak_short_read:
            return False
        if self.self_checking:
            return True
        # zxing-cpp itself demands agreeing scan lines and quiet zones for Code 39 and ITF.
        if self.zxing_gentle:
            return True
        confirmed = self.gentle or self.variants >= 2
        return confirmed and self.best_lines >= UNCHECKED_MIN_LINES

    @property
    def weak_short_read(self) -> bool:
        """An EAN-8/UPC-E only zbar saw, in one variant, on a few scan lines.

        A short symbol carries few digits and one check digit (UPC-E's hides in the parity of its
        six digits), so part of a longer or blurred symbol, or a run of print, parses as one now
        and then; a real one decodes on many lines, in several variants or by zxing-cpp too.
        """
        return (
            self.symbology in _SHORT_SYMBOLS
            and self.engines == {engines.ZBAR}
            and self.variants < 2
            and self.best_lines < UNCHECKED_MIN_LINES
        )

    @property
    def sure(self) -> bool:
        """Accepted, and a QR code or a read too well supported to be a misread."""
        if not self.accepted:
            return False
        return (
            self.symbology == symbols.QRCODE
            or self.best_lines >= STRONG_LINES
            or self.both_engines
        )

    @property
    def conclusive(self) -> bool:
        """Sure, and something a card number can be: only such a read ends the search (a
        shop's QR code beside a card number that did not read yet is reported, not an end)."""
        return self.sure and self.card_like

    @property
    def print_checkable(self) -> bool:
        """A conclusive 1-D read of digits whose print under the bars is still to be read."""
        return (
            self.conclusive
            and not self.print_checked
            and self.where is not None
            and self.symbology != symbols.QRCODE
            and self.text.isascii()
            and self.text.isdigit()
        )

    @property
    def unconfirmed(self) -> bool:
        """Accepted on one engine's word, from aggressive variants only, on few scan lines."""
        return self.accepted and not self.sure and not self.gentle

    @property
    def family(self) -> str:
        return _FAMILY.get(self.symbology, self.symbology)


# zxing-cpp decodes what zbar flattens: ECI/Shift-JIS/GB 2312 QR text, full-ASCII Code 39,
# Code 128 FNC4 (Latin-1) characters. Where both read one symbol differently, zxing-cpp wins.
_SHORT_SYMBOLS: Final = frozenset({symbols.EAN8, symbols.UPCE})
_ZXING_SPELLS_BETTER: Final = frozenset({symbols.QRCODE, symbols.CODE39, symbols.CODE128})


CardNumberTest = Callable[[str], bool]


def _anything(text: str) -> bool:
    return True


class _Collector:
    """Accumulates decodes across variants and engines and applies the trust rule."""

    def __init__(self, is_card_number: CardNumberTest = _anything) -> None:
        self._seen: dict[tuple[str, str], _Evidence] = {}
        self._is_card_number = is_card_number
        # Digits printed under bars that they contradicted: the card's number, most likely.
        self.printed: list[str] = []

    def add(
        self,
        image: Image.Image,
        variant: str,
        aggressive: bool,
        crop: bool = False,
        zbar: bool = True,
    ) -> None:
        by_zxing = engines.zxing(image)
        by_zbar = engines.zbar(image) if zbar else []
        for found in [*by_zxing, *by_zbar]:
            if not symbols.plausible(found.symbology, found.text):
                continue
            if found.engine == engines.ZBAR and (
                _respelled(found, by_zxing) or self._spelled_otherwise_by_zxing(found)
            ):
                continue
            if found.engine == engines.ZXING:
                self._drop_zbar_spellings_of(found)
            key = (found.symbology, found.text)
            evidence = self._seen.get(key)
            if evidence is None:
                evidence = _Evidence(found.symbology, found.text, order=len(self._seen))
                evidence.card_like = self._is_card_number(found.text)
                self._seen[key] = evidence
            if evidence.where is None or (evidence.where_is_crop and not crop):
                evidence.where = (image, found.box, found.quarter)
                evidence.where_is_crop = crop
            evidence.engines.add(found.engine)
            evidence.lines += found.lines
            evidence.best_lines = max(evidence.best_lines, found.lines)
            if variant not in evidence.seen_in:
                evidence.seen_in.append(variant)
            if not aggressive:
                evidence.gentle = True
                evidence.zxing_gentle |= found.engine == engines.ZXING

    def _spelled_otherwise_by_zxing(self, found: engines.Decode) -> bool:
        """Whether zxing-cpp, in any variant so far, read this symbol with another spelling.

        Different variants put one symbol at different places, so boxes cannot be compared;
        the same symbology and length is the sign (FNC4 characters come out one for one).
        """
        if found.symbology not in _ZXING_SPELLS_BETTER:
            return False
        return any(
            engines.ZXING in e.engines and _same_symbol_spelled_otherwise(e, found)
            for e in self._seen.values()
        )

    def _drop_zbar_spellings_of(self, found: engines.Decode) -> None:
        if found.symbology not in _ZXING_SPELLS_BETTER:
            return
        for key, evidence in list(self._seen.items()):
            if evidence.engines == {engines.ZBAR} and _same_symbol_spelled_otherwise(
                evidence, found
            ):
                del self._seen[key]

    @property
    def conclusive(self) -> bool:
        return any(e.conclusive for e in self._seen.values())

    def print_checkable(self) -> list[_Evidence]:
        """Conclusive 1-D reads whose print under the bars nobody has read yet."""
        return [e for e in self._seen.values() if e.print_checkable]

    def accepted(self) -> list[_Evidence]:
        """Accepted reads, best first, without partial scans of a better-listed barcode."""
        ranked = sorted(
            (e for e in self._seen.values() if e.accepted),
            key=lambda e: (
                not e.conclusive,
                not e.sure,
                not e.self_checking,
                # A partial scan of an EAN-13/UPC-A can parse as the shorter EAN-8/UPC-E; the
                # reverse cannot happen, so among unsure reads the long symbol is the barcode.
                e.symbology in _SHORT_SYMBOLS,
                -len(e.engines),
                -e.lines,
                e.order,
            ),
        )
        # ITF has no start/stop asymmetry worth the name: a scan that misses a few bars decodes
        # a shorter run of the same digits. The longer read is the barcode.
        itf = [e.text for e in ranked if e.symbology == symbols.I25]
        kept: list[_Evidence] = []
        for evidence in ranked:
            if evidence.symbology == symbols.I25 and any(
                evidence.text != longer and evidence.text in longer for longer in itf
            ):
                continue
            if not evidence.sure and any(k.family == evidence.family for k in kept):
                continue
            kept.append(evidence)
        return kept

    def rejected_unchecked(self) -> list[_Evidence]:
        """Code 39 / ITF reads held back for want of confirmation (printed digits may give it)."""
        return [e for e in self._seen.values() if not e.accepted]


def _same_symbol_spelled_otherwise(evidence: _Evidence, found: engines.Decode) -> bool:
    """One symbol, two spellings: zbar flattens the non-ASCII characters zxing-cpp decodes.

    Two plain-ASCII texts are never merged, so two different numeric barcodes in one photo
    always stay two reads.
    """
    zxing_text, zbar_text = (
        (found.text, evidence.text)
        if found.engine == engines.ZXING
        else (evidence.text, found.text)
    )
    return (
        evidence.symbology == found.symbology
        and zxing_text != zbar_text
        and len(zxing_text) == len(zbar_text)
        and not zxing_text.isascii()
    )


def _respelled(found: engines.Decode, by_zxing: list[engines.Decode]) -> bool:
    if found.symbology not in _ZXING_SPELLS_BETTER:
        return False
    return any(
        other.symbology == found.symbology and other.text != found.text and other.overlaps(found)
        for other in by_zxing
    )


class _Budget:
    """The time budget of one reading, with a running estimate of the cost per pixel.

    The budget counts the CPU time of the reading thread: that is what "250 ms on one core"
    means, and it keeps what a photo reads independent of how busy the machine is. A wall-clock
    cap still bounds the wait on an overloaded machine.
    """

    def __init__(
        self,
        budget_ms: float,
        wall_cap_ms: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._start = clock()
        self._wall_start = wall_clock()
        self._budget_ms = budget_ms
        self._wall_cap_ms = wall_cap_ms
        # Crops (small, sharpened, deconvolved) cost more per pixel than whole-photo variants;
        # one rate for both would price the cascade out after a costly crop.
        self._ms_per_pixel: dict[bool, float] = {}
        self.reserve_ms = HINTS_RESERVE_MS  # kept free for the stages after this one

    def elapsed_ms(self) -> float:
        """Wall-clock milliseconds since the reading began (what the user waits)."""
        return (self._wall_clock() - self._wall_start) * 1000

    def remaining_ms(self) -> float:
        """Milliseconds left for the current stage."""
        cpu_left = self._budget_ms - self._cpu_spent_ms()
        wall_left = self._wall_cap_ms - self.elapsed_ms()
        return min(cpu_left, wall_left) - self.reserve_ms

    def spent(self) -> bool:
        return self.remaining_ms() <= 0

    def within(self, cap_ms: float, released_ms: float = 0.0) -> Callable[[], float]:
        """A deadline for one step: at most ``cap_ms`` from now, and never past the reading's
        own, of which ``released_ms`` held back for later stages is given to this step."""
        cap_end = self._cpu_spent_ms() + cap_ms

        def remaining() -> float:
            left = self.remaining_ms() + released_ms - HINTS_RESERVE_MS
            return min(left, cap_end - self._cpu_spent_ms())

        return remaining

    def _cpu_spent_ms(self) -> float:
        return (self._clock() - self._start) * 1000

    def affords(self, variant: Variant, pixels: float) -> bool:
        """Whether building and decoding this many pixels is predicted to fit the budget."""
        if variant.fixed_ms is not None:
            return variant.fixed_ms <= self.remaining_ms()
        rate = self._ms_per_pixel.get(variant.is_crop, self._ms_per_pixel.get(False, 0.0))
        return rate * COST_MARGIN * pixels <= self.remaining_ms()

    def run(self, collector: _Collector, variant: Variant, source: Image.Image) -> None:
        """Build a variant and decode it, learning what a pixel costs."""
        began, wall_began = self._clock(), self._wall_clock()
        image = variant.transform(source)
        collector.add(image, variant.name, variant.aggressive, variant.is_crop)
        # On a busy machine a step takes longer in wall-clock time than in CPU time; pricing
        # by the slower of the two keeps the last step from overrunning the wall cap.
        if variant.fixed_ms is not None:
            return
        spent = max(self._clock() - began, self._wall_clock() - wall_began)
        rate = spent * 1000 / _pixels(image)
        kind = variant.is_crop
        self._ms_per_pixel[kind] = max(self._ms_per_pixel.get(kind, 0.0), rate)


_PLAIN: Final = Variant("plain", False, "work", _same)

_AUTO: Final = "auto"


class PyzbarCardReader:
    """Reads card barcodes with pyzbar (zxing-cpp second) behind a preprocessing cascade, and
    printed card numbers by OCR when installed (the ``CardReader`` port)."""

    def __init__(
        self,
        *,
        budget_ms: float = DEFAULT_BUDGET_MS,
        wall_cap_ms: float | None = None,
        max_bytes: int = MAX_IMAGE_BYTES,
        crops: tuple[Variant, ...] = CROPS,
        cascade: tuple[Variant, ...] = CASCADE,
        ocr: DigitReader | Literal["auto"] | None = _AUTO,
        clock: Callable[[], float] = time.thread_time,
        wall_clock: Callable[[], float] = time.perf_counter,
        is_card_number: CardNumberTest | None = None,
    ) -> None:
        """``is_card_number`` is the caller's test of a decoded text (the card catalog's, in the
        bot): only a read that passes it ends the search; others are reported all the same.
        Without it, any sure read is taken for the card's number."""
        self.budget_ms = budget_ms
        # A larger CPU budget (tests, `cardbot scan`) carries its wall cap along.
        self.wall_cap_ms = (
            wall_cap_ms
            if wall_cap_ms is not None
            else max(DEFAULT_WALL_CAP_MS, budget_ms * DEFAULT_WALL_CAP_MS / DEFAULT_BUDGET_MS)
        )
        self.max_bytes = max_bytes
        self.crops = crops
        self.cascade = cascade
        self.ocr: DigitReader | None = load_ocr() if ocr == _AUTO else ocr
        self._clock = clock
        self._wall_clock = wall_clock
        self.is_card_number: CardNumberTest = is_card_number or _anything

    def warm_up_in_background(self) -> threading.Thread | None:
        """Load the OCR models on a background thread now, so the first photo does not wait ~1 s
        for them; returns the thread (None without OCR). Failures are logged, never raised."""
        ocr = self.ocr
        if ocr is None:
            return None

        def warm() -> None:
            try:
                ocr.warm_up()
            except Exception:
                log.exception("warming the OCR models up failed; they load on first use")

        # Not a daemon: a process that ends while the models load waits for them (about a
        # second) — killing onnxruntime mid-initialisation aborts the whole process.
        thread = threading.Thread(target=warm, name="cardbot-ocr-warm-up", daemon=False)
        thread.start()
        return thread

    async def read(self, image: bytes) -> CardReading:
        """Read barcodes from image bytes off the event loop; never raises on bad images."""
        return await asyncio.to_thread(self.read_sync, image)

    def read_sync(self, image: bytes) -> CardReading:
        """Read barcodes from image bytes in the calling thread; never raises on bad images."""
        budget = _Budget(self.budget_ms, self.wall_cap_ms, self._clock, self._wall_clock)
        try:
            return replace(self._read(image, budget), ms=budget.elapsed_ms())
        except Exception:
            # A bug must cost one reading, not the conversation: the user is asked to type.
            log.exception("reading an image of %d bytes failed", len(image))
            return CardReading(ms=budget.elapsed_ms())

    def _read(self, image: bytes, budget: _Budget) -> CardReading:
        if len(image) > self.max_bytes:
            return CardReading(hints=(TOO_LARGE,))
        if not image:
            return CardReading(hints=(NOT_AN_IMAGE,))
        try:
            photo = imaging.load_photo(image, FULL_SIDE)
        except imaging.ImageTooLarge as exc:
            log.info("image too large: %s", exc)
            return CardReading(hints=(TOO_LARGE,))
        except imaging.AnimatedImage as exc:
            log.info("animated image: %s", exc)
            return CardReading(hints=(ANIMATED,))
        except imaging.NotAnImage as exc:
            log.info("not an image: %s", exc)
            return CardReading(hints=(NOT_AN_IMAGE,))

        collector = _Collector(self.is_card_number)
        # The plain pass always runs, whatever the budget: it is the cheap path most photos take,
        # and it calibrates the cost estimate for the cascade.
        work = imaging.fit(photo.gray, FIRST_PASS_SIDE)
        budget.run(collector, _PLAIN, work)
        # The measures are taken at a fixed size below the plain pass view: start from that.
        measures = measure(work) if self.ocr is not None or not collector.conclusive else None
        text_legible = measures is not None and legible(measures, photo.original_size)
        ocr = self.ocr if text_legible else None
        if _settled(collector, ocr, budget):
            return _reading(collector.accepted())
        decoded = photo.decoded
        if (
            decoded is not None
            and max(decoded.size) > max(work.size)
            and _pixels(decoded) <= FULL_RESOLUTION_MAX_PIXELS
            and budget.remaining_ms() >= FULL_RESOLUTION_MS
        ):
            collector.add(decoded, "full_resolution", aggressive=False, zbar=False)
            if _settled(collector, ocr, budget):
                return _reading(collector.accepted())
        if measures is None:
            measures = measure(work)

        layout = Layout((), 0.0)
        if not budget.spent():
            layout = locate(work)
            # No busy block anywhere (a wall, a sleeve, a blank page): nothing barcode-like to
            # search for, so every variant is skipped and the hints come at once.
            if layout.regions:
                views = _Views(photo.gray, work, layout.regions)
                self._run(self.crops, views, collector, budget, ocr)
                if ocr is not None:
                    # The crops, cheap and the likeliest to read, have had their turn; print this
                    # sharp may carry the card number, so OCR's share is kept from the cascade.
                    # (Keeping it from the crops too cost more barcode reads than OCR gained, on
                    # the shared set and on synthetic card photos alike.)
                    budget.reserve_ms = min(
                        OCR_SHARE * self.budget_ms, HINTS_RESERVE_MS + ocr.expected_ms(photo.gray)
                    )
                if not collector.conclusive:
                    self._run(self.cascade, views, collector, budget, ocr)
            budget.reserve_ms = HINTS_RESERVE_MS

        accepted = collector.accepted()
        digits: tuple[str, ...] = ()
        # Printed digits are the fallback whenever no read can be the card's number (a shop's
        # QR code alone is no answer), and the judge of reads nothing else confirmed.
        needs_ocr = not any(e.card_like for e in accepted) or any(e.unconfirmed for e in accepted)
        if ocr is not None and needs_ocr:
            found = ocr.read_digits(photo.gray, budget.remaining_ms)
            digits = found.runs
            accepted = _weigh_printed_digits(accepted, collector.rejected_unchecked(), digits)
        digits = tuple(dict.fromkeys((*collector.printed, *digits)))
        if accepted or digits:
            return _reading(accepted, digits)
        size = _barcode_size(layout, photo.gray, work)
        hints = photo_hints(measures, photo.original_size, size, layout.busy_fraction)
        return CardReading(hints=hints)

    def _run(
        self,
        variants: tuple[Variant, ...],
        views: _Views,
        collector: _Collector,
        budget: _Budget,
        ocr: DigitReader | None,
    ) -> None:
        for variant in variants:
            if budget.spent():
                return
            source = views.get(variant.view)
            if source is None or not variant.applies(source):
                continue
            # A variant predicted to overrun is skipped, not the rest: a cheaper one may fit.
            if not budget.affords(variant, _pixels(source) * variant.growth):
                continue
            budget.run(collector, variant, source)
            if _settled(collector, ocr, budget):
                return


def _settled(collector: _Collector, ocr: DigitReader | None, budget: _Budget) -> bool:
    """Whether a conclusive read ends the search, once the digits printed under its bars (when
    OCR can read them) have not contradicted it; a contradicted read is no longer trusted."""
    if ocr is not None:
        for evidence in collector.print_checkable():
            evidence.print_checked = True
            assert evidence.where is not None
            window = printed.window_under_bars(*evidence.where)
            if window is None:
                continue
            # This is the OCR the stages after the cascade were holding time back for; one line
            # of print is enough (``PRINT_CHECK_MS``), the rest of the card is not its business.
            found = ocr.read_digits(window, budget.within(PRINT_CHECK_MS, budget.reserve_ms))
            if printed.contradicts(evidence.text, found.runs, evidence.family == _EAN_UPC):
                log.info("digits under the bars contradict a %s read", evidence.symbology)
                evidence.contradicted = True
                collector.printed.extend(found.runs)
    return collector.conclusive


def _barcode_size(
    layout: Layout, full: Image.Image, work: Image.Image
) -> tuple[float, float] | None:
    """(Length, height) of the longest bar-like region, in the full view's pixels."""
    bars = [region for region in layout.regions if region.bar_like]
    if not bars:
        return None
    longest = max(bars, key=lambda region: region.length)
    factor = full.width / work.width
    return longest.length * factor, longest.height * factor


def _reading(accepted: list[_Evidence], digits: tuple[str, ...] = ()) -> CardReading:
    barcodes = tuple(Barcode(symbology=e.symbology, text=e.text) for e in accepted)
    return CardReading(barcodes=barcodes, digits=digits)


def _weigh_printed_digits(
    accepted: list[_Evidence], held_back: list[_Evidence], digits: tuple[str, ...]
) -> list[_Evidence]:
    """Let the printed number confirm or overrule reads no second variant or engine confirmed.

    An unconfirmed read of digits the same length as a printed run but different from it is a
    misread (the print is what the issuer assigned); a held-back Code 39/ITF read that equals a
    printed run is confirmed by it.
    """
    if not digits:
        return accepted
    printed = set(digits)
    lengths = {len(run) for run in digits}
    kept = [
        e
        for e in accepted
        if not (e.unconfirmed and e.text.isdigit() and len(e.text) in lengths) or e.text in printed
    ]
    kept.extend(e for e in held_back if e.text in printed)
    return kept


def _pixels(image: Image.Image) -> int:
    width, height = image.size
    return max(1, width * height)
