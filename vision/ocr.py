"""Printed card numbers read by OCR: the fallback when no barcode reads, and a confirmation.

The engine is RapidOCR on onnxruntime (the optional extra ``cardbot[ocr]``): its detection and
recognition models ship inside the wheel, so it runs offline, and it reads coloured, tilted
card print far better than tesseract. Without the extra, ``load_ocr()`` returns None, vision/
reads barcodes only, and ``OCR_MISSING`` says how to switch OCR on.

Cost control (one core): text is *detected* on a small copy of the photo (long side
``DETECT_SIDE``), and only the boxes shaped like a printed number are *recognised*, from the
full-size photo, largest first, while the caller's deadline allows. The models load once per
process (``load_ocr`` hands out one shared reader); the app warms them up at start on a
background thread, and a photo that arrives before they are ready is read without OCR rather
than made to wait for them.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
from PIL import Image

from vision.imaging import fit

log = logging.getLogger(__name__)

OCR_MISSING: Final = (
    "OCR of printed card numbers is off: install the optional extra with "
    "`pip install 'cardbot[ocr]'` (make setup does)."
)

DETECT_SIDE: Final = 400  # card-number print (~3 mm) is ~10 px high here on a filled frame
MIN_SCORE: Final = 0.8  # recognition confidence below this is a guess, not a reading
MIN_DIGITS: Final = 8  # shorter runs are dates, prices, phone extensions
MAX_DIGITS: Final = 24
MAX_BOXES: Final = 6
COST_MARGIN: Final = 1.25
# Number print is a long, thin line; logos and single words are squarer.
MIN_BOX_ASPECT: Final = 3.0
# Glyph confusions fixed only inside tokens that are mostly digits already.
_LOOKALIKES: Final = str.maketrans({"O": "0", "o": "0", "D": "0", "I": "1", "l": "1", "|": "1"})
_DIGIT_RUN: Final = re.compile(r"\d(?:[\d \-]*\d)?")


class DigitReader(Protocol):
    """Reads printed digit runs (card numbers) from a grayscale photo before a deadline."""

    def read_digits(self, gray: Image.Image, remaining_ms: Callable[[], float]) -> DigitReading:
        """Digit runs found, most confident first; stops when remaining_ms() runs out."""
        ...

    def expected_ms(self, gray: Image.Image) -> float:
        """Predicted milliseconds of a useful read of this photo (detection, the number line)."""
        ...

    def warm_up(self) -> None:
        """Load models and calibrate cost estimates, blocking; safe to call more than once."""
        ...


@dataclass(frozen=True)
class DigitReading:
    """Digit runs OCR found, and whether it finished or was cut short by the deadline."""

    runs: tuple[str, ...] = ()
    complete: bool = True


def digit_runs(text: str) -> list[str]:
    """Runs of 8–24 digits in one recognised line; spaces and hyphens inside a run are dropped.

    "2088 1234 5678 9012" → ["2088123456789012"]; "卡号:2088-1234" → [] (too short).
    """
    normal = unicodedata.normalize("NFKC", text)
    tokens = []
    for token in normal.split():
        digits = sum(ch.isdigit() for ch in token)
        if digits and digits >= 0.75 * len(token):
            token = token.translate(_LOOKALIKES)
        tokens.append(token)
    runs = []
    for match in _DIGIT_RUN.finditer(" ".join(tokens)):
        run = re.sub(r"[ \-]", "", match.group())
        if MIN_DIGITS <= len(run) <= MAX_DIGITS:
            runs.append(run)
    return runs


class RapidOcrDigitReader:
    """``DigitReader`` over RapidOCR (onnxruntime), one thread, models loaded on first use."""

    def __init__(self) -> None:
        self._engine: Any = None
        self._lock = threading.Lock()
        self._warming = threading.Lock()
        self._warm = threading.Event()
        self._ms_per_det_pixel = 0.0
        self._ms_per_rec_column = 0.0

    @property
    def ready(self) -> bool:
        """Whether the models are loaded and the cost estimates calibrated."""
        return self._warm.is_set()

    def warm_up(self) -> None:
        """Load the models and calibrate the cost estimates (about a second, once)."""
        with self._warming:
            if self._warm.is_set():
                return
            engine = self._load()
            # Twice each: the first inference of a session pays for its memory plans.
            for _ in range(2):
                self._ms_per_det_pixel = self._ms_per_rec_column = 0.0
                self._detect(engine, np.full((360, 480, 3), 255, dtype=np.uint8))
                self._recognise(engine, np.full((48, 320, 3), 255, dtype=np.uint8))
            self._warm.set()

    def _detect(self, engine: Any, rgb: Any) -> Any:
        began = time.thread_time()
        boxes, _ = engine.text_det(rgb)
        rate = (time.thread_time() - began) * 1000 / (rgb.shape[0] * rgb.shape[1])
        self._ms_per_det_pixel = _moving(self._ms_per_det_pixel, rate)
        return boxes

    def _recognise(self, engine: Any, crop: Any) -> tuple[str, float]:
        began = time.thread_time()
        ((text, score),), _ = engine.text_rec([crop])
        rate = (time.thread_time() - began) * 1000 / _rec_columns(crop)
        self._ms_per_rec_column = _moving(self._ms_per_rec_column, rate)
        return str(text), float(score)

    def _load(self) -> Any:
        with self._lock:
            if self._engine is None:
                from rapidocr_onnxruntime import RapidOCR

                # One intra-op thread: the bot reads photos on worker threads already, and the
                # budget is per core. "max" keeps detection at the size we hand it.
                self._engine = RapidOCR(
                    intra_op_num_threads=1,
                    inter_op_num_threads=1,
                    det_limit_type="max",
                    det_limit_side_len=DETECT_SIDE,
                )
            return self._engine

    def detect_cost_ms(self, gray: Image.Image) -> float:
        """Predicted milliseconds of text detection on this photo (0 before warm_up)."""
        small = fit(gray, DETECT_SIDE)
        return COST_MARGIN * self._ms_per_det_pixel * small.width * small.height

    def expected_ms(self, gray: Image.Image) -> float:
        """Predicted milliseconds of detection plus the number's line (0 before warm_up).

        One line: recognition stops at the first line that holds a card number, and the
        number is printed biggest, so it is almost always the first line tried.
        """
        if not self.ready:
            return 0.0
        return self.detect_cost_ms(gray) + COST_MARGIN * self._ms_per_rec_column * 320

    def read_digits(self, gray: Image.Image, remaining_ms: Callable[[], float]) -> DigitReading:
        """Digit runs found, most confident first; stops when remaining_ms() runs out.

        Before the models are warm this reads nothing (``complete=False``): loading them takes
        longer than any photo's deadline.
        """
        if not self.ready:
            return DigitReading(complete=False)
        engine = self._engine
        small = fit(gray, DETECT_SIDE)
        if self.detect_cost_ms(gray) > remaining_ms():
            return DigitReading(complete=False)
        boxes = self._detect(engine, _rgb(small))
        if boxes is None or len(boxes) == 0:
            return DigitReading()
        ratio = gray.width / small.width
        candidates = [box * ratio for box in boxes if _aspect(box) >= MIN_BOX_ASPECT]
        # Largest lines first (by area: long and tall): the card number is printed big.
        candidates.sort(key=lambda box: -_area(box))
        found: list[tuple[float, str]] = []
        complete = True
        for box in candidates[:MAX_BOXES]:
            crop = _line(engine, gray, box)
            if COST_MARGIN * self._ms_per_rec_column * _rec_columns(crop) > remaining_ms():
                complete = False
                break
            text, score = self._recognise(engine, crop)
            if score < MIN_SCORE:
                continue
            line_runs = digit_runs(text)
            found.extend((score, run) for run in line_runs)
            if line_runs:
                break  # the card number's line; recognising the fine print costs more time
        found.sort(key=lambda item: -item[0])
        runs = tuple(dict.fromkeys(run for _, run in found))
        return DigitReading(runs=runs, complete=complete)


def _moving(average: float, sample: float) -> float:
    # Leans towards the slower of the two, so one fast call does not make the next overrun.
    if average == 0.0:
        return sample
    return max(sample, 0.7 * average + 0.3 * sample)


def _rec_columns(crop: Any) -> float:
    # Recognition scales every line to 48 px high; its cost follows the resulting width.
    return max(320.0, 48 * float(crop.shape[1]) / max(1, int(crop.shape[0])))


def _line(engine: Any, gray: Image.Image, box: Any) -> Any:
    """One text line cut out upright, as RGB; only its neighbourhood is converted."""
    left, top = (max(0, int(v) - 2) for v in box.min(axis=0))
    right, bottom = (int(v) + 3 for v in box.max(axis=0))
    rgb = _rgb(gray.crop((left, top, right, bottom)))
    shifted = (box - np.array([left, top], dtype=box.dtype)).astype(np.float32)
    (crop,) = engine.get_crop_img_list(rgb, [shifted])
    return crop


def _area(box: Any) -> float:
    return float(np.linalg.norm(box[0] - box[1]) * np.linalg.norm(box[0] - box[3]))


def _aspect(box: Any) -> float:
    width = float(np.linalg.norm(box[0] - box[1]))
    height = float(np.linalg.norm(box[0] - box[3]))
    return width / max(height, 1.0)


def _rgb(gray: Image.Image) -> Any:
    pixels = np.asarray(gray.convert("L"))
    return np.ascontiguousarray(np.stack([pixels] * 3, axis=-1))


def ocr_available() -> bool:
    """Whether the OCR extra is installed."""
    return importlib.util.find_spec("rapidocr_onnxruntime") is not None


_shared: RapidOcrDigitReader | None = None
_shared_lock = threading.Lock()


def load_ocr() -> RapidOcrDigitReader | None:
    """The process's OCR digit reader (one, so its models load once), or None, with a log line
    saying how to install it, when the extra is absent."""
    global _shared
    if not ocr_available():
        log.warning(OCR_MISSING)
        return None
    with _shared_lock:
        if _shared is None:
            _shared = RapidOcrDigitReader()
        return _shared
