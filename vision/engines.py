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

import zxingcpp
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

    def overlaps(self, other: Decode) -> bool:
        """Whether the two decodes' boxes intersect (the same printed symbol, most likely)."""
        left, top, right, bottom = self.box
        o_left, o_top, o_right, o_bottom = other.box
        return left <= o_right and o_left <= right and top <= o_bottom and o_top <= bottom


def zbar(image: Image.Image) -> list[Decode]:
    """What zbar reads in a grayscale picture, restricted to card symbologies."""
    found: list[Decode] = []
    for result in zbar_decode_raw(image, symbols=symbols.CARD_SYMBOLS):
        symbology, text = symbols.normalise(result.type, symbols.decode_payload(result.data))
        xs = [point.x for point in result.polygon] or [result.rect.left]
        ys = [point.y for point in result.polygon] or [result.rect.top]
        box = (float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys)))
        found.append(Decode(ZBAR, symbology, text, max(1, int(result.quality)), box))
    return found


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
        found.append(Decode(ZXING, symbology, text, 0, (min(xs), min(ys), max(xs), max(ys))))
    return found
