"""``vfmtok-pipeline check``'s second half: build every model a params file describes, on torch's
meta device, through the builders the stages call (``check.py`` is the command; this module,
torch and the builders are imported only when it builds, not for ``check --no-build``).

Why: some rules are known only to a built model. Whether ``backbone.model`` is a timm ViT at all,
its depth (``backbone.taps``), its patch size (``prepare.resolution``), how many levels the taps
give (``tokenizer.semantic_level``). Each of those rules is declared once, in its builder
(``vfmtok.backbones``, ``vfmtok.tokenizer``, ...), as a ``ConfigError`` naming the params key: a
stage that builds the model fails with the same one line as ``check`` (exit 2, no retry). Rules
that need no model live in the configs' ``validate()`` and ``load_params`` enforces them.

On the meta device a module has shapes and dtypes but no storage and no arithmetic, so even the
paper-scale models (a ViT-L/14, a 73M tokenizer, a GPT-B; the judge, the same ViT config, is
built once) build in half a second on 2 cores: importing torch and timm takes longer. Nothing is
read: a weights file is swapped for random init of the same architecture (``load_params`` has
checked that the file exists), LPIPS's two files likewise, and no data: the number of classes is
unknown before ``prepare``, so :data:`PLACEHOLDER_CLASSES` stands in (it sizes one embedding
table and no rule depends on it).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields, is_dataclass

import torch

from pipeline.params import Params
from vfmtok.backbones import FrozenBackbone, build_backbone
from vfmtok.config import BackboneConfig, Device, LossConfig
from vfmtok.config_schema import ConfigError, origin_of, replace
from vfmtok.losses import TokenizerLoss
from vfmtok.tokenizer import Tokenizer, build_tokenizer
from vfmtok.transformer import Generator
from vfmtok.zoo import build_from_config

PLACEHOLDER_CLASSES = 10


@dataclass
class Models:
    """What the stages build from one params file."""

    backbone: FrozenBackbone  # extract_features, train_tokenizer (tokenize and later: from the folder)
    tokenizer: Tokenizer  # train_tokenizer
    loss: TokenizerLoss  # train_tokenizer (its GAN heads sit on the backbone's levels)
    generator: Generator  # train_ar (sample: from the folder, checked against the same config)
    judge: FrozenBackbone  # evaluate, and train_ar's sample-quality checks


def architecture(cfg: BackboneConfig) -> BackboneConfig:
    """``cfg`` with random init instead of its weights: the same architecture, no file read."""
    return cfg if cfg.weights == "random" else replace(cfg, weights="random", allow_random_init=True)


def loss_architecture(cfg: LossConfig) -> LossConfig:
    """``cfg`` without LPIPS (a fixed VGG16 read from two files that ``load_params`` checks exist)
    and without the discriminator's spectral norm (a parametrization of the same convolutions whose
    15 power iterations at build time take a second on the meta device and decide no shape):
    every other part of the loss, the discriminator heads among them, is built."""
    return replace(cfg, perceptual="none" if cfg.perceptual == "lpips" else cfg.perceptual,
                   disc_spectral_norm=False)


def build_models(params: Params, device: str | torch.device = "meta",
                 num_classes: int = PLACEHOLDER_CLASSES) -> Models:
    """The stages' models of ``params`` on ``device``, built the way the stages build them."""
    t = params.tokenizer
    with torch.device(device):
        backbone = build_backbone(architecture(params.backbone))
        tokenizer = build_tokenizer(t, backbone if t.kind == "vfmtok" else None)
        loss = TokenizerLoss(loss_architecture(params.train_tokenizer.loss), backbone)
        model_cfg = params.ar_model.model_config(t.codebook_size, t.n_tokens, num_classes)
        generator = build_from_config(model_cfg)
        judge_cfg = architecture(params.judge)  # the same config builds the same model: once
        judge = backbone if judge_cfg == backbone.config else build_backbone(judge_cfg)
    return Models(backbone, tokenizer, loss, generator, judge)


def device_fields(obj: object, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, value)`` of every ``Device`` field of a config, recursively."""
    out = []
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            out += device_fields(value, f"{key}.")
        elif hints[f.name] == Device:
            out.append((key, value))
    return out


def check_devices(params: Params) -> None:
    """``device: cuda`` where this machine has none (a stage would stop at its first tensor)."""
    if torch.cuda.is_available():
        return
    for key, value in device_fields(params):
        if value == "cuda":
            raise ConfigError(key, value, "this machine has no CUDA device (torch.cuda.is_available() "
                              "is False): use auto or cpu here", origin_of(params)[1])


def check_models(params: Params, machine: bool = True) -> Models:
    """Build ``params``' models on the meta device (a ConfigError names the first key a builder
    refuses); ``machine``: also what this machine must offer (CUDA where a stage asks for it)."""
    if machine:
        check_devices(params)
    return build_models(params)
