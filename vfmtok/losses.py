"""The tokenizer's image losses: pixel MSE, a perceptual term and a late-starting GAN.

VFMTok trains with 2 x MSE + LPIPS(VGG) + a GAN whose discriminator is a frozen VFM with
small trainable heads (hinge for D; for G the public code's non-saturating softplus(-D(fake)) or
LlamaGen's hinge -mean(D(fake)); weight 0.5 from step 20k), next to the quantizer and semantic
losses that the tokenizer itself returns. ``TokenizerLoss`` computes the image terms; the trainer
adds ``vq.loss`` and ``semantic_weight x semantic_loss`` and steps the discriminator with
``discriminator_loss``. Both take the run's ``progress`` (step / steps): the GAN switches on at
``gan_start``, a share of the run.

Perceptual choices: "lpips" as published (needs local VGG16 + LPIPS head files), "backbone"
(the same distance on the frozen backbone the tokenizer already holds: no extra weights) or
"none".

Everything is reduced in fp32, so the loss works inside a CUDA bf16 autocast region.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmtok.backbones import FrozenBackbone
from vfmtok.config import LossConfig
from vfmtok.config_schema import config_error, validate
from vfmtok.device import autocast_off
from vfmtok.discriminator import Discriminator, hinge_d_loss, hinge_g_loss, non_saturating_g_loss
from vfmtok.lpips import LPIPS


def feature_loss(pred_levels: list[Tensor], target_levels: list[Tensor]) -> Tensor:
    """LPIPS's distance without its learned weights, on any list of feature maps (B, C_l, H_l, W_l):
    per level, the squared difference of channel-L2-normalised features summed over channels and
    averaged over positions; summed over levels.

    Normalising each position's feature vector makes levels of very different magnitude count
    alike; summing (not averaging) over channels keeps the scale of LPIPS (a unit vector
    difference is in [0, 4] per position), so the term weighs like the published one instead of
    ~1/C of it.
    """
    if len(pred_levels) != len(target_levels):
        raise ValueError(f"level count differs: {len(pred_levels)} vs {len(target_levels)}")
    with autocast_off(pred_levels[0].device.type):
        terms = [
            (F.normalize(p.float(), dim=1) - F.normalize(t.float(), dim=1)).pow(2).sum(1).mean()
            for p, t in zip(pred_levels, target_levels, strict=True)
        ]
        return torch.stack(terms).sum()


def _lpips(cfg: LossConfig) -> LPIPS:
    """LPIPS from the two files of ``cfg``; a file that is no such weights file is the user's to
    fix, so it is a ConfigError naming its key (a missing one is a FileNotFoundError already)."""
    try:
        return LPIPS(cfg.lpips_vgg_weights, cfg.lpips_lin_weights)
    except (ValueError, RuntimeError) as e:
        name = "lpips_lin_weights" if repr(cfg.lpips_lin_weights) in str(e) else "lpips_vgg_weights"
        raise config_error(cfg, name, getattr(cfg, name), " ".join(str(e).split())) from e


class TokenizerLoss(nn.Module):
    """Pixel + perceptual + GAN terms for the tokenizer, and the discriminator's hinge loss.

    The only trainable parameters are the discriminator heads (``self.discriminator``,
    optimised by the trainer with ``cfg.disc_lr``); the backbone and LPIPS are frozen and
    ``state_dict()`` holds the discriminator only (frozen weights come from their own files).
    """

    def __init__(self, cfg: LossConfig, backbone: FrozenBackbone | None, disc_hidden: int = 128) -> None:
        super().__init__()
        validate(cfg)
        self.cfg = cfg
        needs_backbone = cfg.perceptual == "backbone" or cfg.gan_weight > 0
        if backbone is None and needs_backbone:
            raise ValueError(
                "TokenizerLoss needs a backbone for perceptual='backbone' and for the GAN "
                f"(gan_weight={cfg.gan_weight}); pass the frozen backbone or turn both off"
            )
        if cfg.perceptual not in ("lpips", "backbone", "none"):
            raise ValueError(f"unknown perceptual loss {cfg.perceptual!r}")
        self.backbone = backbone  # shared with the tokenizer; frozen (no trainable params)
        self.lpips = None
        if cfg.perceptual == "lpips":
            self.lpips = _lpips(cfg)
        # Built whenever there is a trunk, so the trainer can always make its D optimizer;
        # it is only used once gan_active(step).
        self.discriminator = (Discriminator(backbone, disc_hidden, spectral_norm=cfg.disc_spectral_norm)
                              if backbone is not None else None)

    # ------------------------------------------------------------------ switches

    def gan_active(self, progress: float) -> bool:
        """True once ``progress`` (the share of the run done) reaches ``gan_start`` (and the GAN is
        configured at all)."""
        return self.discriminator is not None and self.cfg.gan_weight > 0 and progress >= self.cfg.gan_start

    # ------------------------------------------------------------------ generator side

    def generator_losses(
        self, images: Tensor, recon: Tensor, progress: float, image_levels: list[Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Already-weighted scalar fp32 terms {"pixel", "perceptual", "gan"} for the tokenizer.

        images: targets (B, 3, H, W) in [-1, 1]; recon: the tokenizer's output, same shape,
        differentiable. Gradients reach ``recon`` only (never the backbone, LPIPS or the
        discriminator heads). ``image_levels``: the backbone levels of exactly these images if
        the caller already has them (the tokenizer's input), saving one backbone pass.
        """
        if images.shape != recon.shape:
            raise ValueError(f"images {tuple(images.shape)} and recon {tuple(recon.shape)} differ")
        cfg = self.cfg
        with autocast_off(recon.device.type):
            pixel = cfg.pixel_weight * F.mse_loss(recon.float(), images.float())

        gan_on = self.gan_active(progress)
        fake_levels = None  # backbone levels of recon with autograd, shared by both terms
        if cfg.perceptual == "backbone" or gan_on:
            fake_levels = self.backbone.levels_with_input_grad(recon)

        if cfg.perceptual == "backbone":
            target_levels = image_levels if image_levels is not None else self.backbone(images).levels
            perceptual = cfg.perceptual_weight * feature_loss(fake_levels, target_levels)
        elif cfg.perceptual == "lpips":
            perceptual = cfg.perceptual_weight * self.lpips(recon, images).mean()
        else:
            perceptual = recon.new_zeros((), dtype=torch.float32)

        gan = recon.new_zeros((), dtype=torch.float32)
        if gan_on:
            with self.discriminator.frozen():
                logits = self.discriminator(recon, levels=fake_levels)
            g_loss = hinge_g_loss if cfg.gan_loss == "hinge" else non_saturating_g_loss
            gan = cfg.gan_weight * g_loss(logits)
        return {"pixel": pixel, "perceptual": perceptual, "gan": gan}

    # ------------------------------------------------------------------ discriminator side

    def discriminator_loss(
        self, images: Tensor, recon: Tensor, progress: float, image_levels: list[Tensor] | None = None
    ) -> Tensor | None:
        """Hinge loss of the discriminator heads on real ``images`` vs ``recon`` (detached);
        None before ``gan_start`` (or with gan_weight 0): there is no D step to take.
        ``image_levels`` as in ``generator_losses``."""
        if not self.gan_active(progress):
            return None
        if image_levels is not None:
            image_levels = [y.detach() for y in image_levels]
        real = self.discriminator(images.detach(), levels=image_levels)
        fake = self.discriminator(recon.detach())
        return hinge_d_loss(real, fake)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """Only the discriminator heads ("discriminator.*"): the backbone and LPIPS are frozen and
        come from their own weight files, so checkpoints stay small."""
        if self.discriminator is None:
            return OrderedDict() if destination is None else destination
        return self.discriminator.state_dict(
            destination=destination, prefix=prefix + "discriminator.", keep_vars=keep_vars
        )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load what ``state_dict()`` wrote (keys "discriminator.*")."""
        sub = {
            k.removeprefix("discriminator."): v
            for k, v in state_dict.items()
            if k.startswith("discriminator.")
        }
        if strict and len(sub) != len(state_dict):
            extra = sorted(k for k in state_dict if not k.startswith("discriminator."))
            raise RuntimeError(f"unexpected keys in TokenizerLoss state dict: {extra[:6]}")
        if self.discriminator is None:
            if sub and strict:
                raise RuntimeError("state dict has discriminator weights but this loss has no GAN")
            return None
        return self.discriminator.load_state_dict(sub, strict=strict, assign=assign)
