"""Dead-code restarts: a codebook row that no vector picked for ``every`` steps is re-seeded with
a vector the encoder just produced (Jukebox's and vector-quantize-pytorch's remedy; not in the
paper, whose 16384 x 12 codebook reaches ~100% use over 300k+ steps without it).

Why: in a short run most codes that lose the first assignments never win one back: only picked
rows get a gradient, so the used share falls as the run goes on (the demo's falls to ~30-50% of 512
codes). A restarted row starts where the encoder's outputs are, and wins its share at once.
Restarts stop after ``until`` of the run, so the codebook and the EMA weights settle before the end.

Under torchrun the use counts are summed over ranks and rank 0's new rows are broadcast, so every
rank holds the same codebook.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vfmtok import distributed as D
from vfmtok.quantizer import VectorQuantizer


class DeadCodeRestarts:
    """Counts code use step by step and re-seeds the unused rows every ``every`` steps (0 = never)."""

    def __init__(self, quantizer: VectorQuantizer, every: int, until_step: int) -> None:
        self.quantizer, self.every, self.until_step = quantizer, every, until_step
        weight = quantizer.embedding.weight
        self.counts = torch.zeros(quantizer.n_embed, dtype=torch.long, device=weight.device)
        self.restarted = 0  # rows re-seeded so far

    def observe(self, indices: Tensor) -> None:
        """Count the codes picked in one step (any shape of indices)."""
        if self.every:
            self.counts += torch.bincount(indices.detach().flatten(), minlength=self.quantizer.n_embed)

    def is_check(self, done: int) -> bool:
        """Whether the step that makes ``done`` steps re-seeds (every ``every`` steps, until ``until``)."""
        return bool(self.every) and done % self.every == 0 and done <= self.until_step

    @torch.no_grad()
    def after_step(self, done: int, inputs: Tensor, generator: torch.Generator) -> Tensor | None:
        """After ``done`` steps: re-seed the rows nobody picked since the last check from
        ``inputs`` (M, D), the unit vectors this step quantized; returns their indices, or None
        when this is not a check step."""
        if not self.is_check(done):
            return None
        D.sum_(self.counts)
        dead = torch.nonzero(self.counts == 0).flatten()  # (n_dead,)
        self.counts.zero_()
        if len(dead):
            weight = self.quantizer.embedding.weight  # rows are L2-normalised when used
            pool = inputs.reshape(-1, weight.shape[1])
            order = torch.randperm(len(pool), generator=generator)
            pick = order[torch.arange(len(dead)) % len(pool)].to(pool.device)  # distinct while it can
            weight[dead.to(weight.device)] = pool[pick].to(weight.dtype)
            D.broadcast_(weight.data)
            self.restarted += len(dead)
        return dead

    def state_dict(self) -> dict[str, Tensor | int]:
        return {"counts": self.counts.clone(), "restarted": self.restarted}

    def load_state_dict(self, state: dict) -> None:
        self.counts.copy_(state["counts"])
        self.restarted = int(state["restarted"])
