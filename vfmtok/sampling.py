"""Sampling image tokens from either generator family (:class:`~vfmtok.gpt.GPT`,
:class:`~vfmtok.rar.RAR`): raster decoding, with or without the KV cache.

Classifier-free guidance runs the conditional and the unconditional (null-class) rows as one
doubled batch and mixes their logits as u + s_t * (c - u) before temperature / top-k / top-p, as
LlamaGen and RAR do. Both halves are fed the same sampled token, so they stay aligned. The scale
s_t is constant (``cfg_power`` 0, the default) or RAR's power-cosine ramp (the schedule of its
headline figures, after MDT; bytedance/1d-tokenizer ``modeling/rar.py``, ``guidance_scale_pow``):
s_t = 1 + (s - 1) * (1 - cos(pi * (t / N) ** p)) / 2 for token t of N, i.e. no guidance for the
first token rising to s at the last. Published settings: RAR-B s 16.0, p 2.75; RAR-L 15.5, 2.5;
RAR-XL 6.9, 1.5; RAR-XXL 8.0, 1.2 (its README); VFMTok-RAR's test script uses p 1.

With the KV cache the prefix ([class] for the GPT, [CLS, class] for RAR) is prefilled once and
every further step feeds one token into a static cache: the step's input token and position live
in preallocated one-element buffers, so its shapes never change and ``compile`` traces it once
(``torch.compile(forward_step, dynamic=False)``, opt-in; the prefill stays eager). Without the
cache the whole prefix is re-run each step (quadratic; the speed comparison and an independent
check of the cache).

Randomness: one ``generator`` for the whole batch (``torch.multinomial``), or per-sample
``seeds``: sample i draws its N uniforms from its own seed and picks tokens by inverse CDF, so it is
the same whatever batch it is drawn in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from vfmtok.transformer import Generator


def sample_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None, uniform: Tensor | None = None) -> Tensor:
    """Draw one token per row of logits (B, V) -> (B,) long.

    temperature 0 means greedy (argmax); top_k 0 and top_p 1.0 switch those filters off. top-p
    keeps the smallest set of most likely tokens whose mass reaches ``top_p`` (never empty).
    ``uniform`` (B,) in [0, 1): draw by inverse CDF from these instead of ``torch.multinomial``.
    """
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"bad sampling settings: temperature={temperature}, top_k={top_k}, "
                         f"top_p={top_p}")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop = mass_before >= top_p
        drop[..., 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    if uniform is None:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    cdf = probs.cumsum(dim=-1)  # (B, V)
    target = (uniform.to(cdf) * cdf[:, -1]).unsqueeze(-1)  # < the total: an index always exists
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def cfg_scale_at(t: int, n_tokens: int, scale: float, power: float = 0.0) -> float:
    """The guidance scale for token ``t`` of ``n_tokens`` (see the module docstring)."""
    if power == 0:
        return scale
    ramp = (1 - math.cos(math.pi * (t / n_tokens) ** power)) / 2
    return 1 + (scale - 1) * ramp


def sample_seeds(seed: int, start: int, count: int) -> list[int]:
    """Seeds of samples ``start`` .. ``start + count - 1`` of a run seeded ``seed``, decorrelated by
    numpy's ``SeedSequence`` (nearby runs and samples share no streams)."""
    return [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(start, start + count)]


def seed_uniforms(seeds: Sequence[int], n_tokens: int, device: torch.device) -> Tensor:
    """(B, n_tokens) uniforms, row i from ``torch.Generator().manual_seed(seeds[i])`` (on CPU, so a
    seed means the same draws on every device)."""
    rows = [torch.rand(n_tokens, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device)


def compiled_step(model: Generator, backend: str | Callable = "inductor") -> Callable[..., Tensor]:
    """``model.forward_step`` under ``torch.compile`` (static shapes), made once per model and
    backend and reused by later calls (the cache buffers are inputs, not constants: new caches of
    the same shape do not recompile)."""
    steps = model.__dict__.setdefault("_compiled_steps", {})
    if backend not in steps:
        steps[backend] = torch.compile(model.forward_step, backend=backend, dynamic=False)
    return steps[backend]


def _cache_dtype(model: Generator, device: torch.device) -> torch.dtype:
    """bf16/fp16 under autocast (what k/v come out as), else the parameters' dtype."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return model.output.weight.dtype


@torch.no_grad()
def generate(model: Generator, labels: Tensor, n_tokens: int, *, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, cfg_scale: float = 1.0, cfg_power: float = 0.0,
             use_kv_cache: bool = True, generator: torch.Generator | None = None,
             seeds: Sequence[int] | None = None, compile: bool | str | Callable = False) -> Tensor:
    """Sample (B, n_tokens) token indices in raster order for class ``labels`` (B,).

    ``cfg_scale`` 1.0 means no guidance (and no doubled batch); ``cfg_power`` > 0 ramps it (RAR).
    ``generator`` (on the model's device) or per-sample ``seeds`` (B ints) make the draw
    reproducible; neither uses the global RNG. ``compile``: True (inductor) or a torch.compile
    backend name for the cached decode step. The model is put in eval mode for the call and
    restored afterwards.
    """
    if not 1 <= n_tokens <= model.config.n_tokens:
        raise ValueError(f"n_tokens {n_tokens} must be in [1, {model.config.n_tokens}]")
    b, device = labels.shape[0], labels.device
    if seeds is not None and (generator is not None or len(seeds) != b):
        raise ValueError(f"give one seed per sample ({b}) and no generator with seeds")
    uniforms = None if seeds is None else seed_uniforms(seeds, n_tokens, device)
    guided = cfg_scale != 1.0
    cond = torch.cat([labels, torch.full_like(labels, model.null_class)]) if guided else labels  # (B',)

    def pick(logits: Tensor, t: int) -> Tensor:  # last-position logits (B', V) -> (B,)
        if guided:
            c, u = logits.chunk(2)
            logits = u + cfg_scale_at(t, n_tokens, cfg_scale, cfg_power) * (c - u)
        return sample_logits(logits, temperature, top_k, top_p, generator,
                             None if uniforms is None else uniforms[:, t])

    was_training = model.training
    model.eval()
    out = torch.empty(b, n_tokens, dtype=torch.long, device=device)
    try:
        if use_kv_cache:
            _decode_cached(model, cond, out, pick, compile)
        else:
            for t in range(n_tokens):
                prefix = torch.cat([out[:, :t]] * 2) if guided else out[:, :t]
                out[:, t] = pick(model.forward_prefix(cond, prefix)[:, -1], t)
    finally:
        if use_kv_cache:
            model.clear_caches()
        model.train(was_training)
    return out


def _decode_cached(model: Generator, cond: Tensor, out: Tensor, pick: Callable[[Tensor, int], Tensor],
                   compile: bool | str | Callable) -> None:
    """Fill ``out`` (B, N): prefill the prefix, then one cached step per token."""
    device, (b, n) = cond.device, out.shape
    p = model.prefix_len
    model.setup_caches(cond.shape[0], p + n - 1, _cache_dtype(model, device), device)
    step = model.forward_step
    if compile:
        step = compiled_step(model, "inductor" if compile is True else compile)
    out[:, 0] = pick(model.forward_step(torch.arange(p, device=device), labels=cond)[:, -1], 0)
    tok = torch.empty(cond.shape[0], 1, dtype=torch.long, device=device)  # (B', 1), reused
    pos = torch.empty(1, dtype=torch.long, device=device)
    for t in range(1, n):
        tok.view(-1, b).copy_(out[:, t - 1])  # every CFG half gets the same token
        pos.fill_(p + t - 1)
        out[:, t] = pick(step(pos, idx=tok)[:, -1], t)
