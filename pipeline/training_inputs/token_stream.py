"""Step-addressed batches streamed from a token file, one row group in memory at a time.

An epoch visits the row groups in a seeded order and the rows of each group in a seeded order;
step ``s`` takes positions ``[s*B, (s+1)*B)`` of the endless sequence of epochs. So the batch of
a step never depends on what ran before (exact resume), and memory holds one or two row groups,
never the whole set (ImageNet is 1.28M rows). ``rank``/``world`` cut a stream to disjoint row groups
(a per-rank stream whose batches depend on the number of ranks; ``train_ar`` slices the global
batch instead: ``distributed.RankSlice``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from pipeline.formats.tokens import TokenFile


class TokenStream:
    def __init__(self, file: TokenFile, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.file, self.batch_size, self.seed = file, batch_size, seed
        self.groups = list(range(rank, file.num_row_groups, world))
        if not self.groups:
            raise ValueError(f"{file.path}: no row group for rank {rank} of {world}")
        self.sizes = {g: file.row_group_rows(g) for g in self.groups}
        self.epoch_rows = sum(self.sizes.values())
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def _epoch_order(self, epoch: int) -> tuple[list[int], np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = [self.groups[i] for i in rng.permutation(len(self.groups))]
        ends = np.cumsum([self.sizes[g] for g in order])
        return order, ends

    def _group(self, epoch: int, group: int) -> tuple[np.ndarray, np.ndarray]:
        key = (epoch, group)
        if key not in self._cache:
            if len(self._cache) > 1:
                self._cache.pop(next(iter(self._cache)))
            tokens, labels = next(self.file.iter_row_groups([group]))
            perm = np.random.default_rng([self.seed, epoch, group, 1]).permutation(len(tokens))
            self._cache[key] = (tokens[perm], labels[perm])
        return self._cache[key]

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Tokens (B, N) and labels (B,) of training step ``step``."""
        toks, labs = [], []
        pos, end = step * self.batch_size, (step + 1) * self.batch_size
        while pos < end:
            epoch, offset = divmod(pos, self.epoch_rows)
            order, ends = self._epoch_order(epoch)
            k = int(np.searchsorted(ends, offset, side="right"))
            group_start = int(ends[k - 1]) if k else 0
            tokens, labels = self._group(epoch, order[k])
            lo = offset - group_start
            take = min(end - pos, len(tokens) - lo)
            toks.append(tokens[lo : lo + take])
            labs.append(labels[lo : lo + take])
            pos += take
        return torch.from_numpy(np.concatenate(toks)), torch.from_numpy(np.concatenate(labs))


def iter_batches(file: TokenFile, batch_size: int, limit: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """The file in order, in batches (for val loss); ``limit`` rows at most (0 = all)."""
    seen = 0
    for tokens, labels in file.iter_row_groups():
        for i in range(0, len(tokens), batch_size):
            if limit and seen >= limit:
                return
            t, y = tokens[i : i + batch_size], labels[i : i + batch_size]
            if limit:
                t, y = t[: limit - seen], y[: limit - seen]
            seen += len(t)
            yield torch.from_numpy(t), torch.from_numpy(y)
