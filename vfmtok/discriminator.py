"""GAN discriminator: small trainable heads on the frozen backbone's feature maps.

VFMTok (after StyleGAN-T / LlamaGen's DINO discriminator) does not train a conv
discriminator from scratch: it reuses a frozen vision foundation model as the trunk and
trains only light heads on its multi-level features. The frozen trunk already separates
natural from odd image statistics, so the heads learn fast and the GAN stays stable.

Here the trunk is the tokenizer's own ``FrozenBackbone``. The backbone is held as a plain
reference, not a submodule: ``parameters()`` and ``state_dict()`` are the heads only, so the
discriminator optimizer and checkpoint never carry the (large, file-backed) backbone. Moving
the backbone to a device is its owner's job (the tokenizer / ``TokenizerLoss``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmtok.backbones import FrozenBackbone
from vfmtok.decoder import group_norm
from vfmtok.device import autocast_off


class DiscHead(nn.Module):
    """One level's head: conv3x3 -> GroupNorm -> LeakyReLU(0.2) -> conv1x1 -> 1 logit map.

    ``spectral_norm``: both convs spectrally normalised (StyleGAN-T / the public code's DINO
    discriminator heads): it bounds how fast D's logits can grow, so a discriminator on a frozen,
    very separable trunk does not win outright in a few steps and hand the generator a useless
    gradient.
    """

    def __init__(self, in_ch: int, hidden: int, spectral_norm: bool = True) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        self.net = nn.Sequential(
            sn(nn.Conv2d(in_ch, hidden, 3, padding=1)),
            group_norm(hidden),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(hidden, 1, 1)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, C, H, W) -> (B, 1, H, W)


class Discriminator(nn.Module):
    """D(images) -> one logit map (B, 1, H_l, W_l) per backbone level (fp32)."""

    def __init__(self, backbone: FrozenBackbone, hidden: int = 128, spectral_norm: bool = True) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"discriminator hidden width must be positive, got {hidden}")
        object.__setattr__(self, "backbone", backbone)  # a reference, deliberately not registered
        self.heads = nn.ModuleList(DiscHead(c, hidden, spectral_norm) for c in backbone.level_channels)

    def trunk(self, images: Tensor) -> list[Tensor]:
        """Backbone levels of ``images``: with autograd to the image when it needs a gradient
        (the generator's term), else a cheaper no-grad pass (real and detached fake images)."""
        if torch.is_grad_enabled() and images.requires_grad:
            return self.backbone.levels_with_input_grad(images)
        return self.backbone(images).levels

    def forward(self, images: Tensor, levels: list[Tensor] | None = None) -> list[Tensor]:
        """images (B, 3, H, W) in [-1, 1], or their precomputed backbone ``levels`` (shared with
        the perceptual loss) -> list of (B, 1, H_l, W_l) logits."""
        if levels is None:
            levels = self.trunk(images)
        if len(levels) != len(self.heads):
            raise ValueError(f"expected {len(self.heads)} backbone levels, got {len(levels)}")
        # Heads in fp32 even under bf16 autocast: they are tiny and the hinge sits near 0.
        with autocast_off(levels[0].device.type):
            return [head(y.float()) for head, y in zip(self.heads, levels, strict=True)]

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Heads without grad for the generator's term: its backward then reaches the image
        (and the tokenizer) but leaves no stale gradients on the discriminator."""
        flags = [p.requires_grad for p in self.parameters()]
        self.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(self.parameters(), flags, strict=True):
                p.requires_grad_(flag)


def hinge_d_loss(real_logits: list[Tensor], fake_logits: list[Tensor]) -> Tensor:
    """mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), averaged over the levels."""
    terms = [
        torch.relu(1.0 - r.float()).mean() + torch.relu(1.0 + f.float()).mean()
        for r, f in zip(real_logits, fake_logits, strict=True)
    ]
    return torch.stack(terms).mean()


def hinge_g_loss(fake_logits: list[Tensor]) -> Tensor:
    """Generator term -mean(D(fake)), averaged over the levels (LlamaGen's hinge G loss)."""
    return -torch.stack([f.float().mean() for f in fake_logits]).mean()


def non_saturating_g_loss(fake_logits: list[Tensor]) -> Tensor:
    """Generator term mean(softplus(-D(fake))) = -log sigmoid(D(fake)), averaged over the levels
    (the public VFMTok code's choice): its gradient does not vanish while D rejects the fakes."""
    return torch.stack([F.softplus(-f.float()).mean() for f in fake_logits]).mean()
