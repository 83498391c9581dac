"""Image grids for people: reconstructions beside their originals, samples per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vfmtok import files


def grid(rows: list[np.ndarray], pad: int = 2, scale: int = 1) -> np.ndarray:
    """Stack rows of (N, H, W, 3) uint8 images into one (R*H', N*W', 3) picture with padding."""
    n = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    out = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = img
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def save_png(path: Path, picture: np.ndarray) -> None:
    files.write_with(path, lambda tmp: Image.fromarray(picture).save(tmp, format="PNG"))
