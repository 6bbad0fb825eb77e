"""``PyzbarCardReader``: image bytes → ``CardReading`` with pyzbar behind a staged cascade.

Pipeline: decode the bytes (EXIF-upright, grayscale, long side ≤ 1600 px) → pyzbar on the plain
picture (the cheap path: most photos end here) → a cascade of variants, most useful first, until
one gives a conclusive read or the time budget is spent → photo-quality hints if nothing was read.

Trust rule (what keeps misreads out):

1. Every decode must be plausible for its symbology (``vision.symbols.plausible``): EAN/UPC
   check digits re-verified, ITF of even length ≥ 6, Code 39 alphabet, printable text.
2. A read is *accepted* when its symbology carries a mandatory check (EAN/UPC, Code 128, QR),
   whichever variant produced it. Code 39 and ITF have none, so a read of theirs is accepted
   only from a gentle variant (plain, rescaled, equalised, negative) or when a second variant
   confirms it, and in both cases only if one variant decoded it on at least
   ``UNCHECKED_MIN_LINES`` scan lines: stray text and partial ITF scans parse on one to four
   lines, real bars on dozens.
3. A read is *conclusive* (the cascade stops) when it is accepted and is a QR code or was
   decoded on at least ``STRONG_LINES`` scan lines of one variant. Blurred EAN photos do yield
   check-digit-valid misreads, but only on a few lines; those do not stop the search for better.
4. The result lists accepted reads: conclusive first, then self-checking, then by scan-line
   support. A read that is not conclusive is dropped when a better read of the same family
   (EAN/UPC are one family) is listed: it is almost always a partial or misread scan of that
   same barcode.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from PIL import Image
from pyzbar.pyzbar import decode

from core.ports import Barcode, CardReading
from vision import imaging, symbols
from vision.quality import photo_hints

log = logging.getLogger(__name__)

NOT_AN_IMAGE: Final = "not_an_image"
TOO_LARGE: Final = "too_large"

DEFAULT_BUDGET_MS: Final = 250.0
MAX_IMAGE_BYTES: Final = 20 * 1024 * 1024
FIRST_PASS_SIDE: Final = 1600  # enough for a card barcode filling a fifth of a phone photo
CASCADE_SIDE: Final = 1024  # filters run smaller: each variant then costs ~25 ms, not ~80
TILT_SIDE: Final = 800  # rotating grows the canvas up to 2x; keep each tilt pass cheap
UPSCALE_MAX_SIDE: Final = 480  # doubling only helps pictures whose bars are a pixel or two wide
HALF_MIN_SIDE: Final = 120  # halving anything smaller leaves bars under a pixel wide
STRONG_LINES: Final = 10
UNCHECKED_MIN_LINES: Final = 5
# zbar's cost per pixel varies with content (filtered and rotated pictures have more edges);
# predictions use the worst rate seen so far times this margin.
COST_MARGIN: Final = 1.25
HINTS_RESERVE_MS: Final = 10.0  # the photo-quality measures run after the cascade

_FAMILY: Final = {
    symbols.EAN13: "EAN/UPC",
    symbols.EAN8: "EAN/UPC",
    symbols.UPCA: "EAN/UPC",
    symbols.UPCE: "EAN/UPC",
}


View = Literal["work", "cascade", "tilt"]


@dataclass(frozen=True)
class _Views:
    """The same photo at the sizes the cascade works on."""

    work: Image.Image
    cascade: Image.Image
    tilt: Image.Image

    def get(self, view: View) -> Image.Image:
        return {"work": self.work, "cascade": self.cascade, "tilt": self.tilt}[view]


def _always(image: Image.Image) -> bool:
    return True


@dataclass(frozen=True)
class Variant:
    """One cascade step: a transform of one view of the photo, gentle or aggressive."""

    name: str
    aggressive: bool  # see the trust rule: binarising, rotating, hard sharpening can fake bars
    view: View
    transform: Callable[[Image.Image], Image.Image]
    growth: float = 1.0  # output pixels per input pixel, at most: the cost estimate uses it
    applies: Callable[[Image.Image], bool] = _always


def _halve(image: Image.Image) -> Image.Image:
    return imaging.scale(image, 0.5)


def _double(image: Image.Image) -> Image.Image:
    return imaging.scale(image, 2.0)


def _big_enough_to_halve(image: Image.Image) -> bool:
    return min(image.size) >= HALF_MIN_SIDE


def _small_enough_to_double(image: Image.Image) -> bool:
    return max(image.size) <= UPSCALE_MAX_SIDE


def _tilt(degrees: int) -> Variant:
    # An expanded canvas holds at most (|cos|+|sin|)² = 1 + |sin 2θ| times the pixels.
    growth = 1 + abs(math.sin(math.radians(2 * degrees)))
    turn = functools.partial(imaging.rotate, degrees=degrees)
    return Variant(f"tilt{degrees:+d}", True, "tilt", turn, growth=growth)


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
    Variant("half", False, "work", _halve, growth=0.25, applies=_big_enough_to_halve),
    Variant("double", False, "work", _double, growth=4.0, applies=_small_enough_to_double),
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
)


@dataclass
class _Evidence:
    """Everything the cascade saw of one (symbology, text)."""

    symbology: str
    text: str
    order: int
    lines: int = 0  # scan lines that decoded it, summed over variants
    best_lines: int = 0  # scan lines in the single best variant
    gentle: bool = False
    seen_in: list[str] = field(default_factory=list)  # variant names, in cascade order

    @property
    def variants(self) -> int:
        return len(self.seen_in)

    @property
    def self_checking(self) -> bool:
        return self.symbology in symbols.SELF_CHECKING

    @property
    def accepted(self) -> bool:
        if self.self_checking:
            return True
        confirmed = self.gentle or self.variants >= 2
        return confirmed and self.best_lines >= UNCHECKED_MIN_LINES

    @property
    def conclusive(self) -> bool:
        if not self.accepted:
            return False
        return self.symbology == symbols.QRCODE or self.best_lines >= STRONG_LINES

    @property
    def family(self) -> str:
        return _FAMILY.get(self.symbology, self.symbology)


class _Collector:
    """Accumulates decodes across variants and applies the trust rule."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], _Evidence] = {}

    def add(self, image: Image.Image, variant: str, aggressive: bool) -> None:
        for found in decode(image, symbols=symbols.CARD_SYMBOLS):
            symbology, text = symbols.normalise(found.type, symbols.decode_payload(found.data))
            if not symbols.plausible(symbology, text):
                continue
            key = (symbology, text)
            evidence = self._seen.get(key)
            if evidence is None:
                evidence = _Evidence(symbology, text, order=len(self._seen))
                self._seen[key] = evidence
            # zbar's quality is the number of scan lines that agreed (always 1 for QR).
            lines = max(1, int(found.quality))
            evidence.lines += lines
            evidence.best_lines = max(evidence.best_lines, lines)
            if variant not in evidence.seen_in:
                evidence.seen_in.append(variant)
            evidence.gentle = evidence.gentle or not aggressive

    @property
    def conclusive(self) -> bool:
        return any(e.conclusive for e in self._seen.values())

    def barcodes(self) -> tuple[Barcode, ...]:
        ranked = sorted(
            (e for e in self._seen.values() if e.accepted),
            key=lambda e: (not e.conclusive, not e.self_checking, -e.lines, e.order),
        )
        kept: list[_Evidence] = []
        for evidence in ranked:
            if not evidence.conclusive and any(k.family == evidence.family for k in kept):
                continue
            kept.append(evidence)
        return tuple(Barcode(symbology=e.symbology, text=e.text) for e in kept)


class _Budget:
    """Wall-clock budget of one reading, with a running estimate of the cost per pixel."""

    def __init__(self, budget_ms: float, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._start = clock()
        self._budget_ms = budget_ms
        self._ms_per_pixel = 0.0

    def elapsed_ms(self) -> float:
        return (self._clock() - self._start) * 1000

    def spent(self) -> bool:
        return self.elapsed_ms() >= self._budget_ms - HINTS_RESERVE_MS

    def affords(self, pixels: float) -> bool:
        """Whether building and decoding this many pixels is predicted to fit the budget."""
        predicted = self._ms_per_pixel * COST_MARGIN * pixels
        return self.elapsed_ms() + predicted <= self._budget_ms - HINTS_RESERVE_MS

    def run(self, collector: _Collector, variant: Variant, source: Image.Image) -> None:
        """Build a variant and decode it, learning what a pixel costs."""
        began = self._clock()
        image = variant.transform(source)
        collector.add(image, variant.name, variant.aggressive)
        rate = (self._clock() - began) * 1000 / _pixels(image)
        self._ms_per_pixel = max(self._ms_per_pixel, rate)


_PLAIN: Final = Variant("plain", False, "work", lambda image: image)


class PyzbarCardReader:
    """Reads card barcodes with pyzbar behind a preprocessing cascade (the ``CardReader`` port)."""

    def __init__(
        self,
        *,
        budget_ms: float = DEFAULT_BUDGET_MS,
        max_bytes: int = MAX_IMAGE_BYTES,
        cascade: tuple[Variant, ...] = CASCADE,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.budget_ms = budget_ms
        self.max_bytes = max_bytes
        self.cascade = cascade
        self._clock = clock

    async def read(self, image: bytes) -> CardReading:
        """Read barcodes from image bytes off the event loop; never raises on bad images."""
        return await asyncio.to_thread(self.read_sync, image)

    def read_sync(self, image: bytes) -> CardReading:
        """Read barcodes from image bytes in the calling thread; never raises on bad images."""
        budget = _Budget(self.budget_ms, self._clock)
        try:
            barcodes, hints = self._read(image, budget)
        except Exception:
            # A bug must cost one reading, not the conversation: the user is asked to type.
            log.exception("reading an image of %d bytes failed", len(image))
            barcodes, hints = (), ()
        return CardReading(barcodes=barcodes, hints=hints, ms=budget.elapsed_ms())

    def _read(self, image: bytes, budget: _Budget) -> tuple[tuple[Barcode, ...], tuple[str, ...]]:
        if len(image) > self.max_bytes:
            return (), (TOO_LARGE,)
        if not image:
            return (), (NOT_AN_IMAGE,)
        try:
            photo = imaging.load_photo(image, FIRST_PASS_SIDE)
        except imaging.NotAnImage as exc:
            log.info("not an image: %s", exc)
            return (), (NOT_AN_IMAGE,)

        collector = _Collector()
        # The plain pass always runs, whatever the budget: it is the cheap path most photos take,
        # and it calibrates the cost estimate for the cascade.
        budget.run(collector, _PLAIN, photo.gray)
        if not collector.conclusive:
            self._run_cascade(photo.gray, collector, budget)

        barcodes = collector.barcodes()
        if barcodes:
            return barcodes, ()
        return (), photo_hints(photo.gray, photo.original_size)

    def _run_cascade(self, work: Image.Image, collector: _Collector, budget: _Budget) -> None:
        cascade_view = imaging.fit(work, CASCADE_SIDE)
        views = _Views(work=work, cascade=cascade_view, tilt=imaging.fit(cascade_view, TILT_SIDE))
        for variant in self.cascade:
            if budget.spent():
                return
            source = views.get(variant.view)
            if not variant.applies(source):
                continue
            # A variant predicted to overrun is skipped, not the rest: a cheaper one may fit.
            if not budget.affords(_pixels(source) * variant.growth):
                continue
            budget.run(collector, variant, source)
            if collector.conclusive:
                return


def _pixels(image: Image.Image) -> int:
    width, height = image.size
    return max(1, width * height)
