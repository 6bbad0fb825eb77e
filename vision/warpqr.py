"""QR codes on bent surfaces: resample the module grid with local corrections (NumPy only).

zxing-cpp finds a QR code's finder patterns and version even when the code is printed on cloth,
a curved bottle or a crumpled receipt, but it samples the modules through one perspective
transform of the whole symbol, and where the surface bends the samples drift onto the
neighbouring modules: the Reed-Solomon check then fails (it reports a checksum error).

This stage takes the corners and version zxing-cpp reports for such a failed symbol and samples
the grid again through that perspective transform *plus a smooth displacement field*: a coarse
lattice of control points, each moved (in module units) to where the module centres around it
have the most contrast against their neighbourhood (a sample on a module's centre is clearly
dark or light; one on a boundary between a dark and a light module is grey). The sampled bits
are drawn as a flat, clean symbol with a quiet zone, which the engines then decode as any other
picture: a bad resampling fails Reed-Solomon like any bad photo, so it cannot add a misread.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import zxingcpp
from numpy.typing import NDArray
from PIL import Image, ImageFilter

Array = NDArray[np.float32]
Quad = tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float]]

MAX_SYMBOLS: Final = 1  # failed symbols resampled per picture, largest first
MIN_MODULE_PX: Final = 2.0  # finer modules than this cannot be resampled from the photo
# Up to version 6 (41 modules, ~130 characters at level M: any card's URL or token); the cost
# grows with the square of the size (~75 ms on one core at 41 when both lattices run).
MAX_SIZE: Final = 41
# Modules between control points of the displacement field, coarse to fine: a coarse lattice
# follows a broad bend, a fine one a ripple; each lattice gives the symbol one resampling.
CONTROL_SPACINGS: Final = (8.0, 4.0)
# Trial moves of a control point, in modules. Centre contrast repeats every module, so a move
# of half a module either way looks alike; the function patterns (below) break the tie.
SHIFTS: Final = (-0.375, -0.25, -0.125, 0.0, 0.125, 0.25, 0.375)
FINE_SHIFTS: Final = (-0.125, 0.0, 0.125)
# Weight of the modules every QR code has in known places (finder, separator, timing and
# alignment patterns): sampling them the right colour anchors the field to the true grid.
KNOWN_WEIGHT: Final = 2.0
SWEEPS: Final = 2
LOCAL_MEAN_MODULES: Final = 3.0  # radius of the neighbourhood a module is compared with
RENDER_PX: Final = 4  # pixels per module of the redrawn symbol
QUIET_MODULES: Final = 4

_QR: Final = zxingcpp.barcode_formats_from_str("QRCode")


def failed_symbols(image: Image.Image) -> list[tuple[Quad, int]]:
    """(Corners, modules per side) of QR codes zxing-cpp found but could not decode, largest
    first: corners top left, top right, bottom right, bottom left, in picture pixels."""
    found: list[tuple[float, Quad, int]] = []
    for result in zxingcpp.read_barcodes(image, formats=_QR, return_errors=True):
        if result.valid or result.error is None:
            continue
        if result.error.type != zxingcpp.ErrorType.Checksum:
            continue
        version = str(result.extra.get("Version", "")) if isinstance(result.extra, dict) else ""
        if not version.isdigit():  # micro QR ("M3") guesses are pieces of a larger symbol
            continue
        position = result.position
        quad: Quad = tuple(  # type: ignore[assignment]
            (float(p.x), float(p.y))
            for p in (
                position.top_left,
                position.top_right,
                position.bottom_right,
                position.bottom_left,
            )
        )
        size = 17 + 4 * int(version)
        if size > MAX_SIZE or _side(quad) / size < MIN_MODULE_PX:
            continue
        found.append((_area(quad), quad, size))
    found.sort(key=lambda item: -item[0])
    return [(quad, size) for _, quad, size in found[:MAX_SYMBOLS]]


def resample(image: Image.Image) -> Image.Image | None:
    """Failed QR codes of the picture redrawn flat from a locally corrected module grid; None
    when zxing-cpp saw no failed QR code.

    The finer lattices run only while no redrawing of that symbol has decoded; when none has,
    every redrawing is returned side by side (zbar may still read one)."""
    symbols = failed_symbols(image)
    if not symbols:
        return None
    contrast = _contrast(image, symbols)
    drawn: list[Image.Image] = []
    for quad, size in symbols:
        for spacing in CONTROL_SPACINGS:
            picture = draw(sample_grid(contrast, quad, size, spacing))
            if _decodes(picture):
                return picture
            drawn.append(picture)
    width = sum(d.width for d in drawn)
    height = max(d.height for d in drawn)
    canvas = Image.new("L", (width, height), 255)
    left = 0
    for picture in drawn:
        canvas.paste(picture, (left, 0))
        left += picture.width
    return canvas


def _decodes(picture: Image.Image) -> bool:
    return any(r.valid for r in zxingcpp.read_barcodes(picture, formats=_QR, is_pure=True))


def _contrast(image: Image.Image, symbols: list[tuple[Quad, int]]) -> Array:
    """The picture minus its local mean over a few modules: dark modules negative."""
    module = min(_side(quad) / size for quad, size in symbols)
    radius = max(1, round(LOCAL_MEAN_MODULES * module))
    pixels = np.asarray(image, dtype=np.float32)
    local_mean = np.asarray(image.filter(ImageFilter.BoxBlur(radius)), dtype=np.float32)
    result: Array = pixels - local_mean
    return result


def sample_grid(contrast: Array, quad: Quad, size: int, spacing: float) -> NDArray[np.bool_]:
    """Dark modules (True) of a ``size``×``size`` symbol whose outer corners are ``quad``,
    sampled through a perspective transform corrected by a smooth displacement field with
    control points about ``spacing`` modules apart."""
    homography = _homography(quad, size)
    controls = max(2, round(size / spacing) + 1)
    knots = np.linspace(0.0, float(size), controls)
    shift = np.zeros((controls, controls, 2), dtype=np.float64)  # (v, u) knots → (du, dv)
    centres = np.arange(size, dtype=np.float64) + 0.5
    cu, cv = np.meshgrid(centres, centres)  # module centres, [row, col]
    # Per module: +1 where it must be light, -1 where dark, 0 for data; the score of a sample
    # is its contrast's size on data modules and its signed agreement on known ones.
    expected = function_patterns(size)
    spacing = float(knots[1] - knots[0])
    # The modules each knot moves: within one spacing of it, weighted by its hat.
    reach = []
    for row in range(controls):
        for col in range(controls):
            weight = np.clip(1 - np.abs(cu - knots[col]) / spacing, 0, None) * np.clip(
                1 - np.abs(cv - knots[row]) / spacing, 0, None
            )
            near = weight > 0
            reach.append((row, col, cu[near], cv[near], weight[near], expected[near]))
    # Knots are visited in reading order, each moved to its best trial before the next one is
    # tried: the field grows out from the top left finder pattern, the best anchored corner.
    for steps in (SHIFTS,) * SWEEPS + (FINE_SHIFTS,):
        trial_u, trial_v = (t.ravel()[:, None] for t in np.meshgrid(steps, steps))
        for row, col, u, v, w, known in reach:
            base_u, base_v = _displacement(shift, knots, u, v)
            x, y = _apply(homography, u + base_u + w * trial_u, v + base_v + w * trial_v)
            sampled = _bilinear(contrast, x, y)
            agreement = np.where(known == 0, np.abs(sampled), KNOWN_WEIGHT * known * sampled)
            best = int(np.argmax((w * agreement).sum(axis=1)))
            shift[row, col] += (float(trial_u[best, 0]), float(trial_v[best, 0]))
    du, dv = _displacement(shift, knots, cu.ravel(), cv.ravel())
    x, y = _apply(homography, cu.ravel() + du, cv.ravel() + dv)
    dark: NDArray[np.bool_] = (_bilinear(contrast, x, y) < 0).reshape(size, size)
    return dark


def function_patterns(size: int) -> NDArray[np.float64]:
    """The modules of a ``size``×``size`` QR code whose colour the standard fixes: +1 light,
    -1 dark, 0 data. Finder patterns with their separators, timing patterns, and for versions
    2–6 the one alignment pattern (larger versions have several; they are left out)."""
    known = np.zeros((size, size), dtype=np.float64)
    ring = np.ones((9, 9), dtype=np.float64)  # separator (light) around a 7×7 finder
    ring[1:8, 1:8] = -1
    ring[2:7, 2:7] = 1
    ring[3:6, 3:6] = -1
    for top, left in ((0, 0), (0, size - 7), (size - 7, 0)):
        rows = slice(max(0, top - 1), min(size, top + 8))
        cols = slice(max(0, left - 1), min(size, left + 8))
        known[rows, cols] = ring[
            rows.start - top + 1 : rows.stop - top + 1,
            cols.start - left + 1 : cols.stop - left + 1,
        ]
    timing = np.where(np.arange(8, size - 8) % 2 == 0, -1.0, 1.0)
    known[6, 8 : size - 8] = timing
    known[8 : size - 8, 6] = timing
    version = (size - 17) // 4
    if 2 <= version <= 6:
        centre = size - 7
        block = np.full((5, 5), -1.0)
        block[1:4, 1:4] = 1
        block[2, 2] = -1
        known[centre - 2 : centre + 3, centre - 2 : centre + 3] = block
    return known


def draw(dark: NDArray[np.bool_]) -> Image.Image:
    """A flat, clean picture of a module matrix with its quiet zone."""
    padded = np.pad(dark, QUIET_MODULES, constant_values=False)
    pixels = np.where(padded, 0, 255).astype(np.uint8)
    picture = np.repeat(np.repeat(pixels, RENDER_PX, axis=0), RENDER_PX, axis=1)
    return Image.fromarray(picture)


def _displacement(
    shift: NDArray[np.float64], knots: NDArray[np.float64], u: Any, v: Any
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The displacement field (bilinear between knots) at module coordinates (u, v)."""
    last = len(knots) - 2
    spacing = knots[1] - knots[0]
    i = np.clip(np.floor(v / spacing).astype(int), 0, last)
    j = np.clip(np.floor(u / spacing).astype(int), 0, last)
    fv = np.clip(v / spacing - i, 0, 1)[:, None]
    fu = np.clip(u / spacing - j, 0, 1)[:, None]
    top = shift[i, j] * (1 - fu) + shift[i, j + 1] * fu
    bottom = shift[i + 1, j] * (1 - fu) + shift[i + 1, j + 1] * fu
    field = top * (1 - fv) + bottom * fv
    return field[:, 0], field[:, 1]


def _homography(quad: Quad, size: int) -> NDArray[np.float64]:
    """The 3×3 perspective transform from module coordinates [0, size]² onto the quad."""
    source = ((0.0, 0.0), (float(size), 0.0), (float(size), float(size)), (0.0, float(size)))
    rows: list[list[float]] = []
    values: list[float] = []
    for (u, v), (x, y) in zip(source, quad, strict=True):
        rows.append([u, v, 1, 0, 0, 0, -u * x, -v * x])
        rows.append([0, 0, 0, u, v, 1, -u * y, -v * y])
        values.extend((x, y))
    h = np.linalg.solve(np.array(rows), np.array(values))
    return np.append(h, 1.0).reshape(3, 3)


def _apply(homography: NDArray[np.float64], u: Any, v: Any) -> tuple[Any, Any]:
    w = homography[2, 0] * u + homography[2, 1] * v + homography[2, 2]
    x = (homography[0, 0] * u + homography[0, 1] * v + homography[0, 2]) / w
    y = (homography[1, 0] * u + homography[1, 1] * v + homography[1, 2]) / w
    return x, y


def _bilinear(pixels: Array, x: Any, y: Any) -> NDArray[np.float64]:
    """Pixel values at fractional positions (edges clamped)."""
    height, width = pixels.shape
    x = np.clip(np.asarray(x, dtype=np.float64), 0, width - 1.001)
    y = np.clip(np.asarray(y, dtype=np.float64), 0, height - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    top = pixels[y0, x0] * (1 - fx) + pixels[y0, x0 + 1] * fx
    bottom = pixels[y0 + 1, x0] * (1 - fx) + pixels[y0 + 1, x0 + 1] * fx
    result: NDArray[np.float64] = top * (1 - fy) + bottom * fy
    return result


def _side(quad: Quad) -> float:
    """Mean side length of a quadrilateral."""
    corners = np.array(quad)
    return float(np.linalg.norm(corners - np.roll(corners, -1, axis=0), axis=1).mean())


def _area(quad: Quad) -> float:
    xs, ys = np.array([p[0] for p in quad]), np.array([p[1] for p in quad])
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)
