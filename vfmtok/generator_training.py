"""The generator's training loop (LlamaGen recipe): AdamW (0.9, 0.95) with weight decay on
matrices only, warmup then constant lr, grad clipping, bf16 autocast on CUDA, periodic val loss,
and exact resume from checkpoints (same scheme as the tokenizer's, see ``vfmtok.training``).

Under torchrun (see ``vfmtok.distributed``) the same loop runs data-parallel: ``batch_size`` is the
global batch, ``data.batch(step)`` returns this rank's share of it, the model is wrapped in DDP or
sharded with FSDP2 (``parallel``), losses are averaged over ranks, and only rank 0 logs and writes
checkpoints, which stay in the single-process format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from vfmtok import distributed as D
from vfmtok.config import ARTrainConfig
from vfmtok.config_schema import result_dict, validate
from vfmtok.device import autocast
from vfmtok.training import (
    CHECKPOINT_NAME,
    config_hash,
    learning_rate,
    load_checkpoint,
    save_checkpoint,
    set_lr,
)  # fmt: skip


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
    run_config: dict | None = None,
    step_fn: Callable[[nn.Module, Tensor, Tensor, int], Tensor] | None = None,
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
    validate(cfg)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME
    chash = config_hash(run_config if run_config is not None else result_dict(cfg))
    start = 0
    state = load_checkpoint(ckpt_path, chash)
    if state is not None:
        model.load_state_dict(state["model"])  # full weights, before any sharding
        start = int(state["step"])
    elif D.world() > 1:
        torch.manual_seed(D.rank_seed(cfg.seed))  # dropout masks differ between ranks
    runner = D.maybe_compile(D.wrap(model, device, cfg.parallel), cfg.compile)
    opt = optimizer(model, cfg)  # after wrapping: FSDP2 swaps in sharded parameters
    if state is not None:
        D.load_optimizer_state(model, opt, state["optimizer"])
        D.restore_rng(state, cfg.seed)
    del state

    def forward(m: nn.Module, tokens: Tensor, labels: Tensor, step: int) -> Tensor:
        return m(tokens, labels, targets=tokens)[1]

    step_fn = step_fn or forward
    model.train()
    for step in range(start, cfg.steps):
        set_lr(opt, learning_rate(step, cfg))
        tokens, labels = data.batch(step)
        if len(tokens) * D.world() != cfg.batch_size:
            raise ValueError(f"step {step}: {len(tokens)} rows x {D.world()} ranks != the global "
                             f"batch_size {cfg.batch_size} (give each rank batch_size / world rows)")
        tokens, labels = tokens.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device):
            loss = step_fn(runner, tokens, labels, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

        logs = D.mean_logs({"loss": loss.item()})
        logs["lr"] = opt.param_groups[0]["lr"]
        done = step + 1
        if val_batches is not None and (done % cfg.val_every == 0 or done == cfg.steps):
            logs["val_loss"] = val_loss(model, val_batches(), device)  # every rank: FSDP gathers
        if quality is not None and cfg.quality_every and (done % cfg.quality_every == 0 or done == cfg.steps):
            logs.update({f"quality/{k}": v for k, v in quality(model).items()})
        if D.is_main():
            on_log(step, logs)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _save(ckpt_path, model, opt, done, chash)
    model.eval()
    return max(0, cfg.steps - start)


def _save(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, chash: str) -> None:
    """Gather (every rank) and write (rank 0) a single-process-format checkpoint."""
    ckpt = {"model": D.model_state(model), "optimizer": D.optimizer_state(model, opt)}
    rngs = D.gather_rng()
    if D.is_main():
        ckpt.update(rng=rngs[0], step=step, config_hash=chash)
        if len(rngs) > 1:
            ckpt["rng_ranks"] = rngs
        save_checkpoint(path, ckpt)
    D.barrier()
