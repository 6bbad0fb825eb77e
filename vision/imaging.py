"""Image bytes → a bounded grayscale picture, and the cheap transforms the decoder cascade uses.

Pillow and NumPy only. Every function here is pure (returns a new image) and blocking; the reader
runs them off the event loop.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from io import BytesIO
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter, ImageOps, ImageStat

# A JPEG is decoded straight to a reduced size (DCT scaling), so a big phone photo costs little
# memory; any other format is decoded whole first, hence its lower ceiling. Beyond these a file
# is treated as a decompression bomb (Pillow itself refuses beyond ~179 Mpx).
MAX_PIXELS_JPEG: Final = 89_000_000
MAX_PIXELS_OTHER: Final = 40_000_000
# Raster formats a chat app can deliver. Naming them keeps Pillow from handing untrusted bytes
# to its other plugins (EPS would even start Ghostscript).
ACCEPTED_FORMATS: Final = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")  # JPEG covers MPO
_DRAFTABLE: Final = frozenset({"JPEG", "MPO"})
_ANIMATABLE: Final = frozenset({"GIF", "PNG", "WEBP"})

_HIGH_BIT_DEPTH: Final = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ALPHA_MODES: Final = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class NotAnImage(Exception):
    """The bytes are not a decodable picture.

    NotAnImage            unknown format, truncated, corrupt
    ├── ImageTooLarge     more pixels than the limits below (decompression bombs included)
    └── AnimatedImage     several frames (GIF/WebP/APNG animation): not a photo of a card
    """


class ImageTooLarge(NotAnImage):
    """More pixels than a card photo needs; decoding it would cost memory and time."""


class AnimatedImage(NotAnImage):
    """An animation, not a still photo."""


@dataclass(frozen=True)
class Photo:
    """A decoded photo: upright grayscale, at most ``max_side`` on its long side."""

    gray: Image.Image
    original_size: tuple[int, int]  # (width, height) after EXIF rotation, before downscaling
    # The upright grayscale picture as decoded, before ``max_side`` (a JPEG may have been
    # decoded at a power-of-two reduction already): small print in a big screenshot.
    decoded: Image.Image | None = None


def load_photo(data: bytes, max_side: int) -> Photo:
    """Decode image bytes to an upright grayscale Photo; raises NotAnImage on any failure."""
    try:
        # Pillow signals bad input through many exception types (OSError, SyntaxError,
        # ValueError, struct.error, EOFError, …): all mean the same here. Its own bomb check
        # warns from 89 Mpx and refuses from 179 Mpx; both are "too large" for us.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened_file = Image.open(BytesIO(data), formats=ACCEPTED_FORMATS)
        with opened_file as opened:
            width, height = opened.size
            draftable = opened.format in _DRAFTABLE
            limit = MAX_PIXELS_JPEG if draftable else MAX_PIXELS_OTHER
            if width < 1 or height < 1:
                raise NotAnImage(f"{width}x{height} pixels")
            if width * height > limit:
                raise ImageTooLarge(f"{width}x{height} pixels")
            # MPO (a phone JPEG with a preview or depth frame) and multi-page TIFF are stills.
            if opened.format in _ANIMATABLE and getattr(opened, "is_animated", False):
                raise AnimatedImage(f"{getattr(opened, 'n_frames', '?')} frames")
            if draftable:
                # Ask libjpeg for the smallest power-of-two reduction still at least max_side.
                ratio = max_side / max(width, height)
                if ratio < 1:
                    opened.draft("L", (int(width * ratio) + 1, int(height * ratio) + 1))
            opened.load()
            stored_size = opened.size
            upright = _exif_upright(opened)
            gray = _to_gray(upright)
    except NotAnImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(str(exc)) from exc
    except Exception as exc:
        raise NotAnImage(str(exc) or type(exc).__name__) from exc
    # Report the size the sender took (before any draft reduction), turned upright.
    turned = upright.size != stored_size
    original_size = (height, width) if turned else (width, height)
    return Photo(gray=fit(gray, max_side), original_size=original_size, decoded=gray)


def _exif_upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        # A corrupt EXIF block must not cost us the picture; it is then read as stored.
        return image


def _to_gray(image: Image.Image) -> Image.Image:
    if image.mode in _HIGH_BIT_DEPTH:
        return _stretch_to_8bit(np.asarray(image, dtype=np.float64))
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    if has_alpha:
        # Transparent pixels often carry black colour values; flatten onto white (how the sender
        # saw the picture) so a transparent background does not swallow black bars.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("L")
    if image.mode in ("L", "RGB", "P", "1", "CMYK", "YCbCr"):
        return image.convert("L")
    return image.convert("RGB").convert("L")


def _stretch_to_8bit(values: NDArray[np.float64]) -> Image.Image:
    low, high = float(values.min()), float(values.max())
    span = high - low if high > low else 1.0
    scaled = np.clip((values - low) * (255.0 / span), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


def fit(image: Image.Image, max_side: int) -> Image.Image:
    """Shrink so the long side is at most ``max_side`` (area-averaged); never enlarges."""
    width, height = image.size
    long_side = max(width, height)
    if long_side <= max_side:
        return image
    ratio = max_side / long_side
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    # Area averaging is the right filter for shrinking bars; reducing_gap lets Pillow first
    # drop by an integer factor, which is several times faster at no visible cost.
    return image.resize(size, Image.Resampling.BOX, reducing_gap=2.0)


def scale(image: Image.Image, factor: float) -> Image.Image:
    """Resize by ``factor``: area-averaged when shrinking, bilinear when enlarging."""
    if 0 < factor < 1 and (1 / factor).is_integer():
        return image.reduce(int(1 / factor))
    width, height = image.size
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    # Bilinear keeps bar edges monotonic ramps, which is what zbar's edge detector expects;
    # sharper kernels add ringing that reads as extra thin bars.
    resample = Image.Resampling.BILINEAR if factor > 1 else Image.Resampling.BOX
    return image.resize(size, resample)


def equalize(image: Image.Image) -> Image.Image:
    """Histogram equalisation: lifts bars out of shadows and dark, underexposed shots."""
    return ImageOps.equalize(image)


def invert(image: Image.Image) -> Image.Image:
    """Negative: zbar only reads dark bars on light, and some cards print light bars on dark."""
    return ImageOps.invert(image)


def sharpen(image: Image.Image, radius: float = 6, percent: int = 600) -> Image.Image:
    """Wide, strong unsharp mask: local contrast boost that steepens soft, defocused bars."""
    # A radius of a few modules (not one pixel) lifts each bar against its neighbourhood; on the
    # sample set this rescued half again as many soft photos as a classic 2 px / 200 % mask.
    return image.filter(ImageFilter.UnsharpMask(radius=radius, percent=percent, threshold=0))


def otsu_threshold(image: Image.Image) -> Image.Image:
    """Global black/white split at Otsu's threshold (uneven print, faint bars on tint)."""
    threshold = otsu_level(np.asarray(image.histogram(), dtype=np.float64))
    lut = [0 if level <= threshold else 255 for level in range(256)]
    return image.point(lut)


def otsu_level(histogram: NDArray[np.float64]) -> int:
    """Otsu's threshold of a 256-bin histogram: the level maximising between-class variance."""
    total = histogram.sum()
    if total <= 0:
        return 127
    levels = np.arange(256, dtype=np.float64)
    weight_dark = np.cumsum(histogram)
    weight_light = total - weight_dark
    mass_dark = np.cumsum(histogram * levels)
    mean_dark = np.divide(
        mass_dark, weight_dark, out=np.zeros_like(mass_dark), where=weight_dark > 0
    )
    mass_light = mass_dark[-1] - mass_dark
    mean_light = np.divide(
        mass_light, weight_light, out=np.zeros_like(mass_light), where=weight_light > 0
    )
    between = weight_dark * weight_light * (mean_dark - mean_light) ** 2
    return int(np.argmax(between))


def local_threshold(image: Image.Image, offset: int = 8) -> Image.Image:
    """Black where darker than the neighbourhood mean: survives glare gradients and shadows."""
    radius = max(8, min(image.size) // 16)
    pixels = np.asarray(image, dtype=np.int16)
    local_mean = np.asarray(image.filter(ImageFilter.BoxBlur(radius)), dtype=np.int16)
    binary = np.where(pixels < local_mean - offset, 0, 255).astype(np.uint8)
    return Image.fromarray(binary)


def median_grey(image: Image.Image) -> int:
    """The median grey level: a neutral fill for canvas outside the photo."""
    return int(ImageStat.Stat(image).median[0])


def rotate(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate counter-clockwise, growing the canvas and filling with the median grey."""
    fill = int(ImageStat.Stat(image).median[0])
    return image.rotate(degrees, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=fill)


def warp_quad(
    image: Image.Image,
    quad: tuple[float, float, float, float, float, float, float, float],
    size: tuple[int, int],
    fill: int | None = None,
) -> Image.Image:
    """The quadrilateral (upper left, lower left, lower right, upper right) of ``image``
    resampled to an upright ``size`` picture: crop, deskew and rescale in one pass. Whatever
    lies outside the picture is ``fill`` (default: the picture's median grey)."""
    if fill is None:
        fill = median_grey(image)
    # Bicubic: enlarging a small crop 2–4× needs a smooth kernel that keeps bar edges steep.
    return image.transform(
        size, Image.Transform.QUAD, quad, resample=Image.Resampling.BICUBIC, fillcolor=fill
    )


def deconvolve(image: Image.Image, sigma: float = 3.0, noise: float = 0.01) -> Image.Image:
    """Wiener-style deblur for a Gaussian defocus of ``sigma`` pixels (NumPy FFT).

    Divides the spectrum by the blur's transfer function where that is well above ``noise``
    and damps it where the blur erased the signal, so bar edges come back steep without the
    ringing a plain inverse filter gives. Meant for small crops: cost grows as n·log n.
    """
    pixels = np.asarray(image, dtype=np.float32)
    height, width = pixels.shape
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    transfer = np.exp(-2 * (np.pi**2) * sigma**2 * (fx**2 + fy**2))
    spectrum = np.fft.rfft2(pixels)
    restored = np.fft.irfft2(
        spectrum * (transfer / (transfer * transfer + noise)), s=(height, width)
    )
    return Image.fromarray(np.clip(restored, 0, 255).astype(np.uint8))


def strong_sharpen(image: Image.Image) -> Image.Image:
    """Unsharp mask 4 px / 300 %: on an enlarged crop this steepens soft bars of a few pixels."""
    return sharpen(image, radius=4, percent=300)
