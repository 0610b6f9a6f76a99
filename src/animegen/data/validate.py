"""Validate one image file with Pillow and bring it to 8-bit RGB or L.

``load_image`` never raises for a bad file: it returns ``(None, reason)``, where ``reason`` is
``"<code>: <detail>"`` and ``<code>`` is one of ``REASONS`` (``reason_code`` extracts it, for counts).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default decompression-bomb limit (about 0.25 GiB of RGB)
DEFAULT_MIN_SIDE = 32
# Raster formats opened at all. Others (EPS runs Ghostscript; PSD, FITS, ...) are "not_an_image".
FORMATS = ("PNG", "JPEG", "MPO", "GIF", "BMP", "DIB", "WEBP", "TIFF", "PPM", "TGA", "AVIF", "JPEG2000", "QOI")
REASONS = ("empty_file", "unreadable", "not_an_image", "decompression_bomb", "too_small", "truncated_or_corrupt")


@functools.cache
def _formats() -> tuple[str, ...]:
    """The FORMATS this Pillow build can open (all plugins registered first: explicit formats skip that)."""
    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)


def reason_code(reason: str) -> str:
    """The category of a reason string ("too_small: 1x1 ..." -> "too_small")."""
    return reason.split(":", 1)[0]


@contextlib.contextmanager
def _pillow_limits(max_pixels: int) -> Iterator[None]:
    """Within the block: Pillow's pixel limit is ``max_pixels``, bomb warnings are errors, truncated
    images do not load. The previous global settings come back afterwards."""
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def load_image(
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    data: bytes | None = None,
) -> tuple[Image.Image, None] | tuple[None, str]:
    """Fully decode ``path``; return ``(image, None)`` with an RGB or L image, or ``(None, reason)``.

    Skipped: zero-byte files; non-images (anything but the raster ``FORMATS``); images over ``max_pixels``
    pixels (decompression bombs: the header is checked before any decoding); images whose shorter side is
    below ``min_side``; truncated or corrupt files (``verify()``, then a full ``load()`` on a reopened file).
    Converted: transparency (RGBA, LA, PA, P or L with a transparent colour) composited on white; P, CMYK,
    YCbCr, LAB, HSV to RGB; 1 to L; 16-bit and 32-bit greyscale scaled (not clipped) to 8 bits;
    animated images give their first frame; EXIF orientation is applied.

    ``data``, when given, is the file's content already read (decoded from memory; ``path`` names it).
    """
    path = Path(path)
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            return None, "empty_file: 0 bytes"
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"

    def source() -> Path | io.BytesIO:
        return path if data is None else io.BytesIO(data)

    with _pillow_limits(max_pixels):
        try:
            with Image.open(source(), formats=_formats()) as im:
                w, h = im.size
                if w * h > max_pixels:
                    return None, f"decompression_bomb: {w}x{h} pixels > limit {max_pixels}"
                if min(w, h) < min_side:
                    return None, f"too_small: {w}x{h}, shorter side < {min_side}"
                im.verify()
            with Image.open(source(), formats=_formats()) as im:  # positioned on the first frame of an animation
                im.load()
                return _to_8bit(ImageOps.exif_transpose(im)), None
        except UnidentifiedImageError:
            return None, f"not_an_image: not a readable {'/'.join(FORMATS[:8])}/... image"
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            return None, f"decompression_bomb: {e}"
        except Exception as e:  # noqa: BLE001 - decoders raise many types (OSError, SyntaxError, struct.error, ...)
            return None, f"truncated_or_corrupt: {type(e).__name__}: {e}"


def _to_8bit(im: Image.Image) -> Image.Image:
    """A new RGB or L image (never a view of ``im``)."""
    mode = im.mode
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        grey = mode in ("LA", "La") or (mode == "L")
        rgba = im.convert("RGBA")
        out = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return out.convert("L") if grey else out
    if mode in ("RGB", "L"):
        return im.copy()
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(im)), "L")
    return im.convert("RGB")  # P (no transparency), CMYK (Adobe-inverted handled by the JPEG plugin), YCbCr, ...


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Scale greyscale values of a wider type into 0..255.

    Floats within [0, 1] are multiplied by 255; values within 0..65535 are taken as 16-bit (v / 257, so
    65535 -> 255, 32896 -> 128); anything else (negative values, wider ranges) is stretched min..max.
    """
    floating = a.dtype.kind == "f"
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if floating and lo >= 0.0 and hi <= 1.0:
        scaled = a * 255.0
    elif lo >= 0.0 and hi <= 65535.0:
        scaled = a / 257.0
    else:
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
