"""Synthetic "phone photos" of gift cards with a real Code 128 barcode, for demos and tests.

The card is drawn flat (rounded card, brand band, brand name, face value, barcode, printed
number), then photographed: placed on a table with a slight rotation and keystone, a soft
shadow, uneven light, a little blur and sensor noise, and saved as a JPEG as a phone would.
The barcode must still decode to exactly ``number``; the tests check that with pyzbar.

Output is deterministic for the same arguments and seed on one machine (fonts found on the
machine change the pixels, never the barcode).
"""

from __future__ import annotations

import functools
import glob
import io
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import barcode
import barcode.writer
import numpy as np
import zxingcpp
from barcode.writer import ImageWriter
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["Shot", "render_card_photo", "render_hard_card_photo"]

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

CANVAS_SIZE = (1600, 1200)
# ISO/IEC 7810 ID-1 proportions (85.60 × 53.98 mm), as most shopping cards are.
CARD_SIZE = (1100, 694)
CARD_MARGIN = 60
QUIET_ZONE_MODULES = 10  # Code 128 asks for at least 10 modules of white either side
BARCODE_HEIGHT = 170

# Brand colours by hash of the brand name: the same brand keeps its colour across seeds.
_BAND_COLOURS = (
    (200, 16, 46),  # red
    (0, 94, 164),  # blue
    (0, 133, 80),  # green
    (232, 119, 34),  # orange
    (110, 38, 140),  # purple
    (20, 20, 20),  # black
)
_TABLE_COLOURS = ((150, 105, 70), (120, 84, 58), (178, 140, 100), (112, 112, 108))

_CJK_FONT_FILES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)
# Distribution layouts differ; these patterns catch the usual CJK families anywhere under them.
_CJK_FONT_GLOBS = (
    "/usr/share/fonts/**/*CJK*.tt[cf]",
    "/usr/share/fonts/**/*CJK*.otf",
    "/usr/share/fonts/**/wqy*.tt[cf]",
    "/usr/share/fonts/**/DroidSansFallback*.ttf",
)
_LATIN_FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Bold.ttf",
    "/System/Library/Fonts/Supplemental/Arial Bold.ttf",
    "/Library/Fonts/Arial Bold.ttf",
    "C:/Windows/Fonts/arialbd.ttf",
)
# python-barcode ships this font, so the printed number always has a monospaced face.
_BUNDLED_MONO = Path(barcode.writer.__file__).parent / "fonts" / "DejaVuSansMono.ttf"


def render_card_photo(
    brand_name: str, number: str, face_value_text: str, *, seed: int = 0
) -> bytes:
    """A JPEG photo of a gift card whose Code 128 barcode decodes to exactly ``number``."""
    if not number or not all(32 <= ord(ch) < 127 for ch in number):
        raise ValueError("number must be non-empty printable ASCII (Code 128 set B)")
    rng = np.random.default_rng(seed)
    card = _draw_card(brand_name, number, face_value_text)
    photo = _photograph(card, rng)
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=90)
    return out.getvalue()


@dataclass(frozen=True)
class Shot:
    """How a hard photo of a card is taken (the defaults are a decent phone photo).

    Each field is one way real photos go wrong; tests combine them into the hard cases.
    """

    tilt_deg: float = 0.0  # card turned in the picture plane
    keystone: float = 0.0  # 0–0.4: the phone leans, the card's far edge looks shorter
    card_width_px: int = 1100  # how large the card appears: distance from the camera
    canvas: tuple[int, int] = (1600, 1200)  # the photo's size (4000 × 3000 is 12 Mpx)
    blur_px: float = 0.8  # defocus or shake, Gaussian radius in photo pixels
    noise: float = 3.0  # sensor noise, standard deviation in grey levels
    light: float = 1.0  # exposure: 0.25 is a dim room, 1.6 an overexposed one
    glare: float = 0.0  # 0–1: a specular highlight's strength
    glare_at: tuple[float, float] = (0.3, 0.3)  # its centre, as fractions of the card
    jpeg_quality: int = 90  # chat apps recompress hard (WeChat ~ 40–60)
    # A thumb over part of the card: (left, top, right, bottom) as fractions of the card.
    thumb: tuple[float, float, float, float] | None = None


def render_hard_card_photo(
    number: str,
    shot: Shot,
    *,
    brand_name: str = "沃尔玛",
    face_value_text: str = "¥500.00",
    printed_number: str | None = None,
    promo_qr: str | None = None,
    bars_blur_px: float = 0.0,
) -> bytes:
    """A JPEG photo of a gift card taken as ``shot`` says; the barcode encodes ``number``.

    Unlike ``render_card_photo`` nothing here is random except the sensor noise (seeded), so a
    test names exactly the hardship it exercises. The card itself can be odd too: a different
    number printed under the bars (``printed_number``: a relabelled card), a second QR code
    beside the barcode (``promo_qr``: a shop's mini-program link, as many Chinese gift cards
    carry), and worn bars (``bars_blur_px``: the barcode alone smudged, the rest crisp).
    """
    if not number or not all(32 <= ord(ch) < 127 for ch in number):
        raise ValueError("number must be non-empty printable ASCII (Code 128 set B)")
    card = _draw_card(
        brand_name,
        number,
        face_value_text,
        printed_number=printed_number,
        promo_qr=promo_qr,
        bars_blur_px=bars_blur_px,
    )
    photo = _shoot(card, shot)
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=shot.jpeg_quality)
    return out.getvalue()


def _shoot(card: Image.Image, shot: Shot) -> Image.Image:
    if shot.thumb is not None:
        card = card.copy()
        left, top, right, bottom = shot.thumb
        box = (card.width * left, card.height * top, card.width * right, card.height * bottom)
        thumb_radius = int(card.width * (right - left) / 2)
        ImageDraw.Draw(card).rounded_rectangle(box, radius=thumb_radius, fill=(222, 170, 138, 255))
    canvas_w, canvas_h = shot.canvas
    scale = shot.card_width_px / card.width
    half_w, half_h = card.width * scale / 2, card.height * scale / 2
    corners = []
    for x, y in ((-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)):
        if y < 0:
            x *= 1 - shot.keystone
        corners.append((x, y))
    angle = math.radians(shot.tilt_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    placed = [
        (canvas_w / 2 + x * cos - y * sin, canvas_h / 2 + x * sin + y * cos) for x, y in corners
    ]
    coefficients = _perspective_coefficients(placed, card.size)
    warped = card.transform(
        shot.canvas, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC
    )
    table = Image.new("RGBA", shot.canvas, (128, 96, 70, 255))
    table.alpha_composite(warped)
    pixels = np.asarray(table.convert("RGB"), dtype=np.float32) * shot.light
    if shot.glare > 0:
        # A highlight: a bright, soft blob that washes the print out towards white.
        gx = placed[0][0] + (placed[1][0] - placed[0][0]) * shot.glare_at[0]
        gy = placed[0][1] + (placed[3][1] - placed[0][1]) * shot.glare_at[1]
        ys, xs = np.mgrid[0:canvas_h, 0:canvas_w].astype(np.float32)
        radius = shot.card_width_px * 0.18
        blob = np.exp(-((xs - gx) ** 2 + (ys - gy) ** 2) / (2 * radius**2))
        pixels += (shot.glare * 320 * blob)[..., None]
    lit = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if shot.blur_px > 0:
        lit = lit.filter(ImageFilter.GaussianBlur(shot.blur_px))
    noisy = np.asarray(lit, dtype=np.float32)
    rng = np.random.default_rng(7)
    noisy += rng.normal(0.0, shot.noise, size=noisy.shape).astype(np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


# -- the flat card --------------------------------------------------------------------------


def _draw_card(
    brand_name: str,
    number: str,
    face_value_text: str,
    *,
    printed_number: str | None = None,
    promo_qr: str | None = None,
    bars_blur_px: float = 0.0,
) -> Image.Image:
    width, height = CARD_SIZE
    band_colour = _BAND_COLOURS[zlib.crc32(brand_name.encode("utf-8")) % len(_BAND_COLOURS)]
    card = Image.new("RGB", CARD_SIZE, (247, 245, 240))
    draw = ImageDraw.Draw(card)

    band_height = int(height * 0.34)
    band = Image.new("RGB", (width, band_height), band_colour)
    band_draw = ImageDraw.Draw(band)
    # Two pale circles in the band: printed cards are rarely a flat colour block.
    lighter = (
        min(255, band_colour[0] + 40),
        min(255, band_colour[1] + 40),
        min(255, band_colour[2] + 40),
    )
    band_draw.ellipse((width - 330, -170, width + 90, 250), fill=lighter)
    band_draw.ellipse((width - 180, 40, width + 120, 340), fill=band_colour)
    card.paste(band, (0, 0))
    draw.rectangle((0, band_height, width, band_height + 8), fill=(214, 178, 92))

    value_right = width - CARD_MARGIN
    value_runs = _fit_runs(face_value_text, 64, max_width=width // 3)
    value_width = _runs_width(value_runs)
    _draw_runs(draw, (value_right - value_width, band_height // 2), value_runs, "white")
    brand_room = value_right - value_width - 2 * CARD_MARGIN
    brand_runs = _fit_runs(brand_name, 80, max_width=brand_room) or _fit_runs(
        "GIFT CARD", 80, max_width=brand_room
    )
    _draw_runs(draw, (CARD_MARGIN, band_height // 2), brand_runs, "white")
    draw.text(
        (CARD_MARGIN, band_height + 30), "GIFT CARD", font=_latin_font(26), fill=(90, 90, 90)
    )

    bars = _barcode_image(number, width - 2 * CARD_MARGIN)
    if bars_blur_px > 0:
        bars = bars.filter(ImageFilter.GaussianBlur(bars_blur_px))
    bars_top = band_height + 80
    card.paste(bars, ((width - bars.width) // 2, bars_top))
    if promo_qr is not None:
        qr = _qr_image(promo_qr, BARCODE_HEIGHT)
        card.paste(qr, (width - CARD_MARGIN // 2 - qr.width, bars_top))

    # Cards print long digit runs in groups of four; other codes as they are.
    printed = number if printed_number is None else printed_number
    if printed.isdigit():
        printed = " ".join(printed[i : i + 4] for i in range(0, len(printed), 4))
    draw.text(
        (width // 2, bars_top + bars.height + 16),
        printed,
        font=_mono_font(38),
        fill=(25, 25, 25),
        anchor="mt",
    )
    draw.text(
        (width // 2, height - 34),
        "NOT REDEEMABLE FOR CASH  ·  KEEP THIS CARD SAFE",
        font=_latin_font(20),
        fill=(140, 140, 140),
        anchor="mm",
    )

    # Rounded corners as an alpha mask, so the table shows through outside the card.
    mask = Image.new("L", CARD_SIZE, 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, width - 1, height - 1), radius=42, fill=255)
    rgba = card.convert("RGBA")
    rgba.putalpha(mask)
    return rgba


def _barcode_image(number: str, max_width: int) -> Image.Image:
    """Code 128 bars with quiet zones, scaled to whole pixels per module."""
    code = barcode.Code128(number, writer=ImageWriter(dpi=254))
    modules = len(code.build()[0]) + 2 * QUIET_ZONE_MODULES
    module_px = min(4, max_width // modules)
    if module_px < 2:
        raise ValueError(f"number too long for a readable barcode on a card: {number!r}")
    # At 254 dpi one millimetre is ten pixels, so whole-millimetre modules land exactly on
    # pixel edges; fractional millimetres accumulate float error and put bars a pixel off.
    bars: Image.Image = code.render(
        writer_options={
            "module_width": 1,
            "module_height": 10,
            "quiet_zone": QUIET_ZONE_MODULES,
            "write_text": False,
            "margin_top": 0,
            "margin_bottom": 0,
            "background": "white",
            "foreground": "black",
        }
    )
    # Nearest-neighbour keeps every module exactly ``module_px`` wide.
    return bars.convert("RGB").resize(
        (modules * module_px, BARCODE_HEIGHT), Image.Resampling.NEAREST
    )


def _qr_image(text: str, side: int) -> Image.Image:
    """A QR code of ``text`` with a two-module quiet zone, ``side`` pixels square at most."""
    symbol = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.QRCode, ec_level="M")
    modules = np.asarray(symbol.to_image(scale=1), dtype=np.uint8)
    quiet = np.pad(modules, 2, constant_values=255)
    scale = max(1, side // quiet.shape[0])
    size = quiet.shape[0] * scale
    picture = Image.fromarray(quiet).resize((size, size), Image.Resampling.NEAREST)
    return picture.convert("RGB")


# -- fonts ----------------------------------------------------------------------------------


def _fit_runs(text: str, size: int, *, max_width: int) -> list[tuple[Font, str]]:
    """``text`` as font runs at the largest size (not below 24 px) that fits ``max_width``."""
    runs = _runs(text, size)
    while runs and _runs_width(runs) > max_width and size > 24:
        size -= 4
        runs = _runs(text, size)
    return runs


def _runs(text: str, size: int) -> list[tuple[Font, str]]:
    """Split ``text`` into runs that one font can draw; characters no font covers are dropped.

    CJK fallback fonts (Droid Sans Fallback) often lack Latin letters and digits, so "星巴克
    Starbucks" needs two fonts; without any CJK font only the Latin part survives.
    """
    fonts = [_latin_font(size)]
    fonts.extend(
        font for path in _cjk_font_files() if (font := _load_font(path, size)) is not None
    )
    runs: list[tuple[Font, str]] = []
    for ch in " ".join(text.split()):
        font = fonts[0] if ch == " " else next((f for f in fonts if _covers(f, ch)), None)
        if font is None:
            continue
        if runs and runs[-1][0] is font:
            runs[-1] = (font, runs[-1][1] + ch)
        else:
            runs.append((font, ch))
    if all(not chunk.strip() for _, chunk in runs):
        return []
    return runs


def _runs_width(runs: list[tuple[Font, str]]) -> int:
    return math.ceil(sum(font.getlength(chunk) for font, chunk in runs))


def _draw_runs(
    draw: ImageDraw.ImageDraw,
    left_middle: tuple[int, int],
    runs: list[tuple[Font, str]],
    fill: str,
) -> None:
    """Draw runs side by side, vertically centred on one shared middle line."""
    x: float = left_middle[0]
    y = left_middle[1]
    for font, chunk in runs:
        draw.text((x, y), chunk, font=font, fill=fill, anchor="lm")
        x += font.getlength(chunk)


@functools.cache
def _cjk_font_files() -> tuple[str, ...]:
    found = [path for path in _CJK_FONT_FILES if Path(path).is_file()]
    for pattern in _CJK_FONT_GLOBS:
        found.extend(sorted(glob.glob(pattern, recursive=True)))
    return tuple(dict.fromkeys(found))


@functools.cache
def _load_font(path: str, size: int) -> Font | None:
    try:
        return ImageFont.truetype(path, size)
    except OSError:
        return None


def _latin_font(size: int) -> Font:
    for path in (*_LATIN_FONT_FILES, str(_BUNDLED_MONO)):
        font = _load_font(path, size)
        if font is not None:
            return font
    return ImageFont.load_default(size)


def _mono_font(size: int) -> Font:
    return _load_font(str(_BUNDLED_MONO), size) or _latin_font(size)


@functools.cache
def _covers(font: Font, ch: str) -> bool:
    """Whether ``ch`` has a real glyph in ``font`` (not the font's .notdef box)."""
    notdef = _glyph(font, "\U0010fffd")  # a private-use code point no font maps
    glyph = _glyph(font, ch)
    return glyph != notdef and any(glyph)


def _glyph(font: Font, ch: str) -> bytes:
    canvas = Image.new("L", (160, 160), 0)
    ImageDraw.Draw(canvas).text((20, 20), ch, font=font, fill=255)
    return canvas.tobytes()


# -- the photo ------------------------------------------------------------------------------


def _photograph(card: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Place the card on a table and shoot it with a slightly tilted, imperfect phone."""
    canvas_w, canvas_h = CANVAS_SIZE
    corners = _card_corners_on_canvas(card.size, rng)
    coefficients = _perspective_coefficients(corners, card.size)
    warped = card.transform(
        CANVAS_SIZE, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC
    )

    photo = _table(rng)
    # A soft shadow a little below and to the right, as from an overhead lamp.
    shadow_alpha = warped.getchannel("A").filter(ImageFilter.GaussianBlur(18))
    shadow_alpha = shadow_alpha.point(lambda a: a * 45 // 100)
    shadow = Image.new("RGBA", CANVAS_SIZE, (20, 14, 10, 0))
    shadow.putalpha(shadow_alpha)
    photo.alpha_composite(shadow, dest=(14, 18))
    photo.alpha_composite(warped)

    pixels = np.asarray(photo.convert("RGB"), dtype=np.float32)
    # Uneven light: brighter on one side, falling off towards the other.
    direction = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:canvas_h, 0:canvas_w].astype(np.float32)
    ramp = (xs / canvas_w - 0.5) * math.cos(direction) + (ys / canvas_h - 0.5) * math.sin(
        direction
    )
    light = 1.0 + ramp * rng.uniform(0.12, 0.22)
    pixels *= light[..., None]
    lit = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")

    blurred = lit.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.1)))
    noisy = np.asarray(blurred, dtype=np.float32)
    noisy += rng.normal(0.0, rng.uniform(2.5, 5.0), size=noisy.shape).astype(np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def _table(rng: np.random.Generator) -> Image.Image:
    """A wood-ish table top: a base colour with stretched low-frequency grain."""
    canvas_w, canvas_h = CANVAS_SIZE
    base = np.array(_TABLE_COLOURS[int(rng.integers(len(_TABLE_COLOURS)))], dtype=np.float32)
    grain_small = rng.normal(0.0, 1.0, size=(80, 6)).astype(np.float32)
    grain_img = Image.fromarray(((grain_small + 4) * 32).clip(0, 255).astype(np.uint8), "L")
    grain = np.asarray(
        grain_img.resize((canvas_w, canvas_h), Image.Resampling.BICUBIC), dtype=np.float32
    )
    shade = 1.0 + (grain / 128.0 - 1.0) * 0.12
    table = np.clip(base[None, None, :] * shade[..., None], 0, 255).astype(np.uint8)
    return Image.fromarray(table, "RGB").convert("RGBA")


def _card_corners_on_canvas(
    card_size: tuple[int, int], rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Where the card's corners (TL, TR, BR, BL) land: rotated a few degrees, keystoned."""
    half_w, half_h = card_size[0] / 2, card_size[1] / 2
    # The phone leans a little: one edge of the card looks shorter than the opposite one.
    top_squeeze = rng.uniform(0.0, 0.05)
    side_squeeze = rng.uniform(-0.04, 0.04)
    corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
    leaning = []
    for x, y in corners:
        if y < 0:
            x *= 1 - top_squeeze
        if x * side_squeeze > 0:
            y *= 1 - abs(side_squeeze)
        leaning.append((x, y))
    angle = math.radians(rng.uniform(-4.0, 4.0))
    centre_x = CANVAS_SIZE[0] / 2 + rng.uniform(-50, 50)
    centre_y = CANVAS_SIZE[1] / 2 + rng.uniform(-40, 40)
    cos, sin = math.cos(angle), math.sin(angle)
    return [(centre_x + x * cos - y * sin, centre_y + x * sin + y * cos) for x, y in leaning]


def _perspective_coefficients(
    canvas_corners: list[tuple[float, float]], card_size: tuple[int, int]
) -> tuple[float, ...]:
    """Pillow's PERSPECTIVE coefficients: they map canvas pixels back to card pixels."""
    card_w, card_h = card_size
    card_corners = [
        (0.0, 0.0),
        (float(card_w), 0.0),
        (float(card_w), float(card_h)),
        (0.0, float(card_h)),
    ]
    rows: list[list[float]] = []
    rhs: list[float] = []
    for (x, y), (u, v) in zip(canvas_corners, card_corners, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend((u, v))
    solution = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64))
    return tuple(float(c) for c in solution)
