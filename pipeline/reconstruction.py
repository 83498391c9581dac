"""Reconstructing a prepared split with a trained tokenizer (train_tokenizer's validation and
evaluate's reconstruction metrics read the same numbers this way)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.formats.features import SplitFeatures
from pipeline.formats.prepared import SplitImages
from vfmtok.images import from_uint8, to_uint8
from vfmtok.runtime import autocast
from vfmtok.tokenizer import Tokenizer


@torch.no_grad()
def reconstruct(
    model: Tokenizer, images: SplitImages, features: SplitFeatures | None,
    batch_size: int, device: torch.device, limit: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(originals uint8, reconstructions uint8, token ids) for the first ``limit`` (0 = all) images."""
    n = len(images) if limit <= 0 else min(limit, len(images))
    originals, recons, ids = [], [], []
    for i in range(0, n, batch_size):
        idx = np.arange(i, min(i + batch_size, n))
        batch = images.uint8(idx)  # (B, H, W, 3)
        levels = None if features is None else [lv.to(device) for lv in features.batch(idx)]
        with autocast(device):
            out = model(from_uint8(batch).to(device), levels)
        originals.append(batch)
        recons.append(to_uint8(out.recon))
        ids.append(out.indices.cpu().numpy())
    return np.concatenate(originals), np.concatenate(recons), np.concatenate(ids)
