"""The tokenizer's training loop: Adam (0.9, 0.95), warmup then constant lr, grad clipping, EMA
weights, bf16 autocast on CUDA, an optional GAN discriminator, and exact resume from checkpoints.

The loop knows nothing of files besides its checkpoint: data comes from a :class:`TrainData`
(cached backbone features or images through the backbone) and each step's losses go to ``on_log``.

Under torchrun (see ``vfmtok.distributed``) it runs with DDP: ``batch_size`` is the global batch,
each rank loads its contiguous share of the step's indices, the discriminator heads' gradients are
averaged by hand, logged values are averaged over ranks (codebook usage and perplexity: the mean of
per-rank values), and rank 0 alone logs and writes checkpoints (single-process format). Without
augmentation the W-process run matches the one-process run; augmentation draws differ per rank.
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
from vfmtok.config_schema import result_dict, validate
from vfmtok.dead_codes import DeadCodeRestarts
from vfmtok.device import autocast
from vfmtok.losses import TokenizerLoss
from vfmtok.tokenizer import Tokenizer
from vfmtok.training import (
    CHECKPOINT_NAME,
    EMA,
    StepSampler,
    config_hash,
    learning_rate,
    load_checkpoint,
    save_checkpoint,
    set_lr,
    step_generator,
)  # fmt: skip


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


def _clip(params, max_norm: float) -> None:
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def train_tokenizer(
    model: Tokenizer, loss_fn: TokenizerLoss, data: TrainData, cfg: TokenizerTrainConfig,
    checkpoint_dir: str | Path, device: torch.device,
    on_log: Callable[[int, dict[str, float]], None] = lambda step, logs: None,
    run_config: dict | None = None,
) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` steps, resuming from ``checkpoint_dir`` when it holds a
    checkpoint of the same ``run_config`` (model + training config). Under torchrun ``on_log``
    runs on rank 0 only."""
    validate(cfg)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME
    chash = config_hash(run_config if run_config is not None else result_dict(cfg))
    rank, world = D.rank(), D.world()
    local_batch = D.per_rank_batch(cfg.batch_size, world)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.95))
    loss_cfg = loss_fn.cfg  # the objective's settings travel with the loss, once
    gan = loss_fn.discriminator is not None and loss_cfg.gan_weight > 0
    d_params = list(loss_fn.discriminator.parameters()) if gan else []
    opt_d = torch.optim.Adam(d_params, lr=loss_cfg.disc_lr, betas=(0.9, 0.95)) if d_params else None
    ema = EMA(model, cfg.ema_decay)
    restarts = DeadCodeRestarts(model.quantizer, cfg.restart_dead_every,
                                int(cfg.restart_dead_until * cfg.steps))

    start = 0
    state = load_checkpoint(ckpt_path, chash)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        if opt_d is not None:
            loss_fn.discriminator.load_state_dict(state["discriminator"])
            opt_d.load_state_dict(state["optimizer_d"])
        restarts.load_state_dict(state["dead_codes"])  # the config hash admits no older checkpoint
        D.restore_rng(state, cfg.seed)
        start = int(state["step"])
    elif world > 1:
        torch.manual_seed(D.rank_seed(cfg.seed))
    runner = D.maybe_compile(D.wrap(model, device, "ddp"), cfg.compile)  # 73M at paper scale: DDP

    sampler = StepSampler(len(data), cfg.batch_size, cfg.seed)
    model.train()
    for step in range(start, cfg.steps):
        set_lr(opt, learning_rate(step, cfg))
        progress = step / cfg.steps  # the share of the run done: when the GAN starts
        indices = sampler.indices(step)[rank * local_batch:(rank + 1) * local_batch]
        images, levels = data.batch(indices, step_generator(D.rank_seed(cfg.seed, rank), step))
        images = images.to(device, non_blocking=True)
        levels = None if levels is None else [lv.to(device, non_blocking=True).float() for lv in levels]
        with autocast(device):
            out = runner(images, levels)
            g = loss_fn.generator_losses(images, out.recon, progress, image_levels=levels)
            semantic = loss_cfg.semantic_weight * out.semantic_loss
            total = sum(g.values()) + out.vq.loss + semantic
        opt.zero_grad(set_to_none=True)
        total.backward()
        _clip(params, cfg.grad_clip)
        opt.step()
        restarts.observe(out.indices)
        _restart_dead(restarts, ema, step, out.vq.inputs, cfg.seed)
        ema.update(model)

        logs = {k: v.item() for k, v in g.items()}
        logs.update(total=total.item(), semantic=out.semantic_loss.item(),
                    codebook=out.vq.codebook_loss.item(), commit=out.vq.commit_loss.item(),
                    usage=float(out.vq.usage), perplexity=float(out.vq.perplexity))  # fmt: skip
        if cfg.restart_dead_every:
            logs["restarted"] = float(restarts.restarted)  # codebook rows re-seeded so far
        if opt_d is not None:
            with autocast(device):
                d_loss = loss_fn.discriminator_loss(images, out.recon.detach(), progress,
                                                    image_levels=levels)
            if d_loss is not None:  # same on every rank: progress is a function of the step
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                D.average_gradients(d_params)
                _clip(d_params, cfg.grad_clip)
                opt_d.step()
                logs["disc"] = d_loss.item()
        logs = D.mean_logs(logs)
        logs["lr"] = opt.param_groups[0]["lr"]
        if D.is_main():
            on_log(step, logs)

        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _save(ckpt_path, model, opt, ema, loss_fn if opt_d else None, opt_d, done, chash, restarts)
    model.eval()
    return TrainResult(ema=ema, steps_run=max(0, cfg.steps - start), resumed_from=start)


def _restart_dead(restarts: DeadCodeRestarts, ema: EMA, step: int, inputs: Tensor | None, seed: int) -> None:
    """Re-seed dead codes after this step (when it is a check step); the EMA copy takes the new
    rows as they are (its averages of a dead row mean nothing)."""
    if inputs is None or not restarts.is_check(step + 1):
        return
    rows = restarts.after_step(step + 1, inputs, step_generator(seed + 1, step))
    if rows is not None and len(rows):
        key = "quantizer.embedding.weight"
        ema.shadow[key][rows] = restarts.quantizer.embedding.weight.detach()[rows]


def _save(path: Path, model: Tokenizer, opt: torch.optim.Optimizer, ema: EMA,
          loss_fn: TokenizerLoss | None, opt_d: torch.optim.Optimizer | None, step: int,
          chash: str, restarts: DeadCodeRestarts) -> None:
    """Every rank holds the same (DDP) weights: rank 0 writes them, with every rank's RNG."""
    rngs = D.gather_rng()
    if D.is_main():
        save_checkpoint(path, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "ema": ema.state_dict(),
            "discriminator": loss_fn.discriminator.state_dict() if loss_fn is not None else {},
            "optimizer_d": opt_d.state_dict() if opt_d is not None else {},
            "rng": rngs[0], "step": step, "config_hash": chash, "dead_codes": restarts.state_dict(),
            **({"rng_ranks": rngs} if len(rngs) > 1 else {}),
        })  # fmt: skip
    D.barrier()
