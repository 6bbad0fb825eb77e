"""The digits printed under a 1-D barcode's bars, as a check on what the bars were read as.

A card prints its number under the bars. Two engines agreeing on the bars proves the bars were
read as printed, not that they carry the number the card shows: a relabelled card, a sticker
over the bars, or a second barcode printed under the first's number all read cleanly. When the
digits printed right under the bars are legible and say something else, the read is not the
card's number (``contradicts``).

OCR is imperfect where the bars are not: the commonest slip is one digit, and a digit cut off
at the edge of the window. Both check digits a card barcode carries (Code 128's mod 103,
EAN/UPC's mod 10) catch every single substitution, so a read that differs from the print in one
digit is the OCR's slip, not the barcode's; and a print that is part of the read (or the read
part of the print: a label, a check character) agrees with it. EAN/UPC print its digits between
guard bars that run down through the line of print, and OCR reads their tails as ones: for those
symbologies a one is no evidence either way (on the shared photo set, seven true EAN-13 reads
were otherwise "contradicted" by prints such as 9178158517305 75).
"""

from __future__ import annotations

from typing import Final

from PIL import Image

from vision.engines import Box

# The window below the bars, as fractions of the bars' length: print starts just under them
# (EAN/UPC digits even overlap the guard bars' tails) and is at most a fifth of their length
# tall; a little to each side, for an EAN-13's first digit and an UPC-A's outer ones.
ABOVE: Final = 0.04
BELOW: Final = 0.3
SIDE: Final = 0.1
# A window cut short by the picture's edge must still hold a line of print this tall.
MIN_BELOW: Final = 0.12
MIN_LENGTH_PX: Final = 60  # fewer pixels across the bars: print under them is not legible
# Differences allowed before the print contradicts the read (see the module docstring).
MAX_SLIPS: Final = 1
# A run much shorter than the read is not its print: a date, a PIN, a run OCR cut short.
MIN_SHARE: Final = 0.75

_UPRIGHT: Final = {
    1: Image.Transpose.ROTATE_90,
    2: Image.Transpose.ROTATE_180,
    3: Image.Transpose.ROTATE_270,
}


def window_under_bars(picture: Image.Image, box: Box, quarter: int) -> Image.Image | None:
    """The part of ``picture`` where the digits under a barcode's bars are printed, upright.

    ``box`` is where the bars were decoded, ``quarter`` the symbol's clockwise quarter turns;
    None when the bars are too small for legible print or the picture ends right under them.
    """
    upright = picture.transpose(_UPRIGHT[quarter % 4]) if quarter % 4 else picture
    left, _, right, bottom = _turned(box, picture.size, quarter % 4)
    length = right - left
    if length < MIN_LENGTH_PX:
        return None
    window = (
        max(0, round(left - SIDE * length)),
        max(0, round(bottom - ABOVE * length)),
        min(upright.width, round(right + SIDE * length)),
        min(upright.height, round(bottom + BELOW * length)),
    )
    if window[3] - bottom < MIN_BELOW * length:
        return None
    return upright.crop(window)


def _turned(box: Box, size: tuple[int, int], quarter: int) -> Box:
    """The box in the picture turned ``quarter`` counter-clockwise quarter turns (upright)."""
    width, height = size
    left, top, right, bottom = box
    if quarter == 1:  # ROTATE_90 (counter-clockwise): (x, y) -> (y, width - x)
        return top, width - right, bottom, width - left
    if quarter == 2:
        return width - right, height - bottom, width - left, height - top
    if quarter == 3:  # ROTATE_270 (clockwise): (x, y) -> (height - y, x)
        return height - bottom, left, height - top, right
    return box


def contradicts(text: str, printed: tuple[str, ...], guard_bars: bool = False) -> bool:
    """Whether legible printed digit runs say something other than a read's text.

    No run read is no evidence, nor is a run much shorter than the read; any run that agrees
    (up to ``MAX_SLIPS`` digits, or one being part of the other) confirms it. ``guard_bars``:
    the symbol's guard bars cross its print (EAN/UPC), so ones are left out of the comparison.
    """
    if guard_bars:
        text = text.replace("1", "")
        printed = tuple(run.replace("1", "") for run in printed)
    runs = [run for run in printed if len(run) >= MIN_SHARE * len(text)]
    return bool(runs) and not any(_agrees(text, run) for run in runs)


def _agrees(text: str, run: str) -> bool:
    return run in text or text in run or _distance(text, run) <= MAX_SLIPS


def _distance(a: str, b: str) -> int:
    """Levenshtein distance: substitutions, and digits OCR dropped or doubled."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
