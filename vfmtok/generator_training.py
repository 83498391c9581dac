"""The generator's training (LlamaGen recipe): AdamW (0.9, 0.95) with weight decay on matrices
only, warmup then constant lr, grad clipping, bf16 autocast on CUDA, periodic val loss and sample
quality, on the loop both trainings share (``vfmtok.training``: resume, logs, checkpoints).

Under torchrun (see ``vfmtok.distributed``) the same loop runs data-parallel: ``batch_size`` is the
global batch, ``data.batch(step)`` returns this rank's share of it, and the model is wrapped in DDP
or sharded with FSDP2 (``parallel``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from vfmtok import distributed as D
from vfmtok.config import ARTrainConfig
from vfmtok.device import autocast
from vfmtok.training import Recipe, every, train
from vfmtok.transformer import StepFn


class TokenBatches(Protocol):
    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Tokens (B, N) long and labels (B,) long of training step ``step`` (a pure function);
        under torchrun, this rank's B = batch_size / world rows of the step's global batch."""
        ...


def optimizer(model: nn.Module, cfg: ARTrainConfig) -> torch.optim.AdamW:
    """AdamW with decay on weight matrices and embeddings (ndim >= 2), none on norms' gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


@torch.no_grad()
def val_loss(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device) -> float:
    """Mean next-token cross-entropy over ``batches`` (eval mode: no dropout)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for tokens, labels in batches:
        tokens, labels = tokens.to(device), labels.to(device)
        with autocast(device):
            _, loss = model(tokens, labels, targets=tokens)
        total += float(loss) * len(tokens)
        count += len(tokens)
    model.train(was_training)
    return total / max(count, 1)


def train_ar(
    model: nn.Module, data: TokenBatches, cfg: ARTrainConfig, checkpoint_dir: str | Path,
    device: torch.device, val_batches: Callable[[], Iterable[tuple[Tensor, Tensor]]] | None = None,
    on_log: Callable[[int, dict[str, float]], None] = lambda step, logs: None,
    run_config: dict | None = None, step_fn: StepFn | None = None,
    quality: Callable[[nn.Module], dict[str, float]] | None = None,
) -> int:
    """Train ``model`` to ``cfg.steps``, resuming from ``checkpoint_dir``; returns the steps run.

    ``step_fn(runner, tokens, labels, step) -> loss`` replaces the forward (``runner`` is the
    DDP/FSDP/compiled module; ``step`` the 0-based step, e.g. for RAR's annealed random orders).
    ``quality(model) -> metrics`` scores the model every ``cfg.quality_every`` steps and at the
    last (e.g. samples judged by a frozen network: how the paper plots convergence); it must draw
    from its own seeded generator, so a resumed run stays exact. Under torchrun ``model`` is
    trained in place (FSDP2 leaves it sharded: use ``vfmtok.distributed.model_state`` to get its
    weights), ``val_batches`` and ``quality`` run on every rank (FSDP gathers), ``on_log`` on rank 0.
    """
    step_fn = step_fn or _next_token_loss

    def loss(runner: nn.Module, step: int) -> tuple[Tensor, dict[str, float]]:
        tokens, labels = data.batch(step)
        if len(tokens) * D.world() != cfg.batch_size:
            raise ValueError(f"step {step}: {len(tokens)} rows x {D.world()} ranks != the global "
                             f"batch_size {cfg.batch_size} (give each rank batch_size / world rows)")
        tokens, labels = tokens.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device):
            value = step_fn(runner, tokens, labels, step)
        return value, {"loss": value.item()}

    def evaluate(done: int) -> dict[str, float]:
        logs = {}
        if val_batches is not None and every(cfg.val_every, done, cfg.steps):
            logs["val_loss"] = val_loss(model, val_batches(), device)  # every rank: FSDP gathers
        if quality is not None and every(cfg.quality_every, done, cfg.steps):
            logs.update({f"quality/{k}": v for k, v in quality(model).items()})
        return logs

    def recipe(runner: nn.Module) -> Recipe:
        return Recipe(optimizer(model, cfg), lambda step: loss(runner, step), evaluate=evaluate)

    start = train(model, cfg, checkpoint_dir, device, recipe, cfg.parallel, run_config, on_log)
    return max(0, cfg.steps - start)


def _next_token_loss(runner: nn.Module, tokens: Tensor, labels: Tensor, step: int) -> Tensor:
    return runner(tokens, labels, targets=tokens)[1]
