"""The image convention of every model here: (B, 3, H, W) float in [-1, 1]; on disk (B, H, W, 3) uint8."""

from __future__ import annotations

import numpy as np
import torch


def from_uint8(batch: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1] (a copy: inputs may be read-only maps)."""
    x = torch.from_numpy(np.array(batch, dtype=np.uint8, copy=True))
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] (clamped) -> (B, H, W, 3) uint8."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8 with PIL's bicubic filter (antialiased when
    shrinking), the resize ADM's reference batches were made with; unchanged when already there."""
    from PIL import Image

    if images.shape[1:3] == (size, size):
        return images
    out = [np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.BICUBIC)) for x in images]
    return np.stack(out)
