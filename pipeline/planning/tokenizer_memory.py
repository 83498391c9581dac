"""The peak memory of one tokenizer training step per GPU, from the tokenizer, its frozen backbone
and its loss built on the meta device (see pipeline/planning/memory.py for what a step holds).

The step counted is the generator's at its heaviest: after ``gan_start`` (the GAN term on when
``gan_weight`` > 0, its frozen trunk run with a gradient to the reconstruction) and with the
configured perceptual term. The discriminator's own update comes after the generator's backward
has freed its activations and saves far less (no-grad trunk), so it does not set the peak.

LPIPS' weights are local files: the pass stands in torchvision's VGG16 trunk at random init and zero
linear heads for them (the same modules, so the same activations) and runs LPIPS' own forward.

On a GPU the step runs under bf16 autocast; the meta device has none, so autocast's casts are
applied by hand at the module level: every Linear and convolution takes bf16 inputs (the copy
autograd saves), every LayerNorm and GroupNorm fp32 ones (autocast's fp32 list), except in the
discriminator heads, which run with autocast off. The weights stay fp32, so what the model adds
to them (position tables, residual streams) stays fp32 as under autocast. Casting the whole model
to bf16 (as ``generator_footprint`` does) would undercount those, and would count the backbone in
fp32, since its input normalisation calls ``.float()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING
from unittest import mock

from pipeline.params import Params
from pipeline.planning.memory import Footprint, per_sample

if TYPE_CHECKING:
    from vfmtok.config import BackboneConfig
    from vfmtok.losses import TokenizerLoss
    from vfmtok.tokenizer import Tokenizer


def tokenizer_footprint(params: Params, cuda: bool) -> Footprint:
    """The footprint of one tokenizer training step as the train_tokenizer stage takes it.

    ``trainable``: the tokenizer's trainable weights plus the discriminator heads' (they have
    their own Adam) when the GAN is on. ``frozen_bytes``: the frozen backbone's weights (and the
    VGG trunk's for LPIPS, and the idle heads' without the GAN) in fp32. Under autocast a frozen
    trunk that a loss runs with a gradient to its input also saves a bf16 copy of every weight
    (they need no gradient, so autocast keeps no cached copy of them): those bytes go to ``saved_fixed``.
    """
    import torch

    from vfmtok import quantizer

    tok, loss_fn = _build_on_meta(params)
    gan = loss_fn.discriminator is not None and loss_fn.cfg.gan_weight > 0
    everything = torch.nn.ModuleList([tok, loss_fn])  # the backbone, shared, is counted once
    forward = _generator_forward(params, tok, loss_fn)
    with (_autocast_inputs(everything, loss_fn.discriminator, torch.bfloat16 if cuda else None),
          mock.patch.object(quantizer, "code_histogram_stats", _no_histogram)):  # fmt: skip
        slope, fixed = per_sample(forward, everything)

    def count(module) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    heads = count(loss_fn.discriminator)  # built whenever there is a backbone, trained with the GAN
    trainable = sum(p.numel() for p in tok.parameters() if p.requires_grad) + (heads if gan else 0)
    vgg = loss_fn.lpips.vgg if loss_fn.lpips is not None else None
    frozen = count(loss_fn.backbone) + count(vgg) + (0 if gan else heads)
    if cuda:  # bf16 copies of the frozen weights that a loss differentiates through
        through_backbone = loss_fn.cfg.perceptual == "backbone" or gan
        fixed += 2 * (count(loss_fn.backbone) * through_backbone + count(vgg))
    return Footprint(trainable, 4 * frozen, 0, slope, fixed)


def meta_backbone_config(params: Params) -> BackboneConfig:
    """The profile's backbone at random init: the meta pass reads no weights file (as
    ``benchmarks/bench.py``'s ``paper_backbone_config``, for the EfficientNet too)."""
    return dataclasses.replace(params.backbone, weights="random", allow_random_init=True)


def _build_on_meta(params: Params) -> tuple[Tokenizer, TokenizerLoss]:
    """(tokenizer, loss) on the meta device, in training mode, as the stage builds them; LPIPS
    gets torchvision's VGG16 trunk at random init and zero heads instead of its weight files
    (the same modules, so the same activations: LPIPS runs the real forward, one VGG pass over
    the reconstructions and the images together, differentiable)."""
    import torch

    from vfmtok.backbones import build_backbone
    from vfmtok.losses import TokenizerLoss
    from vfmtok.tokenizer import build_tokenizer

    with torch.device("meta"), lpips_without_files(torch.zeros):
        backbone = build_backbone(meta_backbone_config(params))
        tok = build_tokenizer(params.tokenizer, backbone if params.tokenizer.kind == "vfmtok" else None)
        loss_fn = TokenizerLoss(params.train_tokenizer.loss, backbone)
    return tok.train(), loss_fn


@contextlib.contextmanager
def lpips_without_files(make_head: Callable) -> Iterator[None]:
    """Inside, LPIPS is built without its weight files: torchvision's VGG16 trunk at random init
    (up to relu5_3) and heads from ``make_head(1, C, 1, 1)`` (``torch.zeros``, ``torch.rand``)."""
    from torchvision.models import vgg16

    from vfmtok import lpips

    def trunk(path: str):
        return vgg16(weights=None).features[: lpips.VGG_TAPS[-1] + 1]

    def heads(path: str):
        return [make_head(1, c, 1, 1) for c in lpips.VGG_CHANNELS]

    with (mock.patch.object(lpips, "load_vgg16_features", trunk),
          mock.patch.object(lpips, "load_lin_weights", heads)):  # fmt: skip
        yield


def _generator_forward(params: Params, tok: Tokenizer, loss_fn: TokenizerLoss) -> Callable[[int], None]:
    """``forward(batch)``: the generator's loss as ``TokenizerSteps.loss`` computes it, late in
    the run (every term on). Without augmentation the backbone levels are inputs (the stage
    reads them from the feature cache); with it the tokenizer runs the frozen backbone on the
    images under no_grad."""
    import torch

    size = params.tokenizer.image_size
    cached = params.tokenizer.kind == "vfmtok" and not params.train_tokenizer.augment
    backbone = loss_fn.backbone
    semantic_weight = loss_fn.cfg.semantic_weight

    def forward(batch: int) -> None:
        images = torch.zeros(batch, 3, size, size, device="meta")  # (B, 3, H, W) in [-1, 1]
        levels = None
        if cached:  # (B, C_l, H_l, W_l) fp32 each
            levels = [torch.zeros(batch, c, h, w, device="meta")
                      for c, (h, w) in zip(backbone.level_channels, backbone.level_shapes, strict=True)]
        out = tok(images, levels)
        g = loss_fn.generator_losses(images, out.recon, 1.0, image_levels=levels)
        total = sum(g.values()) + out.vq.loss + semantic_weight * out.semantic_loss
        if not total.requires_grad:  # no graph, nothing saved: the count would be a silent 0
            raise RuntimeError("the meta pass built no autograd graph")

    return forward


def _no_histogram(indices, n_embed: int):
    """The quantizer's code usage and perplexity on meta tensors (torch.bincount has no meta
    kernel); a no-grad statistic, so it saves nothing either way."""
    import torch

    zero = indices.new_zeros((), dtype=torch.float32)
    return zero, zero


@contextlib.contextmanager
def _autocast_inputs(root, skip, dtype) -> Iterator[None]:
    """Inside, the modules of ``root`` outside ``skip`` take their inputs in the dtype CUDA
    autocast gives them: every Linear and convolution ``dtype`` (None: nothing changes), the
    LayerNorms and GroupNorms fp32 (autocast's fp32 list). A convolution's weights are cast too
    (the meta kernel wants one dtype, as autocast's copy has): on the meta model, which is thrown
    away, so only the hooks need undoing."""
    import torch
    from torch import nn

    def cast_to(to):
        def cast(module, args):
            return tuple(a.to(to) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
        return cast

    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)
    rules = [((nn.Linear, *convs), dtype), ((nn.LayerNorm, nn.GroupNorm), torch.float32)]
    skipped = set() if skip is None else {id(m) for m in skip.modules()}
    modules = [m for m in root.modules() if id(m) not in skipped] if dtype is not None else []
    hooks = [m.register_forward_pre_hook(cast_to(to)) for types, to in rules
             for m in modules if isinstance(m, types)]
    for m in modules:
        if isinstance(m, convs):
            m.to(dtype)
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
