"""What every training loop here shares: EMA, the lr schedule, a step-addressed batch sampler, and
checkpoints that make a killed run resume to exactly the weights of an uninterrupted one.

Exact resume rests on three things: the batch at step ``s`` is a pure function of (seed, s)
(:class:`StepSampler`), any other randomness draws from RNG states saved in the checkpoint, and
checkpoints are written atomically so a kill never leaves a half-written one behind.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfmtok import files
from vfmtok.config import TrainLoopConfig

CHECKPOINT_NAME = "last.pt"


class EMA:
    """Exponential moving average of a model's trainable parameters (and a copy of its buffers).

    Later stages use the EMA weights, as in the paper (decay 0.9999 at ImageNet scale; the demo
    trains far fewer steps and uses a smaller decay).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, value in model.state_dict().items():
            if name in self._trainable and value.dtype.is_floating_point:
                self.shadow[name].lerp_(value.detach(), 1.0 - self.decay)
            else:
                self.shadow[name].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` carrying the EMA weights (the live model is untouched)."""
        ema_model = copy.deepcopy(model)
        ema_model.load_state_dict(self.shadow)
        return ema_model


def learning_rate(step: int, cfg: TrainLoopConfig) -> float:
    """The lr of ``step`` (0-based): linear warmup to ``cfg.lr`` over ``warmup_steps``, then
    constant (as published) or a cosine decay that reaches ``min_lr`` at the last step.

    A short run at a constant rate ends where the loss is still falling fast and the weights still
    jitter; decaying to a floor settles them, which the EMA alone does not at few steps.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - 1 - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)  # 0 after warmup .. 1 at the last step
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class StepSampler:
    """Batch indices as a pure function of the step: each epoch is a seeded permutation of
    ``range(n)``, and step ``s`` takes positions ``[s*B, (s+1)*B)`` of their concatenation."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n <= 0:
            raise ValueError("cannot sample batches from an empty training set")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 1:  # a batch spans at most two epochs
                self._cache.pop(min(self._cache))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache[epoch] = torch.randperm(self.n, generator=g)
        return self._cache[epoch]

    def indices(self, step: int) -> torch.Tensor:
        start = step * self.batch_size
        pos = torch.arange(start, start + self.batch_size)
        epochs, offsets = pos // self.n, pos % self.n
        return torch.stack([self._perm(int(e))[int(o)] for e, o in zip(epochs, offsets, strict=True)])


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for per-step randomness (augmentation): reproducible without saved state."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step + 7)


def config_hash(cfg: Any) -> str:
    """A short hash of a JSON-able config: a checkpoint is resumed only by the config that made it."""
    return files.sha256_json(cfg)[:16]


def rng_state() -> dict[str, torch.Tensor]:
    """Torch's RNG states (all randomness in training draws from torch, never numpy/random)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, flushed to disk before the rename."""
    files.write_with(path, lambda tmp: torch.save(state, tmp), fsync=True)


def load_checkpoint(path: str | Path, expected_config: str | None = None) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (loaded with ``weights_only=True``), or None when there is none
    or it was written for another config (then training starts fresh)."""
    path = Path(path)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if expected_config is not None and state.get("config_hash") != expected_config:
        return None
    return state


def num_params(model: nn.Module, trainable_only: bool = True) -> int:
    """Parameter count, by default of what the optimizer trains (a frozen backbone is left out);
    works on the meta device."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def steps_to_reach(curve: list[tuple[int, float]] | list[list[float]], target: float,
                   higher_is_better: bool = False) -> int | None:
    """The first step of a ``(step, value)`` curve at which ``value`` reaches ``target``."""
    for step, value in curve:
        if (value >= target) if higher_is_better else (value <= target):
            return int(step)
    return None
