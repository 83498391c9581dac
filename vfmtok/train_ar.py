"""The generator's training loop (LlamaGen recipe): AdamW (0.9, 0.95) with weight decay on
matrices only, warmup then constant lr, grad clipping, bf16 autocast on CUDA, periodic val loss,
and exact resume from checkpoints (same scheme as the tokenizer's, see ``vfmtok.training``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from vfmtok.runtime import autocast
from vfmtok.training import (
    CHECKPOINT_NAME,
    config_hash,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_lr,
    set_rng_state,
    warmup_constant,
)  # fmt: skip


@dataclass
class ARTrainConfig:
    steps: int = field(metadata={"min": 1})
    batch_size: int = field(metadata={"min": 1})
    lr: float = field(metadata={"min": 0.0})
    warmup_steps: int = field(default=0, metadata={"min": 0})
    weight_decay: float = field(default=0.05, metadata={"min": 0.0})
    grad_clip: float = field(default=1.0, metadata={"min": 0.0})  # 0 = off
    checkpoint_every: int = field(default=100, metadata={"min": 1})
    val_every: int = field(default=50, metadata={"min": 1})
    seed: int = 0


class TokenBatches(Protocol):
    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Tokens (B, N) long and labels (B,) long of training step ``step`` (a pure function)."""
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
    run_config: dict | None = None, step_fn: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None,
) -> int:
    """Train ``model`` to ``cfg.steps``, resuming from ``checkpoint_dir``; returns the steps run.

    ``step_fn(model, tokens, labels) -> loss`` lets a distributed wrapper run the forward.
    """
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME
    chash = config_hash(run_config if run_config is not None else asdict(cfg))
    opt = optimizer(model, cfg)
    start = 0
    state = load_checkpoint(ckpt_path, chash)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start = int(state["step"])
    del state

    def forward(tokens: Tensor, labels: Tensor) -> Tensor:
        return model(tokens, labels, targets=tokens)[1]

    step_fn = step_fn or (lambda m, t, y: forward(t, y))
    model.train()
    for step in range(start, cfg.steps):
        set_lr(opt, cfg.lr * warmup_constant(step, cfg.warmup_steps))
        tokens, labels = data.batch(step)
        tokens, labels = tokens.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device):
            loss = step_fn(model, tokens, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

        logs = {"loss": loss.item(), "lr": opt.param_groups[0]["lr"]}
        done = step + 1
        if val_batches is not None and (done % cfg.val_every == 0 or done == cfg.steps):
            logs["val_loss"] = val_loss(model, val_batches(), device)
        on_log(step, logs)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                        "rng": rng_state(), "step": done, "config_hash": chash})
    model.eval()
    return max(0, cfg.steps - start)
