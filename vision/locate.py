"""Where a barcode may be in a photo: candidate regions from gradient structure (NumPy only).

Bars are many parallel, strong edges: the image gradient there is large and points one way. The
*structure tensor* (gradient products averaged over a small block) measures both at once:
its trace is the edge energy, and its *coherence* (how much of that energy lies along one
direction) is near 1 for bars at any angle and low for text, texture and QR modules. So:

1. gradients on a small analysis copy (long side ``ANALYSIS_SIDE``), summed into blocks;
2. blocks whose energy is well above the photo's typical level are *busy*; busy blocks that are
   also coherent are *bar-like*;
3. a morphological close on the block grid joins the blocks of one barcode across its quiet
   gaps; connected components are the candidates;
4. each candidate gets an oriented box (along and across its mean gradient direction), grown by
   a margin for the quiet zone;
5. bar-like boxes lying end to end in one direction, with at most about a block between them,
   are joined (``join_pieces``): a wide light bar or a glare streak splits the blocks of a small,
   soft barcode into pieces, and a crop of one piece misses half of the symbol.

The reader crops each box out of the larger photo with one ``Image.transform(QUAD)``: crop,
deskew (bars upright) and resampling to a decodable module width in one step. A photo without
any busy block has nothing barcode-like in it: the reader stops early on it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vision.imaging import fit

ANALYSIS_SIDE: Final = 480
GRID_CELLS: Final = 60  # blocks along the long side of the analysis copy
MIN_BLOCK: Final = 4
# A busy block carries this multiple of the photo's median block energy, and at least
# ``MIN_ENERGY`` (grey levels² per pixel): flat walls and sensor noise never reach it.
BUSY_FACTOR: Final = 4.0
MIN_ENERGY: Final = 30.0
# Parallel bars give coherence near 1 even blurred; text and textures stay well below.
PEAK_SHARE: Final = 0.2
BAR_COHERENCE: Final = 0.55
QR_WEIGHT: Final = 0.3
MIN_CELLS: Final = 4
ANGLE_TOLERANCE: Final = 12.0  # degrees between neighbouring blocks of one barcode
MAX_REGIONS: Final = 4
MARGIN_ACROSS: Final = 0.12  # of the box length across the bars (quiet zones at both ends)
MARGIN_ALONG: Final = 0.15  # of the bar height (the printed digits below are not needed)
# Pieces of one barcode: a column of blocks with weak or wayward gradients (a wide light bar,
# a glare streak, a crease) splits its blocks into components lying end to end across the bars.
# Pieces at most this many blocks apart and this well aligned are joined, so the crop holds the
# whole symbol with its guards. A printed frame line or a neighbouring symbol lies further off.
JOIN_GAP_BLOCKS: Final = 1.25
JOIN_OFFSET: Final = 0.35  # centre offset along the bars, as a share of the taller piece
# Pieces of one barcode share its bar height; a card edge or a frame line next to a barcode is
# as tall as the card or the frame.
JOIN_HEIGHT_RATIO: Final = 0.6
# A lone edge (a label's border, a frame line), blurred and seen by blocks that see their
# neighbours, spans four or five blocks; a piece of a barcode holds many bars and is longer.
JOIN_MIN_BLOCKS: Final = 6.0

Quad = tuple[float, float, float, float, float, float, float, float]
Grid = NDArray[np.floating[Any]]


@dataclass(frozen=True)
class Region:
    """A candidate barcode area, in the coordinates of the picture ``locate`` was given.

    ``angle`` is the direction across the bars (the gradient direction) in degrees, counter-
    clockwise from the x axis; ``length`` is the box size across the bars, ``height`` along them.
    """

    cx: float
    cy: float
    angle: float
    length: float
    height: float
    score: float
    bar_like: bool  # coherent (1D bars); otherwise a busy 2D patch (a QR code, or print)

    def quad(self, margin_across: float, margin_along: float) -> Quad:
        """Corners (upper left, lower left, lower right, upper right) of the grown box, in the
        order ``Image.transform(QUAD)`` takes them, so the bars come out upright."""
        half_l = self.length * (0.5 + margin_across)
        half_h = self.height * (0.5 + margin_along)
        ux, uy = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        vx, vy = -uy, ux  # along the bars

        def corner(a: float, b: float) -> tuple[float, float]:
            return self.cx + a * ux + b * vx, self.cy + a * uy + b * vy

        ul, ll, lr, ur = (
            corner(-half_l, -half_h),
            corner(-half_l, half_h),
            corner(half_l, half_h),
            corner(half_l, -half_h),
        )
        return (*ul, *ll, *lr, *ur)

    def scaled(self, factor: float) -> Region:
        """The same region in a picture ``factor`` times the size."""
        return Region(
            self.cx * factor,
            self.cy * factor,
            self.angle,
            self.length * factor,
            self.height * factor,
            self.score,
            self.bar_like,
        )


@dataclass(frozen=True)
class Layout:
    """What the localiser found: candidate regions (best first) and whether anything is busy."""

    regions: tuple[Region, ...]
    busy_fraction: float  # of the analysis blocks; 0 means nothing barcode-like at all


def locate(gray: Image.Image) -> Layout:
    """Candidate barcode regions of a grayscale picture, best first, in its coordinates."""
    small = fit(gray, ANALYSIS_SIDE)
    factor = gray.width / small.width
    pixels = np.asarray(small, dtype=np.float32)
    height, width = pixels.shape
    block = max(MIN_BLOCK, round(max(width, height) / GRID_CELLS))
    rows, cols = (height - 2) // block, (width - 2) // block
    if rows < 2 or cols < 2:
        return Layout((), 0.0)
    # Sobel gradients of the interior.
    smooth_x = pixels[:-2, :] + 2 * pixels[1:-1, :] + pixels[2:, :]
    smooth_y = pixels[:, :-2] + 2 * pixels[:, 1:-1] + pixels[:, 2:]
    gx = (smooth_x[:, 2:] - smooth_x[:, :-2]) / 8
    gy = (smooth_y[2:, :] - smooth_y[:-2, :]) / 8
    jxx = _blocks(gx * gx, block, rows, cols)
    jyy = _blocks(gy * gy, block, rows, cols)
    jxy = _blocks(gx * gy, block, rows, cols)
    # Each block sees its 3×3 neighbourhood: wide or blurred bars have edges a block or more
    # apart, and the blocks between them must still count as bars.
    jxx, jyy, jxy = _box3(jxx), _box3(jyy), _box3(jxy)
    energy = jxx + jyy
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / np.maximum(energy, 1e-6)
    angle = 0.5 * np.arctan2(2 * jxy, jxx - jyy)
    # Busy means well above the photo's typical block, or, where print covers the whole frame
    # (a close-up, a page of text), a fair share of its busiest blocks.
    typical, peak = np.percentile(energy, [50, 98])
    floor = max(MIN_ENERGY, min(BUSY_FACTOR * float(typical), PEAK_SHARE * float(peak)))
    busy = energy >= floor
    bar_like = busy & (coherence >= BAR_COHERENCE)
    regions: list[Region] = []
    for mask, is_bars in ((bar_like, True), (busy & ~bar_like, False)):
        for cells in _components(mask, angle if is_bars else None):
            if len(cells) < MIN_CELLS:
                continue
            region = _region(cells, jxx, jyy, jxy, energy, block, is_bars)
            if region is not None:
                regions.append(region)
    joined = join_pieces(regions, JOIN_GAP_BLOCKS * block, JOIN_MIN_BLOCKS * block)
    regions = [r.scaled(factor) for r in joined]
    regions.sort(key=lambda r: -r.score)
    return Layout(tuple(regions[:MAX_REGIONS]), float(busy.mean()))


def join_pieces(regions: list[Region], max_gap: float, min_length: float = 0.0) -> list[Region]:
    """Bar-like regions with pieces of one barcode joined: same direction, end to end across
    the bars, at most ``max_gap`` pixels apart, each at least ``min_length`` across."""
    bars = sorted((r for r in regions if r.bar_like), key=lambda r: -r.score)
    joined = True
    while joined:
        joined = False
        for i, first in enumerate(bars):
            for second in bars[i + 1 :]:
                union = _joined(first, second, max_gap, min_length)
                if union is not None:
                    bars = [r for r in bars if r is not first and r is not second] + [union]
                    bars.sort(key=lambda r: -r.score)
                    joined = True
                    break
            if joined:
                break
    return bars + [r for r in regions if not r.bar_like]


def _joined(first: Region, second: Region, max_gap: float, min_length: float) -> Region | None:
    """The box holding both pieces, in the direction of the stronger one; None if they are
    not two pieces of one barcode."""
    if min(first.length, second.length) < min_length:
        return None
    if _turn(math.radians(first.angle), math.radians(second.angle)) > math.radians(
        ANGLE_TOLERANCE
    ):
        return None
    ux, uy = math.cos(math.radians(first.angle)), math.sin(math.radians(first.angle))
    dx, dy = second.cx - first.cx, second.cy - first.cy
    across = dx * ux + dy * uy
    along = -dx * uy + dy * ux
    tall = max(first.height, second.height)
    if abs(along) > JOIN_OFFSET * tall:
        return None
    if min(first.height, second.height) < JOIN_HEIGHT_RATIO * tall:
        return None
    if abs(across) - (first.length + second.length) / 2 > max_gap:
        return None
    # Both boxes' extents on the stronger piece's axes (the second box's own tilt is within
    # the angle tolerance: its corners are close enough to its axis-aligned extent).
    a_lo = min(-first.length / 2, across - second.length / 2)
    a_hi = max(first.length / 2, across + second.length / 2)
    b_lo = min(-first.height / 2, along - second.height / 2)
    b_hi = max(first.height / 2, along + second.height / 2)
    a_mid, b_mid = (a_lo + a_hi) / 2, (b_lo + b_hi) / 2
    return Region(
        cx=first.cx + a_mid * ux - b_mid * uy,
        cy=first.cy + a_mid * uy + b_mid * ux,
        angle=first.angle,
        length=a_hi - a_lo,
        height=b_hi - b_lo,
        score=first.score + second.score,
        bar_like=True,
    )


def _blocks(values: Grid, block: int, rows: int, cols: int) -> Grid:
    trimmed = values[: rows * block, : cols * block]
    summed: Grid = trimmed.reshape(rows, block, cols, block).mean(axis=(1, 3))
    return summed


def _box3(values: Grid) -> Grid:
    """Mean over each cell's 3×3 neighbourhood (edges replicated)."""
    padded = np.pad(values, 1, mode="edge")
    rows, cols = values.shape
    out = np.zeros_like(values)
    for dy in range(3):
        for dx in range(3):
            out += padded[dy : dy + rows, dx : dx + cols]
    return out / 9


def _components(mask: NDArray[np.bool_], angle: Grid | None) -> list[list[tuple[int, int]]]:
    """4-connected components of a small boolean grid (breadth-first; the grid is ≤ 60×60).

    With ``angle``, neighbours join only if their bar directions agree within
    ``ANGLE_TOLERANCE``: a barcode beside a line of text stays apart from it.
    """
    tolerance = math.radians(ANGLE_TOLERANCE)
    rows, cols = mask.shape
    seen = np.zeros_like(mask)
    found: list[list[tuple[int, int]]] = []
    for start_r, start_c in zip(*np.nonzero(mask), strict=True):
        if seen[start_r, start_c]:
            continue
        seen[start_r, start_c] = True
        queue = deque([(int(start_r), int(start_c))])
        cells: list[tuple[int, int]] = []
        while queue:
            r, c = queue.popleft()
            cells.append((r, c))
            for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if not (0 <= nr < rows and 0 <= nc < cols and mask[nr, nc]) or seen[nr, nc]:
                    continue
                if angle is not None and _turn(angle[r, c], angle[nr, nc]) > tolerance:
                    continue
                seen[nr, nc] = True
                queue.append((nr, nc))
        found.append(cells)
    return found


def _region(
    cells: list[tuple[int, int]],
    jxx: Grid,
    jyy: Grid,
    jxy: Grid,
    energy: Grid,
    block: int,
    is_bars: bool,
) -> Region | None:
    index = tuple(np.array(cells).T)
    sxx, syy, sxy = float(jxx[index].sum()), float(jyy[index].sum()), float(jxy[index].sum())
    # Dominant gradient direction of the whole component: across the bars.
    total = sxx + syy
    unity = math.sqrt((sxx - syy) ** 2 + 4 * sxy**2) / max(total, 1e-6)
    if is_bars and unity < BAR_COHERENCE:
        return None  # coherent blocks pointing many ways: lines of text, not one barcode
    angle = 0.5 * math.atan2(2 * sxy, sxx - syy) if is_bars else 0.0
    ux, uy = math.cos(angle), math.sin(angle)
    # Block centres in pixels (+1: the gradients start one pixel in).
    ys = np.array([r for r, _ in cells], dtype=np.float64) * block + block / 2 + 1
    xs = np.array([c for _, c in cells], dtype=np.float64) * block + block / 2 + 1
    across = xs * ux + ys * uy
    along = -xs * uy + ys * ux
    a_lo, a_hi = float(across.min()) - block / 2, float(across.max()) + block / 2
    b_lo, b_hi = float(along.min()) - block / 2, float(along.max()) + block / 2
    a_mid, b_mid = (a_lo + a_hi) / 2, (b_lo + b_hi) / 2
    cx, cy = a_mid * ux - b_mid * uy, a_mid * uy + b_mid * ux
    length, height = a_hi - a_lo, b_hi - b_lo
    if min(length, height) <= 0:
        return None
    return Region(
        cx=cx,
        cy=cy,
        angle=math.degrees(angle),
        length=length,
        height=height,
        # Bars: edge energy, discounted when the blocks disagree on the direction. A 2D patch
        # scores less for the same energy: print and texture are busy too.
        score=float(energy[index].sum()) * (unity**2 if is_bars else QR_WEIGHT),
        bar_like=is_bars,
    )


def _turn(a: float, b: float) -> float:
    """Angle between two undirected directions (radians, each modulo π)."""
    diff = abs(float(a) - float(b)) % math.pi
    return min(diff, math.pi - diff)
