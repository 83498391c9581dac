"""Training, for both models: the loop they share and its parts (EMA, the lr schedule, a
step-addressed batch sampler).

The loop: resume from the checkpoint (:mod:`vfmtok.checkpoint`: why a killed run resumes
exactly), then step after step set the lr, take the step's loss, descend, update the EMA, log,
checkpoint. What differs between the tokenizer's and the generator's training plugs in as a
:class:`Recipe`: the loss of a step, what runs after the update (the tokenizer's dead-code
restarts and discriminator step), what is measured every few steps (the generator's val loss and
sample quality), and what else the checkpoint carries.

Under torchrun (``vfmtok.distributed``) the model is wrapped in DDP or sharded with FSDP2
(``parallel``), logged values are averaged over ranks, ``on_log`` runs on rank 0, and rank 0
writes checkpoints in the single-process format.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from vfmtok import distributed as D
from vfmtok.checkpoint import CHECKPOINT_NAME, config_hash, load_checkpoint, save_checkpoint
from vfmtok.config import TrainLoopConfig
from vfmtok.config_schema import result_dict, validate


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


# ----------------------------------------------------------------------------- the loop

OnLog = Callable[[int, dict[str, float]], None]


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> Any: ...


def no_logs(step: int) -> dict[str, float]:
    return {}


@dataclass
class Recipe:
    """What one model's training plugs into :func:`train`. Each step calls, in this order:
    ``loss``, the update of ``optimizer``, ``after_update``, the EMA update, ``after_ema`` and,
    once the step's logs are averaged over ranks, ``evaluate``."""

    optimizer: torch.optim.Optimizer  # follows the lr schedule; the checkpoint calls it "model"
    loss: Callable[[int], tuple[Tensor, dict[str, float]]]  # step -> (loss to minimise, its logs)
    after_update: Callable[[int], dict[str, float]] = no_logs  # step -> logs; before the EMA sees it
    ema: EMA | None = None
    after_ema: Callable[[int], dict[str, float]] = no_logs  # step -> logs (e.g. a discriminator step)
    evaluate: Callable[[int], dict[str, float]] = no_logs  # steps done -> metrics; runs on every rank
    other_optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    extras: dict[str, Stateful] = field(default_factory=dict)  # more state the checkpoint carries

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer, **self.other_optimizers}


def train(
    model: nn.Module, cfg: TrainLoopConfig, checkpoint_dir: str | Path, device: torch.device,
    recipe_for: Callable[[nn.Module], Recipe], parallel: D.Parallel = "ddp",
    run_config: dict | None = None, on_log: OnLog = lambda step, logs: None,
) -> int:
    """Train ``model`` to ``cfg.steps`` steps; returns the step it resumed from (0: a fresh run).

    A checkpoint in ``checkpoint_dir`` resumes the run when it was written for the same
    ``run_config`` (default: ``cfg``). ``recipe_for(runner)`` builds the recipe once the model is
    wrapped (FSDP2 swaps in sharded parameters, which the optimizers must hold); ``runner`` is
    the module to run forward through (the model, or its DDP/FSDP/compiled wrapper)."""
    validate(cfg)
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    chash = config_hash(run_config if run_config is not None else result_dict(cfg))
    state = load_checkpoint(path, chash)
    if state is not None:
        model.load_state_dict(state["model"])  # full weights, before any sharding
    elif D.world() > 1:
        torch.manual_seed(D.rank_seed(cfg.seed))  # dropout and augmentation differ between ranks
    recipe = recipe_for(D.maybe_compile(D.wrap(model, device, parallel), cfg.compile))
    start = 0 if state is None else _restore(state, model, recipe, cfg.seed)
    del state
    params = [p for p in model.parameters() if p.requires_grad]

    model.train()
    for step in range(start, cfg.steps):
        set_lr(recipe.optimizer, learning_rate(step, cfg))
        loss, logs = recipe.loss(step)
        descend(recipe.optimizer, loss, params, cfg.grad_clip)
        logs |= recipe.after_update(step)
        if recipe.ema is not None:
            recipe.ema.update(model)
        logs |= recipe.after_ema(step)
        logs = D.mean_logs(logs)
        logs["lr"] = recipe.optimizer.param_groups[0]["lr"]
        done = step + 1
        logs |= recipe.evaluate(done)
        if D.is_main():
            on_log(step, logs)
        if every(cfg.checkpoint_every, done, cfg.steps):
            _save(path, model, recipe, done, chash)
    model.eval()
    return start


def descend(optimizer: torch.optim.Optimizer, loss: Tensor, params: list[nn.Parameter], grad_clip: float,
            average_gradients: bool = False) -> None:
    """One update on ``loss``: gradients (averaged over ranks by hand when no DDP wrapper does it),
    clipped to total norm ``grad_clip`` (0 = no clipping), then the optimizer's step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if average_gradients:
        D.average_gradients(params)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def every(n: int, done: int, steps: int) -> bool:
    """Whether the step that makes ``done`` of ``steps`` is due for a task run every ``n`` steps
    (0 = never) and at the last."""
    return bool(n) and (done % n == 0 or done == steps)


def _restore(state: dict[str, Any], model: nn.Module, recipe: Recipe, seed: int) -> int:
    """Load what the checkpoint holds besides the model's weights; returns the steps it had done."""
    for name, opt in recipe.optimizers().items():
        D.load_optimizer_state(model, opt, state["optimizers"][name])
    if recipe.ema is not None:
        recipe.ema.load_state_dict(state["ema"])
    for name, part in recipe.extras.items():
        part.load_state_dict(state["extras"][name])  # the config hash admits no other recipe's
    D.restore_rng(state, seed)
    return int(state["step"])


def _save(path: Path, model: nn.Module, recipe: Recipe, done: int, chash: str) -> None:
    """Gather (every rank: FSDP2 shards) and write (rank 0) a single-process-format checkpoint,
    with every rank's RNG state."""
    state = {
        "step": done, "config_hash": chash,
        "model": D.model_state(model),
        "optimizers": {name: D.optimizer_state(model, opt) for name, opt in recipe.optimizers().items()},
        "ema": recipe.ema.state_dict() if recipe.ema is not None else None,
        "extras": {name: part.state_dict() for name, part in recipe.extras.items()},
    }  # fmt: skip
    rngs = D.gather_rng()
    if D.is_main():
        save_checkpoint(path, {**state, "rng": rngs[0], "rng_ranks": rngs})
    D.barrier()
