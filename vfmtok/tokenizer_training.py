"""The tokenizer's training: Adam (0.9, 0.95), warmup then constant lr, grad clipping, EMA weights,
bf16 autocast on CUDA, dead-code restarts and an optional GAN discriminator, on the loop both
trainings share (``vfmtok.training``: resume, logs, checkpoints).

It knows nothing of files besides its checkpoint: data comes from a :class:`TrainData` (cached
backbone features or images through the backbone) and each step's losses go to ``on_log``.

Under torchrun (see ``vfmtok.distributed``) it runs with DDP: ``batch_size`` is the global batch,
each rank loads its contiguous share of the step's indices, the discriminator heads' gradients are
averaged by hand, and logged values are averaged over ranks (codebook usage and perplexity: the mean
of per-rank values). Without augmentation the W-process run matches the one-process run;
augmentation draws differ per rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from vfmtok import distributed as D
from vfmtok.config import TokenizerTrainConfig
from vfmtok.config_schema import validate
from vfmtok.dead_codes import DeadCodeRestarts
from vfmtok.device import autocast
from vfmtok.losses import TokenizerLoss
from vfmtok.tokenizer import Tokenizer, TokenizerOutput
from vfmtok.training import EMA, Recipe, StepSampler, descend, step_generator, train


class TrainData(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices: Tensor, generator: torch.Generator) -> tuple[Tensor, list[Tensor] | None]:
        """Images (B, 3, H, W) in [-1, 1] and the cached levels, or None to run the backbone."""
        ...


@dataclass
class TrainResult:
    ema: EMA
    steps_run: int  # steps this call ran (0 when the checkpoint was already complete)
    resumed_from: int


def train_tokenizer(
    model: Tokenizer, loss_fn: TokenizerLoss, data: TrainData, cfg: TokenizerTrainConfig,
    checkpoint_dir: str | Path, device: torch.device,
    on_log: Callable[[int, dict[str, float]], None] = lambda step, logs: None,
    run_config: dict | None = None,
) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` steps, resuming from ``checkpoint_dir`` when it holds a
    checkpoint of the same ``run_config`` (model + training config). Under torchrun ``on_log``
    runs on rank 0 only."""
    validate(cfg)  # a bad config is named before anything is built from it
    steps = TokenizerSteps(model, loss_fn, data, cfg, device)
    start = train(model, cfg, checkpoint_dir, device, steps.recipe, "ddp", run_config, on_log)
    return TrainResult(ema=steps.ema, steps_run=max(0, cfg.steps - start), resumed_from=start)


@dataclass
class _Batch:
    """What the step's later parts (dead-code restarts, the discriminator) need of its forward."""

    images: Tensor
    levels: list[Tensor] | None
    out: TokenizerOutput
    progress: float  # the share of the run done: when the GAN starts


class TokenizerSteps:
    """The tokenizer's part of each training step: its loss, then dead-code restarts (before the
    EMA update, which takes the new rows) and the discriminator's own update (after it)."""

    def __init__(self, model: Tokenizer, loss_fn: TokenizerLoss, data: TrainData, cfg: TokenizerTrainConfig,
                 device: torch.device) -> None:
        self.model, self.loss_fn, self.data, self.cfg, self.device = model, loss_fn, data, cfg, device
        loss_cfg = loss_fn.cfg  # the objective's settings travel with the loss, once
        self.ema = EMA(model, cfg.ema_decay)
        self.restarts = DeadCodeRestarts(model.quantizer, cfg.restart_dead_every,
                                         int(cfg.restart_dead_until * cfg.steps))
        gan = loss_fn.discriminator is not None and loss_cfg.gan_weight > 0
        self.d_params = list(loss_fn.discriminator.parameters()) if gan else []
        self.opt_d = (torch.optim.Adam(self.d_params, lr=loss_cfg.disc_lr, betas=(0.9, 0.95))
                      if self.d_params else None)  # fmt: skip
        self.sampler = StepSampler(len(data), cfg.batch_size, cfg.seed)
        self.local_batch = D.per_rank_batch(cfg.batch_size)
        self.runner: Callable[..., TokenizerOutput] = model  # the DDP wrapper, once recipe() has it
        self.last: _Batch | None = None  # the current step's forward

    def recipe(self, runner: Callable[..., TokenizerOutput]) -> Recipe:
        """Adam on the trainable weights, the hooks below, and what the checkpoint carries."""
        self.runner = runner
        params = [p for p in self.model.parameters() if p.requires_grad]
        others, extras = {}, {"dead_codes": self.restarts}
        if self.opt_d is not None:
            others["discriminator"], extras["discriminator"] = self.opt_d, self.loss_fn.discriminator
        return Recipe(optimizer=torch.optim.Adam(params, lr=self.cfg.lr, betas=(0.9, 0.95)), loss=self.loss,
                      after_update=self.restart_dead_codes, ema=self.ema, after_ema=self.discriminator_step,
                      other_optimizers=others, extras=extras)  # fmt: skip

    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        """The tokenizer's loss on this rank's share of the step's batch, and its terms."""
        rank, b = D.rank(), self.local_batch
        indices = self.sampler.indices(step)[rank * b:(rank + 1) * b]
        images, levels = self.data.batch(indices, step_generator(D.rank_seed(self.cfg.seed, rank), step))
        images = images.to(self.device, non_blocking=True)
        levels = None if levels is None else [lv.to(self.device, non_blocking=True).float() for lv in levels]
        progress = step / self.cfg.steps
        with autocast(self.device):
            out = self.runner(images, levels)
            g = self.loss_fn.generator_losses(images, out.recon, progress, image_levels=levels)
            semantic = self.loss_fn.cfg.semantic_weight * out.semantic_loss
            total = sum(g.values()) + out.vq.loss + semantic
        self.last = _Batch(images, levels, out, progress)
        logs = {k: v.item() for k, v in g.items()}
        logs.update(total=total.item(), semantic=out.semantic_loss.item(),
                    codebook=out.vq.codebook_loss.item(), commit=out.vq.commit_loss.item(),
                    usage=float(out.vq.usage), perplexity=float(out.vq.perplexity))  # fmt: skip
        return total, logs

    def restart_dead_codes(self, step: int) -> dict[str, float]:
        """Count the step's codes and, at a check step, re-seed the dead ones; the EMA copy takes
        the new rows as they are (its averages of a dead row mean nothing)."""
        if not self.cfg.restart_dead_every:
            return {}
        out = self.last.out
        self.restarts.observe(out.indices)
        if out.vq.inputs is not None and self.restarts.is_check(step + 1):
            rows = self.restarts.after_step(step + 1, out.vq.inputs, step_generator(self.cfg.seed + 1, step))
            if rows is not None and len(rows):
                key = "quantizer.embedding.weight"
                self.ema.shadow[key][rows] = self.restarts.quantizer.embedding.weight.detach()[rows]
        return {"restarted": float(self.restarts.restarted)}  # codebook rows re-seeded so far

    def discriminator_step(self, step: int) -> dict[str, float]:
        """The GAN discriminator's update on the step's images against their (detached)
        reconstructions; nothing before the GAN starts. Its heads sit outside DDP, so their
        gradients are averaged over ranks by hand."""
        if self.opt_d is None:
            return {}
        last = self.last
        with autocast(self.device):
            d_loss = self.loss_fn.discriminator_loss(last.images, last.out.recon.detach(), last.progress,
                                                     image_levels=last.levels)
        if d_loss is None:  # same on every rank: progress is a function of the step
            return {}
        descend(self.opt_d, d_loss, self.d_params, self.cfg.grad_clip, average_gradients=True)
        return {"disc": d_loss.item()}
