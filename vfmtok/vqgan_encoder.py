"""The pixel-only baseline's encoder: a taming/LlamaGen-style conv net from the image to a
sqrt(N) x sqrt(N) grid of D-dim vectors.

It replaces the frozen backbone + anchor queries + deformable attention of VFMTok and nothing else:
the quantizer and the shared ViT + conv decoder are the same modules, so "VFMTok vs VQGAN" compares
the encoders (what the tokens are built from), not the decoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmtok.decoder import AttnBlock, ResBlock, group_norm


class Downsample(nn.Module):
    """3x3 conv with stride 2; taming's asymmetric (0, 1, 0, 1) padding so even sizes halve exactly."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class VQGANEncoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, N, out_dim) with N = (H / 2**(len(mult)-1))**2, raster order.

    conv_in, per level ``res_blocks`` ResBlocks (width ch * mult[i]) and a stride-2 downsample (all but
    the last level), mid (res, attn, res), GroupNorm -> SiLU -> 1x1 conv to ``out_dim`` (a per-position
    Linear to the tokenizer's d_model).
    """

    def __init__(self, ch: int, mult: list[int], res_blocks: int, out_dim: int, in_ch: int = 3) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        stages: list[nn.Module] = []
        c = ch
        for i, m in enumerate(mult):
            for _ in range(res_blocks):
                stages.append(ResBlock(c, ch * m))
                c = ch * m
            if i != len(mult) - 1:
                stages.append(Downsample(c))
        self.down = nn.Sequential(*stages)
        self.mid = nn.Sequential(ResBlock(c, c), AttnBlock(c), ResBlock(c, c))
        self.norm_out = group_norm(c)
        self.proj_out = nn.Conv2d(c, out_dim, 1)

    def forward(self, images: Tensor) -> Tensor:
        images = images.contiguous(memory_format=torch.channels_last)  # faster convs: see ConvDecoder
        h = self.mid(self.down(self.conv_in(images)))  # (B, C, g, g)
        z = self.proj_out(F.silu(self.norm_out(h)))  # (B, D, g, g)
        return z.flatten(2).transpose(1, 2)  # (B, g*g, D)
