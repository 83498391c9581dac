"""LPIPS (VGG variant) from local weight files only.

VFMTok and LlamaGen train with LPIPS(VGG16). The reference ``lpips`` package downloads the
torchvision ImageNet weights at construction; here both the VGG16 weights (a torchvision
``vgg16`` state dict) and the LPIPS linear heads (the ``lpips`` package's ``vgg.pth``:
``lin{k}.model.1.weight`` of shape (1, C_k, 1, 1)) are read from local files, so a run is
reproducible offline and a missing file is an error, never a fetch.

Distance, per image: scale the [-1, 1] input with LPIPS' fixed shift/scale, take VGG16 relu1_2,
relu2_2, relu3_3, relu4_3 and relu5_3, unit-normalise every feature vector over channels,
square the difference, weight the channels with the 1x1 linear head, average over space and
sum the five layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vfmtok.device import autocast_off
from vfmtok.local_weights import read_state_dict

# Indices in torchvision's vgg16().features of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
VGG_TAPS: tuple[int, ...] = (3, 8, 15, 22, 29)
VGG_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
# LPIPS' ScalingLayer constants: [-1, 1] inputs -> roughly ImageNet-normalised VGG inputs.
LPIPS_SHIFT: tuple[float, ...] = (-0.030, -0.088, -0.188)
LPIPS_SCALE: tuple[float, ...] = (0.458, 0.448, 0.450)
_NORM_EPS = 1e-10  # as the lpips package: x / (||x|| + eps)


def read_weights(path: str, what: str) -> dict[str, Tensor]:
    """A local .safetensors or torch state dict (see :func:`vfmtok.local_weights.read_state_dict`)."""
    return read_state_dict(path, what)


def load_vgg16_features(path: str) -> nn.Sequential:
    """torchvision's VGG16 conv trunk up to relu5_3, weights from ``path`` only.

    Accepts a full torchvision ``vgg16`` state dict (classifier keys are ignored) or one of
    ``vgg16().features`` alone, with or without the ``features.`` prefix. The module is built
    on the meta device (no random init, no download) and every weight must come from the file.
    """
    from torchvision.models import vgg16

    sd = read_weights(path, "VGG16 weights")
    feats = {}
    for key, value in sd.items():
        if key.startswith("classifier."):
            continue
        feats[key.removeprefix("features.")] = value
    with torch.device("meta"):
        trunk = vgg16(weights=None).features[: VGG_TAPS[-1] + 1]
    trunk = trunk.to_empty(device="cpu")
    missing, unexpected = trunk.load_state_dict(feats, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"VGG16 weights file {path!r} does not fit torchvision's vgg16 features: "
            f"missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    return trunk


def load_lin_weights(path: str) -> list[Tensor]:
    """The five LPIPS 1x1 heads, each (1, C_k, 1, 1), from an ``lpips`` vgg.pth-style file."""
    sd = read_weights(path, "LPIPS linear weights")
    heads = []
    for k, ch in enumerate(VGG_CHANNELS):
        key = f"lin{k}.model.1.weight"
        if key not in sd:
            raise ValueError(f"LPIPS linear weights file {path!r} lacks {key!r} (keys: {sorted(sd)[:6]})")
        w = sd[key].float()
        if tuple(w.shape) != (1, ch, 1, 1):
            raise ValueError(f"{key} in {path!r} has shape {tuple(w.shape)}, expected (1, {ch}, 1, 1)")
        heads.append(w)
    return heads


class LPIPS(nn.Module):
    """Frozen LPIPS(VGG) distance between [-1, 1] image batches: forward(x, y) -> (B,)."""

    def __init__(self, vgg_weights: str, lin_weights: str) -> None:
        super().__init__()
        self.vgg = load_vgg16_features(vgg_weights)
        for k, w in enumerate(load_lin_weights(lin_weights)):
            self.register_buffer(f"lin{k}", w)  # (1, C_k, 1, 1)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> LPIPS:
        """Always eval: a fixed metric, not a trained part."""
        return super().train(False)

    def features(self, x: Tensor) -> list[Tensor]:
        """[-1, 1] images (B, 3, H, W) -> the five VGG relu maps (B, C_k, H_k, W_k)."""
        h = (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        taps = []
        for i, layer in enumerate(self.vgg):
            h = layer(h)
            if i in VGG_TAPS:
                taps.append(h)
        return taps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-image distance (B,) in fp32; differentiable w.r.t. both inputs."""
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        b = x.shape[0]
        feats = self.features(torch.cat([x, y]))  # one VGG pass for both batches
        total = x.new_zeros(b, dtype=torch.float32)
        with autocast_off(x.device.type):
            for k, f in enumerate(feats):
                f = f.float()
                f = f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + _NORM_EPS)  # unit channel vectors
                diff = (f[:b] - f[b:]).pow(2)  # (B, C_k, H_k, W_k)
                lin = getattr(self, f"lin{k}")
                total = total + (diff * lin).sum(dim=1).mean(dim=(1, 2))  # 1x1 conv, spatial mean
        return total
