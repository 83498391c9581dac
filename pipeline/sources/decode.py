"""Decoding one source image to the square RGB uint8 array that ``prepare`` stores.

Every way an image can be broken (truncated, not an image, unreadable, a decompression bomb)
becomes one :class:`BadImage` with the reason, which ``prepare`` lists and skips.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.sources.items import BadImage, SourceItem


def _to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, 16-bit, CMYK, palette and alpha images all become 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        img = Image.fromarray(np.round(a).astype(np.uint8), mode="L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size`` (bicubic, antialiased), then the central ``size`` x ``size``."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load_rgb(item: SourceItem, size: int) -> np.ndarray:
    """Decode one item to (size, size, 3) uint8, or raise :class:`BadImage` saying why."""
    try:
        if item.pixels is not None:
            img = Image.fromarray(np.ascontiguousarray(item.pixels))
        else:
            with Image.open(item.source_path) as f:
                f.load()  # a truncated file fails here, not later
                img = ImageOps.exif_transpose(f)
        return resize_center_crop(_to_rgb(img), size)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImage(f"{type(e).__name__}: {e}") from None
