"""Why a photo could not be read: cheap exposure, focus and content measures (NumPy only).

The hints are codes from the ``CardReading`` contract; the conversation layer turns them into
advice ("too dark", "hold still", "move closer"). Thresholds were set on the barcode photo set in
``shared/data/barcodes``: every measure is taken at one fixed analysis size, so they do not
depend on the sender's camera resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image

from vision.imaging import fit

DARK: Final = "dark"
BRIGHT: Final = "bright"
BLURRED: Final = "blurred"
TOO_SMALL: Final = "too_small"
NO_CARD: Final = "no_card"

ANALYSIS_SIDE: Final = 640
MIN_SHORT_SIDE: Final = 200  # below this a card's bars are at most a pixel or two wide
# A barcode found in the photo but spanning fewer pixels than this (at the resolution the reader
# decodes, long side 1600) has modules under two pixels wide: the card is too far away.
MIN_BARCODE_PX: Final = 180.0
# ...and bars shorter than this: a barcode cut short by glare or a thumb keeps its full height,
# and moving closer would not help it.
MIN_BAR_HEIGHT_PX: Final = 80.0
# Print covering less than this share of the frame (the localiser's busy blocks) is a card held
# far away: a card photographed at reading distance covers 10–30 % even when unreadable.
MIN_BUSY_FRACTION: Final = 0.07
DARK_MEAN: Final = 55.0
BRIGHT_MEAN: Final = 205.0
# Glare washes the bars out: much of the frame clipped to white and no real blacks left.
GLARE_CLIPPED_FRACTION: Final = 0.25
GLARE_DARKEST: Final = 60.0
FLAT_STD: Final = 8.0  # a wall, a sleeve, a lens cap: no structure at all
# Few crisp edges in a picture with real contrast means the edges are there but smeared
# (defocus); few edges and little contrast means a plain surface: no card in frame.
LOW_CONTRAST_STD: Final = 20.0
# Laplacian spread relative to luminance spread: contrast-independent edge sharpness. Readable
# photos sit above ~0.16 (5th percentile); out-of-focus ones that zbar cannot read fall below 0.2.
BLUR_SHARPNESS: Final = 0.2
# Printed digits: OCR read card numbers down to ~0.09 on the synthetic card photos, and none
# at 0.077 (a 6 px defocus).
LEGIBLE_SHARPNESS: Final = 0.085
LEGIBLE_MIN_MEAN: Final = 15.0
EDGE_STEP: Final = 40.0  # a Laplacian this strong is a real luminance step, not sensor noise
MIN_EDGE_FRACTION: Final = 0.005


@dataclass(frozen=True)
class PhotoMeasures:
    """Exposure, focus and content figures of one photo at the analysis size."""

    mean: float
    darkest: float  # 5th percentile of luminance
    clipped_fraction: float
    std: float
    sharpness: float
    edge_fraction: float


def measure(gray: Image.Image) -> PhotoMeasures:
    """Exposure, focus and edge figures of a grayscale photo, at the fixed analysis size."""
    small = fit(gray, ANALYSIS_SIDE)
    histogram = np.asarray(small.histogram(), dtype=np.float64)
    count = histogram.sum()
    levels = np.arange(256, dtype=np.float64)
    mean = float((histogram * levels).sum() / count)
    std = float(np.sqrt((histogram * (levels - mean) ** 2).sum() / count))
    darkest = float(np.searchsorted(np.cumsum(histogram), 0.05 * count))
    clipped = float(histogram[250:].sum() / count)
    pixels = np.asarray(small, dtype=np.float32)
    if min(pixels.shape) < 3:
        return PhotoMeasures(mean, darkest, clipped, std, 0.0, 0.0)
    laplacian = (
        4 * pixels[1:-1, 1:-1]
        - pixels[:-2, 1:-1]
        - pixels[2:, 1:-1]
        - pixels[1:-1, :-2]
        - pixels[1:-1, 2:]
    )
    return PhotoMeasures(
        mean=mean,
        darkest=darkest,
        clipped_fraction=clipped,
        std=std,
        sharpness=float(laplacian.std()) / (std + 1.0),
        edge_fraction=float(np.count_nonzero(np.abs(laplacian) > EDGE_STEP)) / laplacian.size,
    )


def legible(found: PhotoMeasures, original_size: tuple[int, int]) -> bool:
    """Whether printed text could still be read: big enough, not black, not blank, not a blur.

    OCR is slow, so a photo this says no to is not given its time. OCR copes with far worse
    than the barcode decoders (on the synthetic card photos it still reads the number at a
    4.5 px defocus and in a dim room), hence these looser limits than the hints'. Bright is
    fine: a screenshot of an e-card is mostly white.
    """
    if min(original_size) < MIN_SHORT_SIDE or found.std < FLAT_STD:
        return False
    return found.mean >= LEGIBLE_MIN_MEAN and found.sharpness >= LEGIBLE_SHARPNESS


def photo_hints(
    found: PhotoMeasures,
    original_size: tuple[int, int],
    barcode_size: tuple[float, float] | None = None,
    busy_fraction: float | None = None,
) -> tuple[str, ...]:
    """What is wrong with a photo nothing could be read from, most actionable first.

    ``barcode_size`` is (length across the bars, bar height) of the longest barcode-like region
    the reader found, in the pixels it decodes at; None when it found none. ``busy_fraction``
    is the share of the frame where the localiser saw print (None: not measured).
    """
    hints: list[str] = []
    far = (barcode_size is not None and barcode_size[0] < MIN_BARCODE_PX) and (
        barcode_size[1] < MIN_BAR_HEIGHT_PX
    )
    far |= busy_fraction is not None and 0 < busy_fraction < MIN_BUSY_FRACTION
    if min(original_size) < MIN_SHORT_SIDE or far:
        hints.append(TOO_SMALL)
    exposure_bad = True
    if found.mean < DARK_MEAN:
        hints.append(DARK)
    elif found.mean > BRIGHT_MEAN or (
        found.clipped_fraction > GLARE_CLIPPED_FRACTION and found.darkest > GLARE_DARKEST
    ):
        hints.append(BRIGHT)
    else:
        exposure_bad = False
    if found.std < FLAT_STD:
        # Nothing in frame; under bad exposure that is the exposure's fault, so say only that.
        if not exposure_bad:
            hints.append(NO_CARD)
    elif found.sharpness < BLUR_SHARPNESS:
        hints.append(BLURRED)
    elif found.edge_fraction < MIN_EDGE_FRACTION:
        if found.std >= LOW_CONTRAST_STD:
            hints.append(BLURRED)
        elif not exposure_bad:
            hints.append(NO_CARD)
    return tuple(hints)
