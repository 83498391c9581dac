"""Reconstructing a prepared split with a trained tokenizer (train_tokenizer's validation and
evaluate's reconstruction metrics read the same numbers this way)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.formats.features import SplitFeatures
from pipeline.formats.prepared import SplitImages
from vfmtok.device import autocast
from vfmtok.images import from_uint8, to_uint8
from vfmtok.tokenizer import Tokenizer


@torch.no_grad()
def reconstruct_batch(model: Tokenizer, images: SplitImages, features: SplitFeatures | None,
                      idx: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(originals, reconstructions) (B, H, W, 3) uint8 and token ids (B, N) of the images at ``idx``."""
    batch = images.uint8(idx)
    levels = None if features is None else [lv.to(device) for lv in features.batch(idx)]
    with autocast(device):
        out = model(from_uint8(batch).to(device), levels)
    return batch, to_uint8(out.recon), out.indices.cpu().numpy()


def reconstruct(
    model: Tokenizer, images: SplitImages, features: SplitFeatures | None,
    batch_size: int, device: torch.device, limit: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(originals uint8, reconstructions uint8, token ids) for the first ``limit`` (0 = all) images."""
    n = len(images) if limit <= 0 else min(limit, len(images))
    parts = [reconstruct_batch(model, images, features, np.arange(i, min(i + batch_size, n)), device)
             for i in range(0, n, batch_size)]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]
