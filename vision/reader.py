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
from dataclasses import dataclass, field, replace
from typing import Final, Literal

from PIL import Image

from core.ports import Barcode, CardReading
from vision import engines, imaging, symbols
from vision.ocr import DigitReader, load_ocr
from vision.quality import photo_hints

log = logging.getLogger(__name__)

NOT_AN_IMAGE: Final = "not_an_image"
TOO_LARGE: Final = "too_large"
ANIMATED: Final = "animated"

# CPU time of the barcode search (decode, cascade, hints) on one core; p95 lands at about this
# figure, since a photo nothing can be read from spends all of it. The goal is 250 ms.
DEFAULT_BUDGET_MS: Final = 230.0
# OCR's own allowance, spent only when the barcodes gave no trustworthy read: text detection on a
# 640-px copy plus recognising two or three number lines. Taking it out of the barcode budget
# instead cost 13 of 590 barcode reads on the shared set.
DEFAULT_OCR_BUDGET_MS: Final = 200.0
WALL_CAP_FACTOR: Final = 3.0
MAX_IMAGE_BYTES: Final = 20 * 1024 * 1024
FULL_SIDE: Final = 1600  # enough for a card barcode filling a fifth of a phone photo
FIRST_PASS_SIDE: Final = 1024  # a card barcode filling half the frame; zbar costs per pixel
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


View = Literal["full", "work", "cascade", "tilt"]


@dataclass(frozen=True)
class _Views:
    """The same photo at the sizes the cascade works on."""

    full: Image.Image
    work: Image.Image
    cascade: Image.Image
    tilt: Image.Image

    def get(self, view: View) -> Image.Image:
        views = {"full": self.full, "work": self.work, "cascade": self.cascade, "tilt": self.tilt}
        return views[view]


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


def _larger_than_work(image: Image.Image) -> bool:
    return max(image.size) > FIRST_PASS_SIDE


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
        if self.self_checking or self.both_engines:
            return True
        # zxing-cpp itself demands agreeing scan lines and quiet zones for Code 39 and ITF.
        if self.zxing_gentle:
            return True
        confirmed = self.gentle or self.variants >= 2
        return confirmed and self.best_lines >= UNCHECKED_MIN_LINES

    @property
    def conclusive(self) -> bool:
        if not self.accepted:
            return False
        return (
            self.symbology == symbols.QRCODE
            or self.best_lines >= STRONG_LINES
            or self.both_engines
        )

    @property
    def unconfirmed(self) -> bool:
        """Accepted on one engine's word, from aggressive variants only, on few scan lines."""
        return self.accepted and not self.conclusive and not self.gentle

    @property
    def family(self) -> str:
        return _FAMILY.get(self.symbology, self.symbology)


# zxing-cpp decodes what zbar flattens: ECI/Shift-JIS/GB 2312 QR text, full-ASCII Code 39,
# Code 128 FNC4 (Latin-1) characters. Where both read one symbol differently, zxing-cpp wins.
_ZXING_SPELLS_BETTER: Final = frozenset({symbols.QRCODE, symbols.CODE39, symbols.CODE128})


class _Collector:
    """Accumulates decodes across variants and engines and applies the trust rule."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], _Evidence] = {}

    def add(self, image: Image.Image, variant: str, aggressive: bool) -> None:
        by_zbar = engines.zbar(image)
        by_zxing = engines.zxing(image)
        for found in [*by_zbar, *by_zxing]:
            if not symbols.plausible(found.symbology, found.text):
                continue
            if found.engine == engines.ZBAR and _respelled(found, by_zxing):
                continue
            key = (found.symbology, found.text)
            evidence = self._seen.get(key)
            if evidence is None:
                evidence = _Evidence(found.symbology, found.text, order=len(self._seen))
                self._seen[key] = evidence
            evidence.engines.add(found.engine)
            evidence.lines += found.lines
            evidence.best_lines = max(evidence.best_lines, found.lines)
            if variant not in evidence.seen_in:
                evidence.seen_in.append(variant)
            if not aggressive:
                evidence.gentle = True
                evidence.zxing_gentle |= found.engine == engines.ZXING

    @property
    def conclusive(self) -> bool:
        return any(e.conclusive for e in self._seen.values())

    def accepted(self) -> list[_Evidence]:
        """Accepted reads, best first, without partial scans of a better-listed barcode."""
        ranked = sorted(
            (e for e in self._seen.values() if e.accepted),
            key=lambda e: (
                not e.conclusive,
                not e.self_checking,
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
            if not evidence.conclusive and any(k.family == evidence.family for k in kept):
                continue
            kept.append(evidence)
        return kept

    def rejected_unchecked(self) -> list[_Evidence]:
        """Code 39 / ITF reads held back for want of confirmation (printed digits may give it)."""
        return [e for e in self._seen.values() if not e.accepted]


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
    cap (``WALL_CAP_FACTOR`` times the budget) still bounds the wait on an overloaded machine.
    """

    def __init__(
        self, budget_ms: float, clock: Callable[[], float], wall_clock: Callable[[], float]
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._start = clock()
        self._wall_start = wall_clock()
        self._budget_ms = budget_ms
        self._ms_per_pixel = 0.0
        self.reserve_ms = HINTS_RESERVE_MS  # kept free for the stages after this one

    def elapsed_ms(self) -> float:
        """Wall-clock milliseconds since the reading began (what the user waits)."""
        return (self._wall_clock() - self._wall_start) * 1000

    def remaining_ms(self) -> float:
        """Milliseconds left for the current stage."""
        cpu_left = self._budget_ms - (self._clock() - self._start) * 1000
        wall_left = WALL_CAP_FACTOR * self._budget_ms - self.elapsed_ms()
        return min(cpu_left, wall_left) - self.reserve_ms

    def spent(self) -> bool:
        return self.remaining_ms() <= 0

    def extend(self, ms: float) -> None:
        """Grant a later stage its own allowance on top of what is left."""
        self._budget_ms += ms

    def affords(self, pixels: float) -> bool:
        """Whether building and decoding this many pixels is predicted to fit the budget."""
        return self._ms_per_pixel * COST_MARGIN * pixels <= self.remaining_ms()

    def run(self, collector: _Collector, variant: Variant, source: Image.Image) -> None:
        """Build a variant and decode it, learning what a pixel costs."""
        began = self._clock()
        image = variant.transform(source)
        collector.add(image, variant.name, variant.aggressive)
        rate = (self._clock() - began) * 1000 / _pixels(image)
        self._ms_per_pixel = max(self._ms_per_pixel, rate)


_PLAIN: Final = Variant("plain", False, "work", lambda image: image)

_AUTO: Final = "auto"


class PyzbarCardReader:
    """Reads card barcodes with pyzbar (zxing-cpp second) behind a preprocessing cascade, and
    printed card numbers by OCR when installed (the ``CardReader`` port)."""

    def __init__(
        self,
        *,
        budget_ms: float = DEFAULT_BUDGET_MS,
        max_bytes: int = MAX_IMAGE_BYTES,
        cascade: tuple[Variant, ...] = CASCADE,
        ocr: DigitReader | Literal["auto"] | None = _AUTO,
        ocr_budget_ms: float = DEFAULT_OCR_BUDGET_MS,
        clock: Callable[[], float] = time.thread_time,
        wall_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.budget_ms = budget_ms
        self.ocr_budget_ms = ocr_budget_ms
        self.max_bytes = max_bytes
        self.cascade = cascade
        self.ocr: DigitReader | None = load_ocr() if ocr == _AUTO else ocr
        self._clock = clock
        self._wall_clock = wall_clock

    async def read(self, image: bytes) -> CardReading:
        """Read barcodes from image bytes off the event loop; never raises on bad images."""
        return await asyncio.to_thread(self.read_sync, image)

    def read_sync(self, image: bytes) -> CardReading:
        """Read barcodes from image bytes in the calling thread; never raises on bad images."""
        budget = _Budget(self.budget_ms, self._clock, self._wall_clock)
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

        collector = _Collector()
        # The plain pass always runs, whatever the budget: it is the cheap path most photos take,
        # and it calibrates the cost estimate for the cascade.
        work = imaging.fit(photo.gray, FIRST_PASS_SIDE)
        budget.run(collector, _PLAIN, work)
        if not collector.conclusive:
            self._run_cascade(photo.gray, work, collector, budget)

        accepted = collector.accepted()
        digits: tuple[str, ...] = ()
        needs_ocr = not accepted or any(e.unconfirmed for e in accepted)
        if self.ocr is not None and needs_ocr:
            budget.extend(self.ocr_budget_ms)
            found = self.ocr.read_digits(photo.gray, budget.remaining_ms)
            digits = found.runs
            accepted = _weigh_printed_digits(accepted, collector.rejected_unchecked(), digits)
        barcodes = tuple(Barcode(symbology=e.symbology, text=e.text) for e in accepted)
        if barcodes or digits:
            return CardReading(barcodes=barcodes, digits=digits)
        return CardReading(hints=photo_hints(photo.gray, photo.original_size))

    def _run_cascade(
        self, full: Image.Image, work: Image.Image, collector: _Collector, budget: _Budget
    ) -> None:
        cascade_view = imaging.fit(work, CASCADE_SIDE)
        tilt_view = imaging.fit(cascade_view, TILT_SIDE)
        views = _Views(full=full, work=work, cascade=cascade_view, tilt=tilt_view)
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
