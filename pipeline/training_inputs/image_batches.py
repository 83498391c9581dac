"""What the tokenizer's training loop reads: prepared images by index, with the cached backbone
levels when the images are used as prepared, and the augmentation that forces them through the
backbone instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.formats.features import SplitFeatures
from pipeline.formats.prepared import SplitImages
from vfmtok.images import from_uint8


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
        x = from_uint8(self.images.uint8(indices.numpy()))  # (B, 3, H, W)
        if self.do_augment:
            return augment(x, generator), None
        return x, self.features.batch(indices) if self.features is not None else None
