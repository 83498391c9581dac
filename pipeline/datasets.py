"""Training and evaluation views of the prepared shards: images by global index, with or without
the cached backbone levels, and the augmentation that forces features through the backbone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline import shards


class SplitImages:
    """Every prepared image of one split, addressable by a global index in manifest order."""

    def __init__(self, prepared: Path, split: str, in_memory: bool = True):
        man = shards.read_manifest(prepared)
        man = man[man["split"] == split].sort_values(["shard", "index"]).reset_index(drop=True)
        if man.empty:
            raise shards.ShardError(f"{prepared}: no '{split}' images in the manifest")
        self.rows: pd.DataFrame = man
        self.labels = torch.tensor(man["label"].to_numpy(), dtype=torch.long)
        self.shard_names = list(dict.fromkeys(man["shard"]))
        arrays = [shards.load_image_shard(prepared, s) for s in self.shard_names]
        # Rows of the manifest are exactly the shard rows, in order (prepare writes both).
        if sum(len(a) for a in arrays) != len(man):
            raise shards.ShardError(f"{prepared}: '{split}' shards and manifest disagree in length")
        self._arrays = [np.asarray(a) for a in arrays] if in_memory else arrays
        self._starts = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self) -> int:
        return len(self.rows)

    def uint8(self, indices: Tensor | np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 images at the given global indices."""
        idx = np.asarray(indices)
        which = np.searchsorted(self._starts, idx, side="right") - 1
        return np.stack([self._arrays[w][i - self._starts[w]] for w, i in zip(which, idx, strict=True)])

    def tensor(self, indices: Tensor | np.ndarray) -> Tensor:
        return shards.images_to_tensor(self.uint8(indices))  # (B, 3, H, W) in [-1, 1]


class SplitFeatures:
    """The cached backbone levels of one split, in the same order as :class:`SplitImages`."""

    def __init__(self, features: Path, images: SplitImages):
        per_shard = [shards.load_feature_shard(features, s) for s in images.shard_names]
        self.levels = [torch.cat([lv[i] for lv in per_shard]) for i in range(len(per_shard[0]))]
        if len(self.levels[0]) != len(images):
            raise shards.ShardError(f"{features}: feature rows do not match the image rows")

    def batch(self, indices: Tensor) -> list[Tensor]:
        return [lv[indices].float() for lv in self.levels]  # each (B, C_l, H_l, W_l)


def augment(images: Tensor, generator: torch.Generator, min_scale: float = 0.8) -> Tensor:
    """Random horizontal flip and a random square crop (``min_scale``-1 of the side) resized back."""
    b, _, h, w = images.shape
    out = []
    flips = torch.rand(b, generator=generator) < 0.5
    scales = min_scale + (1 - min_scale) * torch.rand(b, generator=generator)
    for x, flip, s in zip(images, flips, scales, strict=True):
        side = max(1, int(round(float(s) * h)))
        top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
        crop = x[:, top : top + side, left : left + side]
        if side != h:
            crop = F.interpolate(crop[None], size=(h, w), mode="bicubic", align_corners=False)[0]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out).clamp(-1, 1)


class TokenizerTrainData:
    """What the tokenizer's training loop asks for: images, plus the cached levels when the
    images are used as prepared (no augmentation), so the frozen backbone need not run."""

    def __init__(self, images: SplitImages, features: SplitFeatures | None, do_augment: bool):
        self.images, self.features, self.do_augment = images, features, do_augment

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: Tensor, generator: torch.Generator) -> tuple[Tensor, list[Tensor] | None]:
        x = self.images.tensor(indices)
        if self.do_augment:
            return augment(x, generator), None
        return x, self.features.batch(indices) if self.features is not None else None
