"""VFMTok's tokenizer, and the pixel-only VQGAN baseline built from the same parts.

vfmtok: frozen backbone levels -> per-level projection MLPs -> N learned anchor queries on a fixed
sqrt(N) x sqrt(N) reference grid, refined by post-norm layers of multi-scale deformable attention
(region-adaptive sampling of the levels), causal self-attention and a ReLU FFN -> Linear down to a
low-dim L2-normalised codebook -> Linear back up -> the shared causal ViT decoder (pixel branch ->
conv decoder; semantic branch -> one backbone level, the last as published, training only).

vqgan: a conv encoder on the pixels to a sqrt(N) x sqrt(N) grid replaces everything before the
quantizer; quantizer and decoder are the same modules (pixel branch only).

The frozen backbone is a submodule (so ``.to(device)`` moves it) but is left out of
``state_dict()``: it has its own weights file, and tokenizer checkpoints (and EMA copies) stay small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmtok import model_folder
from vfmtok.backbones import build_backbone
from vfmtok.config import BackboneConfig, TokenizerConfig
from vfmtok.config_schema import config_error, to_dict, validate
from vfmtok.decoder import ConvDecoder, SelfAttention, ViTDecoder
from vfmtok.deform_attn import MSDeformAttn
from vfmtok.quantizer import QuantizerStats, VectorQuantizer
from vfmtok.vqgan_encoder import VQGANEncoder

ANCHOR_GAIN = 0.1  # initial LayerNorm gain of the anchor queries (see AnchorEncoder)


@dataclass
class TokenizerOutput:
    recon: Tensor  # (B, 3, H, W), unclamped
    indices: Tensor  # (B, N) long
    vq: QuantizerStats
    semantic_loss: Tensor  # scalar: mean(1 - cos) over positions; 0 when there is no semantic branch


# ----------------------------------------------------------------------------- VFMTok encoder


class LevelProjection(nn.Module):
    """One backbone level (B, C, H, W) -> (B, D, H, W): Linear -> LN -> ReLU -> Linear -> LN -> LN."""

    def __init__(self, c_in: int, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(c_in, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(),
            nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.LayerNorm(dim),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        y = self.mlp(x.flatten(2).transpose(1, 2))  # (B, HW, D)
        return y.transpose(1, 2).reshape(B, -1, H, W)


class AnchorEncoderLayer(nn.Module):
    """Post-norm: deformable attention to the levels -> add&LN -> causal self-attention over the
    queries -> add&LN -> ReLU FFN -> add&LN (Deformable-DETR encoder layer + a causal mixer).

    ``pos_on_values``: the self-attention's values see the positions too (the public code's
    layer), instead of the queries and keys only."""

    def __init__(self, dim: int, n_levels: int, n_heads: int, n_points: int, ffn_dim: int,
                 pos_on_values: bool = False) -> None:
        super().__init__()
        self.pos_on_values = pos_on_values
        self.deform = MSDeformAttn(dim, n_levels, n_heads, n_points)
        self.self_attn = SelfAttention(dim, n_heads, causal=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Linear(ffn_dim, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, q: Tensor, pos: Tensor, ref: Tensor, maps: list[Tensor]) -> Tensor:
        q = self.norm1(q + self.deform(q + pos, ref, maps))  # (B, N, D)
        mixed = self.self_attn(q + pos) if self.pos_on_values else self.self_attn(q, pos)
        q = self.norm2(q + mixed)
        return self.norm3(q + self.ffn(q))


class AnchorEncoder(nn.Module):
    """Backbone levels -> N region-adaptive token features (B, N, D) in raster anchor order.

    The anchors' LayerNorm gain starts at ``ANCHOR_GAIN`` instead of 1: with unit-variance anchors
    as the residual stream, the image content that the first deformable attention adds is ~4% of
    the token variance at init (at demo scale), so every image gets the same codes and short runs
    learn only the mean image. At 0.1 the first layer's output is image-dominated (DETR starts its
    object queries' content at zero for the same reason); the gain is learned afterwards.
    """

    def __init__(
        self, level_channels: list[int], n_tokens: int, dim: int, layers: int, n_heads: int,
        n_points: int, ffn_dim: int, pos_on_values: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        scale = dim**-0.5  # N(0, 1/D)
        self.projections = nn.ModuleList(LevelProjection(c, dim) for c in level_channels)
        self.queries = nn.Parameter(torch.randn(1, n_tokens, dim) * scale)
        self.query_pos = nn.Parameter(torch.randn(1, n_tokens, dim) * scale)
        self.norm_queries = nn.LayerNorm(dim)
        nn.init.constant_(self.norm_queries.weight, ANCHOR_GAIN)
        self.layers = nn.ModuleList(
            AnchorEncoderLayer(dim, len(level_channels), n_heads, n_points, ffn_dim, pos_on_values)
            for _ in range(layers)
        )
        self.register_buffer("reference_points", self.reference_grid(math.isqrt(n_tokens)), persistent=False)
        self._reset_parameters()

    @staticmethod
    def reference_grid(g: int) -> Tensor:
        """(1, g*g, 2) anchor centres ((j + 0.5) / g, (i + 0.5) / g) as (x, y), token i*g + j."""
        c = (torch.arange(g, dtype=torch.float32) + 0.5) / g
        y, x = torch.meshgrid(c, c, indexing="ij")  # (g, g) each
        return torch.stack([x.flatten(), y.flatten()], dim=-1)[None]

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        # xavier on every Linear first (the public code's init loop iterates over parameters looking
        # for Linear modules and so does nothing); the Deformable-DETR init must come AFTER it.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()

    def forward(self, levels: list[Tensor]) -> Tensor:
        maps = [proj(lv) for proj, lv in zip(self.projections, levels, strict=True)]  # (B, D, H_l, W_l)
        B = levels[0].shape[0]
        q = self.norm_queries(self.queries).expand(B, -1, -1)  # (B, N, D)
        ref = self.reference_points.expand(B, -1, -1)  # (B, N, 2)
        for layer in self.layers:
            q = layer(q, self.query_pos, ref, maps)
        return q


# ----------------------------------------------------------------------------- tokenizers


class Tokenizer(nn.Module):
    """Shared quantizer + decoder; subclasses provide ``_latents`` (the encoder side)."""

    def __init__(self, cfg: TokenizerConfig, semantic_shape: tuple[int, int] | None, semantic_ch: int):
        super().__init__()
        self.cfg = cfg
        self.pre_quant = nn.Linear(cfg.dim, cfg.codebook_dim)
        self.quant_norm = nn.BatchNorm1d(cfg.codebook_dim, affine=False) if cfg.quant_batchnorm else None
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.codebook_dim, cfg.beta)
        self.post_quant = nn.Linear(cfg.codebook_dim, cfg.dim)
        self.decoder = ViTDecoder(
            cfg.dim, cfg.dec_layers, cfg.n_heads, cfg.dec_ffn_dim, cfg.n_tokens, cfg.pixel_grid,
            cfg.n_registers, semantic_shape, semantic_ch, cfg.dec_out_norm, cfg.dec_slot_skip,
        )  # fmt: skip
        self.pixel_decoder = ConvDecoder(cfg.dim, cfg.conv_ch, cfg.conv_mult, cfg.conv_res_blocks,
                                         padding_mode=cfg.conv_padding)

    @property
    def n_tokens(self) -> int:
        return self.cfg.n_tokens

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    def _latents(self, images: Tensor | None, levels: list[Tensor] | None) -> tuple[Tensor, Tensor | None]:
        """-> pre-quantization token features (B, N, D) and the semantic target (or None)."""
        raise NotImplementedError

    def _pre_quant(self, z: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, codebook_dim) vectors to quantize (before the L2 normalisation)."""
        h = self.pre_quant(z)
        if self.quant_norm is not None:  # batch statistics in training, running ones in eval
            h = self.quant_norm(h.float().transpose(1, 2)).transpose(1, 2)
        return h

    def _quantize(self, z: Tensor) -> tuple[Tensor, Tensor, QuantizerStats]:
        """(B, N, D) -> straight-through slots (B, N, D) for the decoder, indices (B, N), stats."""
        z_q, indices, stats = self.quantizer(self._pre_quant(z))  # (B, N, codebook_dim)
        return self.post_quant(z_q), indices, stats

    def _pixels(self, slots: Tensor) -> Tensor:
        return self.pixel_decoder(self.decoder.pixel_features(slots))  # (B, 3, H, W)

    def forward(self, images: Tensor | None, levels: list[Tensor] | None = None) -> TokenizerOutput:
        z, target = self._latents(images, levels)
        slots, indices, stats = self._quantize(z)
        recon = self._pixels(slots)
        semantic_loss = torch.zeros((), device=recon.device)
        if target is not None and self.training and self.decoder.semantic is not None:
            pred = self.decoder.semantic_prediction(slots)  # (B, C, S_h, S_w)
            cos = F.cosine_similarity(pred.float(), target.detach().float(), dim=1)  # (B, S_h, S_w)
            semantic_loss = (1.0 - cos).mean()
        return TokenizerOutput(recon, indices, stats, semantic_loss)

    @torch.no_grad()
    def encode(self, images: Tensor | None, levels: list[Tensor] | None = None) -> Tensor:
        """Token ids (B, N) long, in anchor (raster) order."""
        z, _ = self._latents(images, levels)
        return self.quantizer.nearest(F.normalize(self._pre_quant(z).float(), dim=-1))

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """Token ids (B, N) -> images (B, 3, H, W) clamped to [-1, 1] (no autograd: training
        differentiates ``forward``'s unclamped ``recon`` instead)."""
        if indices.ndim != 2 or indices.shape[1] != self.n_tokens:
            raise ValueError(f"indices must be (B, {self.n_tokens}), got {tuple(indices.shape)}")
        slots = self.post_quant(self.quantizer.lookup(indices))  # (B, N, D)
        return self._pixels(slots).clamp(-1.0, 1.0)

    def token_features(self, indices: Tensor) -> Tensor:
        """Dequantized unit code vectors (B, N, codebook_dim), e.g. for a linear probe."""
        return self.quantizer.lookup(indices)

    # ------------------------------------------------------------------ model folders

    @property
    def backbone_config(self) -> BackboneConfig | None:
        """The frozen backbone's config (None for the vqgan kind, which has none)."""
        return None

    def save_pretrained(self, folder: str | Path) -> str:
        """``folder/{model.safetensors, config.json}``: the trainable weights (never the frozen
        backbone's) and the tokenizer and backbone configs; returns the weights' sha256."""
        bb = self.backbone_config
        sections = {"tokenizer": to_dict(self.cfg), "backbone": None if bb is None else to_dict(bb)}
        return model_folder.save_folder(folder, "tokenizer", self.state_dict(), sections)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu",
                        backbone: nn.Module | None = None, backbone_weights: str | None = None) -> Tokenizer:
        """The tokenizer saved in ``folder``, in eval mode, rebuilt from the folder alone.

        The frozen backbone is built from the stored config (its weights: "bundled", or the
        local file it names; ``backbone_weights`` points elsewhere on this machine), unless an
        already built ``backbone`` of the same config is passed.
        """
        meta = model_folder.read_config(folder, "tokenizer")
        cfg = model_folder.section(meta, "tokenizer", TokenizerConfig, folder)
        if cfg.kind == "vfmtok" and backbone is None:
            bb_cfg = model_folder.section(meta, "backbone", BackboneConfig, folder)
            if backbone_weights:
                bb_cfg = replace(bb_cfg, weights=backbone_weights)
            backbone = build_backbone(bb_cfg)
        model = build_tokenizer(cfg, backbone)
        model.load_state_dict(model_folder.load_weights(folder))
        return model.to(device).eval()


class VFMTokenizer(Tokenizer):
    """Tokens from a frozen backbone's multi-level features via anchor queries (the paper's model)."""

    def __init__(self, cfg: TokenizerConfig, backbone: Any) -> None:
        n_levels = len(backbone.level_channels)
        if not -n_levels <= cfg.semantic_level < n_levels:  # the backbone's taps decide the count
            raise config_error(cfg, "semantic_level", cfg.semantic_level, f"must be one of the "
                               f"backbone's {n_levels} levels ({-n_levels}..{n_levels - 1}: one per tap)")
        sem = cfg.semantic_level % n_levels
        sem_shape = tuple(backbone.level_shapes[sem]) if cfg.semantic else None
        super().__init__(cfg, sem_shape, int(backbone.level_channels[sem]))
        self.semantic_index = sem
        self.level_channels = [int(c) for c in backbone.level_channels]
        self.level_shapes = [tuple(int(v) for v in s) for s in backbone.level_shapes]
        self.backbone = backbone  # a registered submodule when it is an nn.Module
        self.encoder = AnchorEncoder(
            self.level_channels, cfg.n_tokens, cfg.dim, cfg.enc_layers, cfg.n_heads, cfg.n_points,
            cfg.enc_ffn_dim, cfg.enc_pos_on_values,
        )  # fmt: skip
        self.register_state_dict_post_hook(_drop_backbone_keys)
        self.register_load_state_dict_pre_hook(_fill_backbone_keys)

    @property
    def backbone_config(self) -> BackboneConfig | None:
        return getattr(self.backbone, "config", None)

    def _check_levels(self, levels: list[Tensor]) -> None:
        got = [(int(lv.shape[1]), tuple(lv.shape[-2:])) for lv in levels]
        want = list(zip(self.level_channels, self.level_shapes, strict=True))
        if got != want or any(lv.ndim != 4 for lv in levels):
            raise ValueError(f"levels (C, (H, W)) {got} do not match the backbone's {want}")

    def _latents(self, images: Tensor | None, levels: list[Tensor] | None) -> tuple[Tensor, Tensor | None]:
        if levels is None:
            if images is None:
                raise ValueError("vfmtok needs images or cached backbone levels")
            if not isinstance(self.backbone, nn.Module):
                raise RuntimeError("no runnable backbone: pass cached levels")
            levels = self.backbone(images).levels
        self._check_levels(levels)
        return self.encoder(levels), levels[self.semantic_index]


class VQGANTokenizer(Tokenizer):
    """Pixel-only baseline: conv encoder on the image, same quantizer and decoder, no semantics."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__(cfg, None, 0)
        self.encoder = VQGANEncoder(cfg.vqgan_ch, cfg.vqgan_mult, cfg.conv_res_blocks, cfg.dim)

    def _latents(self, images: Tensor | None, levels: list[Tensor] | None) -> tuple[Tensor, Tensor | None]:
        if images is None:
            raise ValueError("the vqgan tokenizer encodes images; got images=None")
        size = self.cfg.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected images (B, 3, {size}, {size}), got {tuple(images.shape)}")
        return self.encoder(images), None


def _drop_backbone_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: the frozen backbone is not part of the tokenizer's checkpoint."""
    for key in [k for k in state_dict if k.startswith(prefix + "backbone.")]:
        del state_dict[key]


def _fill_backbone_keys(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: keep the live backbone's tensors, so strict loading of a checkpoint
    without "backbone.*" keys works (and one with them still loads them)."""
    backbone = getattr(module, "backbone", None)
    if isinstance(backbone, nn.Module):
        for key, value in backbone.state_dict().items():
            state_dict.setdefault(f"{prefix}backbone.{key}", value)


def build_tokenizer(cfg: TokenizerConfig, backbone: Any = None) -> Tokenizer:
    """Build the tokenizer ``cfg`` describes. vfmtok needs ``backbone`` (a FrozenBackbone, or any
    object with ``level_channels``, ``level_shapes`` and ``image_size``); vqgan ignores it."""
    validate(cfg)
    if cfg.kind == "vqgan":
        return VQGANTokenizer(cfg)
    if backbone is None:
        raise ValueError("a vfmtok tokenizer needs the frozen backbone (its levels are the input)")
    if int(backbone.image_size) != cfg.image_size:
        raise config_error(cfg, "image_size", cfg.image_size,
                           f"must equal the backbone image_size {backbone.image_size}")
    return VFMTokenizer(cfg, backbone)
