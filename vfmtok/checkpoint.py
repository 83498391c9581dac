"""Training checkpoints: one format for both trainings, written so that a killed run resumes to
exactly the weights of an uninterrupted one.

Exact resume rests on three things: the batch at step ``s`` is a pure function of (seed, s)
(:class:`vfmtok.training.StepSampler`), any other randomness draws from torch RNG states saved in
the checkpoint (every rank's), and checkpoints are written atomically, flushed to disk before the
rename, so a kill never leaves a half-written one behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vfmtok import files

CHECKPOINT_NAME = "last.pt"
# What every checkpoint holds, for both models: weights, optimizer states by name, EMA weights (None
# without an EMA), other state by name (the discriminator, dead-code counts), the torch RNG state of
# rank 0 and of every rank, the steps done, and the hash of the config that wrote it.
CHECKPOINT_KEYS = frozenset({"model", "optimizers", "ema", "extras", "rng", "rng_ranks", "step",
                             "config_hash"})


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
    """The checkpoint at ``path`` (loaded with ``weights_only=True``, an earlier format converted),
    or None when there is none, it was written for another config, or by other code: then
    training starts fresh."""
    path = Path(path)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if set(state) != CHECKPOINT_KEYS:
        state = from_earlier_format(state)
    if state is None or (expected_config is not None and state.get("config_hash") != expected_config):
        return None
    return state


# The keys each training loop wrote before both shared one format (besides "rng_ranks", written
# only under torchrun): a run interrupted then still resumes where it was.
EARLIER_TOKENIZER_KEYS = frozenset({"model", "optimizer", "ema", "discriminator", "optimizer_d", "rng",
                                    "step", "config_hash", "dead_codes"})
EARLIER_GENERATOR_KEYS = frozenset({"model", "optimizer", "rng", "step", "config_hash"})


def from_earlier_format(state: dict[str, Any]) -> dict[str, Any] | None:
    """A checkpoint of either loop's earlier format in this one's keys (the same states, named
    by what they belong to); None for anything else."""
    keys = set(state) - {"rng_ranks"}
    if keys not in (EARLIER_TOKENIZER_KEYS, EARLIER_GENERATOR_KEYS):
        return None
    optimizers, extras = {"model": state["optimizer"]}, {}
    if keys == EARLIER_TOKENIZER_KEYS:
        extras["dead_codes"] = state["dead_codes"]
        if state["optimizer_d"]:  # empty without a GAN discriminator
            optimizers["discriminator"] = state["optimizer_d"]
            extras["discriminator"] = state["discriminator"]
    return {"model": state["model"], "optimizers": optimizers, "ema": state.get("ema"), "extras": extras,
            "rng": state["rng"], "rng_ranks": state.get("rng_ranks", [state["rng"]]), "step": state["step"],
            "config_hash": state["config_hash"]}
