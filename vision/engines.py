"""The two barcode engines behind one shape: pyzbar (primary) and zxing-cpp (second opinion).

Each returns ``Decode``s already normalised to the card symbologies and to one text convention
(the one ``Barcode`` promises): UPC-A as 12 digits, UPC-E as its 8 printed digits, EAN as
printed, QR as Unicode text. Nothing here judges trust; ``vision.reader`` does that.

Why two engines: on the shared photo set zbar reads more blurred and low-contrast 1D codes,
zxing-cpp reads QR codes in Shift-JIS/GB 2312 (zbar transcodes them as Latin-1), full-ASCII
Code 39, and a different set of hard photos; and two independent decoders agreeing is the
strongest evidence against a misread. zxing-cpp costs a fraction of zbar's time per picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import zxingcpp
from numpy.typing import NDArray
from PIL import Image
from pyzbar.pyzbar import decode as zbar_decode_raw

from vision import symbols

ZBAR: Final = "zbar"
ZXING: Final = "zxing"

Box = tuple[float, float, float, float]  # left, top, right, bottom in the decoded picture


@dataclass(frozen=True)
class Decode:
    """One barcode one engine found in one picture."""

    engine: str
    symbology: str
    text: str
    lines: int  # zbar: scan lines that agreed; zxing: 0 (it requires agreeing lines itself)
    box: Box
    # How far the symbol is turned in the picture, in clockwise quarter turns: 0 upright (its
    # printed text, if any, below the bars), 1 read top to bottom, 2 upside down, 3 bottom up.
    quarter: int = 0

    def overlaps(self, other: Decode) -> bool:
        """Whether the two decodes' boxes intersect (the same printed symbol, most likely)."""
        left, top, right, bottom = self.box
        o_left, o_top, o_right, o_bottom = other.box
        return left <= o_right and o_left <= right and top <= o_bottom and o_top <= bottom


def zbar(image: Image.Image) -> list[Decode]:
    """What zbar reads in a grayscale picture, restricted to card symbologies, without short
    symbols that are a partial scan of a longer one (see ``inside_longer_symbol``)."""
    found: list[Decode] = []
    pixels: NDArray[np.float32] | None = None
    for result in zbar_decode_raw(image, symbols=symbols.CARD_SYMBOLS):
        symbology, text = symbols.normalise(result.type, symbols.decode_payload(result.data))
        xs = [point.x for point in result.polygon] or [result.rect.left]
        ys = [point.y for point in result.polygon] or [result.rect.top]
        box = (float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys)))
        if symbology in _MAX_ELEMENTS:
            if pixels is None:
                pixels = np.asarray(image, dtype=np.float32)
            along_rows = str(result.orientation) in ("UP", "DOWN", "UNKNOWN", "None")
            oriented = pixels if along_rows else pixels.T
            if inside_longer_symbol(oriented, box, along_rows, symbology):
                continue
        quarter = _ZBAR_QUARTERS.get(str(result.orientation), 0)
        found.append(Decode(ZBAR, symbology, text, max(1, int(result.quality)), box, quarter))
    return found


# zbar's orientation names (``ZBAR_ORIENT_*``) as clockwise quarter turns of the symbol.
_ZBAR_QUARTERS: Final = {"UP": 0, "RIGHT": 1, "DOWN": 2, "LEFT": 3}

# Bars and spaces of the short symbols: UPC-E 3 + 6×4 + 6 = 33, EAN-8 3 + 4×4 + 5 + 4×4 + 3 =
# 43. The left half of an EAN-13 or UPC-A (guard, six digits, the middle guard) parses as a
# UPC-E whenever its parity pattern happens to give the right check digit; zbar then reports
# that UPC-E and a wrong number. The whole symbol has 59 elements: a run of bars with clearly
# more elements than the short symbol has is a longer symbol, whatever zbar made of it.
_MAX_ELEMENTS: Final = {symbols.UPCE: 33 + 8, symbols.EAN8: 43 + 8}
# A quiet zone is at least 7 modules; inside a symbol no element is wider than 4. Elements are
# 1.5–2 modules on average, so a gap of 4 mean elements ends a run of bars.
_QUIET_GAP: Final = 4.0


def inside_longer_symbol(
    pixels: NDArray[np.float32], box: Box, along_rows: bool, symbology: str
) -> bool:
    """Whether the bars a short-symbol decode came from run on into a longer symbol: counts
    the bar/space edges of the run of bars through the decode, on the rows it was read on."""
    left, top, right, bottom = box if along_rows else (box[1], box[0], box[3], box[2])
    row = round((top + bottom) / 2)
    if not 0 <= row < pixels.shape[0]:
        return False
    band = pixels[max(0, row - 1) : row + 2].mean(axis=0)
    smooth = np.convolve(band, np.array([0.25, 0.5, 0.25], dtype=np.float32), mode="same")
    slope = np.diff(smooth)
    strength = np.abs(slope)
    threshold = max(4.0, 0.2 * float(np.percentile(strength, 99)))
    # Edges: local peaks of the slope's size, above the threshold; one per bar side.
    peak = (strength[1:-1] >= strength[:-2]) & (strength[1:-1] > strength[2:])
    edges = np.nonzero(peak & (strength[1:-1] > threshold))[0] + 1
    if len(edges) < 2:
        return False
    signs = np.sign(slope[edges])
    keep = np.concatenate(([True], signs[1:] != signs[:-1]))  # bar sides alternate
    edges = edges[keep]
    gaps = np.diff(edges)
    if len(gaps) == 0:
        return False
    breaks = np.nonzero(gaps > _QUIET_GAP * float(np.median(gaps)))[0]
    centre = (left + right) / 2
    runs = np.split(edges, breaks + 1)
    for run in runs:
        if run[0] - 2 <= centre <= run[-1] + 2 or (left <= run[-1] and run[0] <= right):
            return len(run) > _MAX_ELEMENTS[symbology]
    return False


_ZXING_FORMATS: Final = zxingcpp.barcode_formats_from_str(
    "EAN13,EAN8,UPCA,UPCE,Code128,Code39,ITF,QRCode"
)


def _zxing_symbology(result: zxingcpp.Barcode) -> str | None:
    name = str(result.format)
    if name.startswith("EAN-13"):
        return symbols.EAN13
    if name.startswith("EAN-8"):
        return symbols.EAN8
    if name.startswith("UPC-A"):
        return symbols.UPCA
    if name.startswith("UPC-E"):
        return symbols.UPCE
    if name.startswith("Code 128"):
        return symbols.CODE128
    if name.startswith("Code 39"):
        return symbols.CODE39
    if name.startswith("ITF"):
        return symbols.I25
    if name.startswith("QR Code"):
        return symbols.QRCODE
    return None


def _zxing_text(symbology: str, text: str) -> tuple[str, str]:
    # zxing-cpp reports UPC-A as "0" + 12 digits and UPC-E expanded to that same 13-digit form.
    if symbology == symbols.UPCE and len(text) == 13 and text.startswith("0"):
        compact = symbols.upca_to_upce(text[1:])
        return (symbols.UPCE, compact) if compact else (symbols.UPCA, text[1:])
    if symbology == symbols.UPCA and len(text) == 13 and text.startswith("0"):
        return symbols.UPCA, text[1:]
    return symbols.normalise(symbology, text)


def zxing(image: Image.Image) -> list[Decode]:
    """What zxing-cpp reads in a grayscale picture, restricted to card symbologies."""
    found: list[Decode] = []
    # Plain text mode: the payload as Unicode (ECI and charset honoured), no "<GS>"-style escapes.
    results = zxingcpp.read_barcodes(
        image, formats=_ZXING_FORMATS, text_mode=zxingcpp.TextMode.Plain
    )
    for result in results:
        symbology = _zxing_symbology(result)
        if symbology is None or not result.valid:
            continue
        symbology, text = _zxing_text(symbology, result.text)
        position = result.position
        corners = (
            position.top_left,
            position.top_right,
            position.bottom_right,
            position.bottom_left,
        )
        xs = [float(point.x) for point in corners]
        ys = [float(point.y) for point in corners]
        box = (min(xs), min(ys), max(xs), max(ys))
        # zxing-cpp's orientation is the symbol's clockwise turn in degrees.
        quarter = round(float(result.orientation) / 90) % 4
        found.append(Decode(ZXING, symbology, text, 0, box, quarter))
    return found
