"""Sampling image tokens from a class-conditional :class:`~vfmtok.gpt.GPT`.

Classifier-free guidance runs the conditional and the unconditional (null-class) rows as one
doubled batch and mixes their logits as u + s * (c - u) before temperature / top-k / top-p, as
LlamaGen does. Both halves are fed the same sampled token, so they stay aligned.

With the KV cache the class token is prefilled once and every further step feeds one token;
without it the whole prefix is re-run each step (quadratic; kept for the speed comparison and as
an independent check of the cache).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vfmtok.gpt import GPT


def sample_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row of logits (B, V) -> (B,) long.

    temperature 0 means greedy (argmax); top_k 0 and top_p 1.0 switch those filters off. top-p
    keeps the smallest set of most likely tokens whose mass reaches ``top_p`` (never empty).
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
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _cache_dtype(model: GPT, device: torch.device) -> torch.dtype:
    """bf16/fp16 under autocast (what k/v come out as), else the parameters' dtype."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return model.output.weight.dtype


@torch.no_grad()
def generate(model: GPT, labels: Tensor, n_tokens: int, *, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, cfg_scale: float = 1.0,
             use_kv_cache: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Sample (B, n_tokens) token indices for class ``labels`` (B,).

    ``cfg_scale`` 1.0 means no guidance (and no doubled batch). ``generator`` (on the model's
    device) makes the draw reproducible; None uses the global RNG. The model is put in eval mode
    for the call and restored afterwards.
    """
    if not 1 <= n_tokens <= model.config.n_tokens:
        raise ValueError(f"n_tokens {n_tokens} must be in [1, {model.config.n_tokens}]")
    b, device = labels.shape[0], labels.device
    guided = cfg_scale != 1.0
    cond = labels
    if guided:
        cond = torch.cat([labels, torch.full_like(labels, model.null_class)])  # (2B,)

    def pick(logits: Tensor) -> Tensor:  # last-position logits (B', V) -> (B,)
        if guided:
            c, u = logits.chunk(2)
            logits = u + cfg_scale * (c - u)
        return sample_logits(logits, temperature, top_k, top_p, generator)

    def widen(tok: Tensor) -> Tensor:  # (B,) -> (B', 1), same token for both CFG halves
        return (torch.cat([tok, tok]) if guided else tok)[:, None]

    was_training = model.training
    model.eval()
    out = torch.empty(b, n_tokens, dtype=torch.long, device=device)
    try:
        if use_kv_cache:
            model.setup_caches(cond.shape[0], n_tokens, _cache_dtype(model, device), device)
            pos = torch.arange(n_tokens, device=device)
            out[:, 0] = pick(model.forward_step(pos[:1], labels=cond)[:, -1])
            for t in range(1, n_tokens):
                logits = model.forward_step(pos[t:t + 1], idx=widen(out[:, t - 1]))  # (B', 1, V)
                out[:, t] = pick(logits[:, -1])
        else:
            for t in range(n_tokens):
                prefix = out[:, :t]
                if guided:
                    prefix = torch.cat([prefix, prefix])
                out[:, t] = pick(model.forward_prefix(cond, prefix)[:, -1])
    finally:
        if use_kv_cache:
            model.clear_caches()
        model.train(was_training)
    return out
