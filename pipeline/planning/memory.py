"""The peak memory of a training step per GPU, estimated from the models built on the meta device:
no weights, no arithmetic, no GPU, no data.

What a step holds at its peak (the end of the forward, when backward starts):

- the states, bytes a parameter: fp32 weights (4), their gradients (4), AdamW's two moments (8),
  the EMA copy when the stage keeps one (4), DDP's gradient buckets under several processes (4),
  autocast's bf16 copies of the weights on a GPU (2); under FSDP2 everything but the bf16 copies
  is divided over the processes. Frozen modules (the tokenizer's backbone) add their weights only.
- the activations: the bytes autograd saves for backward in one forward, measured with
  ``saved_tensors_hooks`` and deduplicated by storage (views share one), per sample. Attention
  is counted as the fused GPU kernels keep it (q, k, v, the output and an fp32 log-sum-exp; never
  the s x s matrix, which SDPA's math path on the meta device would save). On a CPU the forward is
  counted in fp32. On a GPU the generator is counted cast to bf16 whole, the tokenizer with
  autocast's casts applied module by module (``tokenizer_memory.py``: its convolutions and fp32
  normalisations need them).

The generator's bf16 count sits between a compiled step (inductor recomputes cheap pointwise ops
and keeps fewer fp32 copies) and an eager one: GPT-L at batch 256 is estimated at 16% above the
78.9 GiB that its compiled step peaked at on an H200; counting autocast's fp32 residual copies as
well would put it 28% above (``tests/test_plan.py`` holds it within 25%).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class Footprint:
    """What the meta-device pass measures for one model at one dtype (JSON-able, cacheable)."""

    trainable: int  # parameters the optimizer updates
    frozen_bytes: int  # weights that take no gradient (a frozen backbone, LPIPS' VGG)
    largest_block: int  # parameters of the largest transformer block (what FSDP2 gathers at once)
    saved_per_sample: float  # bytes autograd saves for backward, per sample of the batch
    saved_fixed: float  # bytes it saves whatever the batch (e.g. shared position tables)


@dataclass(frozen=True)
class Estimate:
    """A footprint on a given launch: the per-GPU peak as a function of the per-GPU batch."""

    footprint: Footprint
    states_bytes: float

    def peak_bytes(self, batch_per_gpu: int) -> float:
        fp = self.footprint
        return self.states_bytes + fp.saved_fixed + fp.saved_per_sample * batch_per_gpu

    def batch_that_fits(self, gpu_bytes: float, headroom: float = 0.9) -> int:
        """The largest per-GPU batch whose peak stays under ``headroom`` of the GPU's memory (the
        rest: the CUDA context, the allocator's fragmentation, the backward's transient buffers)."""
        fp = self.footprint
        free = gpu_bytes * headroom - self.states_bytes - fp.saved_fixed
        return max(0, int(free // fp.saved_per_sample))


def estimate(footprint: Footprint, *, ema: bool, processes: int, fsdp: bool, cuda: bool) -> Estimate:
    """The states a GPU holds for ``footprint`` trained as the stage trains it (see the module doc)."""
    n = footprint.trainable
    sharded = 4 + 4 + 8 + (4 if ema else 0)
    whole = 2 if cuda else 0  # autocast's bf16 weight copies, made per forward
    if fsdp and processes > 1:
        states = n * sharded / processes + 2 * footprint.largest_block * 4 + n * whole
    else:
        states = n * (sharded + whole + (4 if processes > 1 else 0))
    return Estimate(footprint, float(states + footprint.frozen_bytes))


# ----------------------------------------------------------------------------- the meta pass


def _flash_like_sdpa() -> Callable:
    """SDPA as the fused kernels save for backward: q, k, v, the output, an fp32 log-sum-exp."""
    import torch

    class FlashLike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):  # (B, H, S, D) each
            out = torch.empty_like(q)
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # (B, H, S)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, _, _ = ctx.saved_tensors
            return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def sdpa(q, k, v, *args, **kwargs):
        return FlashLike.apply(q, k, v)

    return sdpa


@contextlib.contextmanager
def counting_saved(module) -> Iterator[dict[int, int]]:
    """Record {storage: bytes} of every tensor autograd saves while inside, leaving out the
    parameters' and buffers' own storages; SDPA is swapped for :func:`_flash_like_sdpa`."""
    import torch
    import torch.nn.functional as F

    own = {t.untyped_storage()._cdata for t in [*module.parameters(), *module.buffers()]}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in own:
            saved[storage._cdata] = storage.nbytes()
        return t

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _flash_like_sdpa()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield saved
    finally:
        F.scaled_dot_product_attention = original


def per_sample(forward: Callable[[int], None], module) -> tuple[float, float]:
    """(bytes a sample, fixed bytes) saved by ``forward(batch)``, from batches 1 and 2."""
    sizes = []
    for batch in (1, 2):
        with counting_saved(module) as saved:
            forward(batch)
        sizes.append(float(sum(saved.values())))
    slope = sizes[1] - sizes[0]
    return slope, max(0.0, sizes[0] - slope)


def largest_block(model) -> int:
    blocks = getattr(model, "layers", None) or []
    return max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)


def generator_footprint(model_config, cuda: bool) -> Footprint:
    """The footprint of one training forward of the GPT/RAR ``model_config`` (a
    :class:`vfmtok.generator_config.GPTConfig` or ``RARConfig``) on ``n_tokens``-token rows."""
    import torch

    from vfmtok import zoo

    with torch.device("meta"):
        model = zoo.build_from_config(model_config)
    model = model.to(torch.bfloat16 if cuda else torch.float32).train()
    n_tokens, vocab = model_config.n_tokens, model_config.vocab_size

    def forward(batch: int) -> None:
        tokens = torch.zeros(batch, n_tokens, dtype=torch.long, device="meta")
        labels = torch.zeros(batch, dtype=torch.long, device="meta")
        model(tokens, labels, targets=tokens % vocab)

    slope, fixed = per_sample(forward, model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Footprint(trainable, 0, largest_block(model), slope, fixed)
