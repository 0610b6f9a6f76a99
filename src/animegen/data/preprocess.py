"""Square fit (centre crop or pad), resize, and the output modes: rgb, grayscale, lineart (XDoG)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

MODES = ("rgb", "grayscale", "lineart")
FITS = ("center_crop", "pad")
PADS = ("white", "edge")
FILTERS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,  # the DCGAN paper's choice
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
}


def channels_for(mode: str) -> int:
    """Channels of the packed images for ``mode``: 3 for rgb, 1 for grayscale and lineart."""
    check_choice("mode", mode, MODES)
    return 3 if mode == "rgb" else 1


def check_choice(name: str, value: str, valid: tuple[str, ...] | dict) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class XDoG:
    """Extended difference of Gaussians (Winnemoeller et al. 2012), in the "p" form on luminance in [0, 1]:

    ``D = (1 + p) * G(sigma) - p * G(k * sigma)``; ``T = 1`` where ``D >= epsilon``, else
    ``1 + tanh(phi * (D - epsilon))``. ``sigma`` is in output pixels (XDoG runs at the output resolution,
    so line width does not depend on the source size). The defaults give dark outlines and dark hair/eye
    masses on white, like an inked manga page.
    """

    sigma: float = 0.7
    k: float = 1.6
    p: float = 20.0
    epsilon: float = 0.35
    phi: float = 15.0

    def __call__(self, grey: np.ndarray) -> np.ndarray:
        """``grey`` float in [0, 1], HxW -> float in [0, 1]."""
        g1 = gaussian_blur(grey, self.sigma)
        g2 = gaussian_blur(grey, self.k * self.sigma)
        d = (1.0 + self.p) * g1 - self.p * g2
        return np.where(d >= self.epsilon, 1.0, 1.0 + np.tanh(self.phi * (d - self.epsilon))).clip(0.0, 1.0)


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D float array, borders reflected."""
    if sigma <= 0:
        return a
    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.pad(a, radius, mode="symmetric")
    # rows then columns, as sums of shifted slices (fast for the small kernels used here)
    h, w = a.shape
    rows = sum(kernel[i] * out[:, i : i + w] for i in range(2 * radius + 1))
    return sum(kernel[i] * rows[i : i + h, :] for i in range(2 * radius + 1))


def fit_square(img: Image.Image, fit: str = "center_crop", pad: str = "white") -> Image.Image:
    """Centre-crop to the shorter side, or pad to the longer one (with white, or by repeating the edge)."""
    check_choice("fit", fit, FITS)
    check_choice("pad", pad, PADS)
    w, h = img.size
    if w == h:
        return img
    if fit == "center_crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return img.crop((left, top, left + side, top + side))
    side = max(w, h)
    left, top = (side - w) // 2, (side - h) // 2
    if pad == "white":
        canvas = Image.new(img.mode, (side, side), 255 if img.mode == "L" else (255, 255, 255))
        canvas.paste(img, (left, top))
        return canvas
    a = np.asarray(img)
    widths = [(top, side - h - top), (left, side - w - left)] + [(0, 0)] * (a.ndim - 2)
    return Image.fromarray(np.pad(a, widths, mode="edge"), img.mode)


def finish(img: Image.Image, resolution: int, *, mode: str = "rgb", filter: str = "bilinear",
           xdog: XDoG | None = None) -> np.ndarray:
    """Resize a square RGB/L image to ``resolution`` and convert it to ``mode``: uint8 HxWxC."""
    check_choice("filter", filter, FILTERS)
    channels = channels_for(mode)
    assert img.size[0] == img.size[1], img.size
    img = img.convert("RGB" if channels == 3 else "L")
    if img.size[0] != resolution:
        img = img.resize((resolution, resolution), FILTERS[filter])
    a = np.asarray(img)
    if mode == "lineart":
        lines = (xdog or XDoG())(a.astype(np.float64) / 255.0)
        a = np.rint(lines * 255.0).astype(np.uint8)
    return np.ascontiguousarray(a.reshape(resolution, resolution, channels))


def preprocess(img: Image.Image, resolution: int, *, mode: str = "rgb", fit: str = "center_crop",
               pad: str = "white", filter: str = "bilinear", xdog: XDoG | None = None) -> np.ndarray:
    """An RGB/L image of any size -> uint8 [resolution, resolution, 3 or 1] in ``mode``."""
    return finish(fit_square(img, fit, pad), resolution, mode=mode, filter=filter, xdog=xdog)
