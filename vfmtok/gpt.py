"""LlamaGen-style class-conditional GPT over tokenizer indices.

Decoder-only transformer: RMSNorm, SwiGLU, no biases, 2D RoPE over the sqrt(T) x sqrt(T) anchor
grid, one class token in front (a null class row for classifier-free guidance), zero-initialised
output head. Sizes follow LlamaGen (GPT-B 111M ... GPT-3B) so published numbers stay comparable.

Sequence layout (teacher forcing): input = [cls, tok_0, ..., tok_{T-2}] and output position i
predicts tok_i. Sequence position 0 (the class token) gets no rotation; position i >= 1 holds
tok_{i-1} and is rotated by that token's grid cell (row, col) = divmod(i - 1, sqrt(T)).

Two forward paths share every weight:
- ``forward`` / ``forward_prefix``: the whole sequence at once, causal SDPA (training, and
  cache-free sampling for the speed comparison);
- ``forward_step``: incremental decoding against a per-layer :class:`KVCache` set up with
  ``setup_caches`` and addressed by ``input_pos``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmtok import pretrained
from vfmtok.config import GPT_SIZES, GPTConfig
from vfmtok.typed import to_dict, validate


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32 (bf16 mean-of-squares loses too much)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        hidden = cfg.ffn_hidden
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)
        self.dropout = nn.Dropout(cfg.resid_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def rope_2d_tables(grid: int, head_dim: int, base: float, cls: str = "identity") -> tuple[Tensor, Tensor]:
    """cos/sin tables (1 + grid*grid, head_dim // 2) for interleaved channel pairs.

    Row 0 is the class token: cos 1, sin 0, i.e. the identity; ``cls="zero"`` writes zeros there
    as LlamaGen does, which zeroes the class token's query and key (what its released weights,
    and VFMTok's, were trained with). The first half of the pairs rotates with the grid row, the
    second half with the column.
    """
    quarter = head_dim // 4
    inv_freq = 1.0 / (base ** (torch.arange(quarter, dtype=torch.float32) * 2 / (head_dim // 2)))
    pos = torch.arange(grid, dtype=torch.float32)
    ang = torch.outer(pos, inv_freq)  # (grid, quarter)
    rows = ang[:, None, :].expand(grid, grid, quarter)
    cols = ang[None, :, :].expand(grid, grid, quarter)
    angles = torch.cat([rows, cols], dim=-1).reshape(grid * grid, 2 * quarter)  # (T, Dh/2)
    angles = torch.cat([torch.zeros(1, 2 * quarter), angles])  # (1 + T, Dh/2)
    cos, sin = angles.cos(), angles.sin()
    if cls == "zero":
        cos[0] = 0.0
    return cos, sin


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (2j, 2j+1) of x (B, S, H, Dh) by per-position tables (S, Dh/2)."""
    xf = x.float().unflatten(-1, (-1, 2))  # (B, S, H, Dh/2, 2)
    x0, x1 = xf.unbind(-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]  # (1, S, 1, Dh/2)
    out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1)
    return out.flatten(-2).type_as(x)


class KVCache(nn.Module):
    """Keys/values of every position decoded so far: (max_batch, kv_heads, max_seq, head_dim).

    Buffers are non-persistent so checkpoints never carry a cache.
    """

    def __init__(self, max_batch: int, max_seq_len: int, n_kv_head: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None):
        super().__init__()
        shape = (max_batch, n_kv_head, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, Hkv, S, Dh) at ``input_pos`` (S,); return the whole (B, ...) cache."""
        b = k.shape[0]
        self.k[:b, :, input_pos] = k.to(self.k.dtype)
        self.v[:b, :, input_pos] = v.to(self.v.dtype)
        return self.k[:b], self.v[:b]


class Attention(nn.Module):
    """Causal multi-head (optionally grouped-query) attention with 2D RoPE."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        kv_dim = self.n_kv_head * self.head_dim
        self.wqkv = nn.Linear(cfg.dim, cfg.dim + 2 * kv_dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout = cfg.attn_dropout
        self.resid_dropout = nn.Dropout(cfg.resid_dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, input_pos: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        """x (B, S, D). ``input_pos``/``mask`` (S, L) given = cached decoding, else full causal."""
        b, s, d = x.shape
        kv_dim = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([d, kv_dim, kv_dim], dim=-1)
        q = apply_rope(q.view(b, s, self.n_head, self.head_dim), cos, sin)
        k = apply_rope(k.view(b, s, self.n_kv_head, self.head_dim), cos, sin)
        v = v.view(b, s, self.n_kv_head, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, Dh)
        if input_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("forward_step needs setup_caches() first")
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, Hkv, L, Dh)
            k, v = k.to(q.dtype), v.to(q.dtype)
        if self.n_kv_head != self.n_head:
            rep = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )  # (B, H, S, Dh)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, s, d)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, input_pos: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, input_pos, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class ClassEmbedder(nn.Module):
    """Class embedding with a null row (index ``num_classes``) that label dropout switches to."""

    def __init__(self, num_classes: int, dim: int, dropout: float):
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.table = nn.Embedding(num_classes + 1, dim)

    def drop(self, labels: Tensor) -> Tensor:
        """Labels with a ``dropout`` fraction replaced by the null class (train mode only)."""
        if not self.training or self.dropout <= 0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device) < self.dropout
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: Tensor) -> Tensor:
        return self.table(self.drop(labels))[:, None]  # (B, 1, D)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class GPT(nn.Module):
    """Class-conditional autoregressive transformer over ``n_tokens`` image tokens."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        validate(cfg)
        self.config = cfg
        self.cls_embedding = ClassEmbedder(cfg.num_classes, cfg.dim, cfg.class_dropout)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_2d_tables(math.isqrt(cfg.n_tokens), cfg.head_dim, cfg.rope_base, cfg.cls_rope)
        self.register_buffer("rope_cos", cos, persistent=False)  # (1 + T, Dh/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("causal_mask", None, persistent=False)  # (L, L) once caches exist
        self.reset_parameters()

    @property
    def null_class(self) -> int:
        """Label index of the unconditional (CFG) class."""
        return self.config.num_classes

    def save_pretrained(self, folder: str | Path, name: str = "", state: dict | None = None) -> str:
        """``folder/{model.safetensors, config.json}`` (``name``: the zoo entry, for people);
        returns the weights' sha256. ``state``: the weights to write instead of this module's
        (the gathered full state of an FSDP2-sharded model)."""
        return pretrained.save_folder(folder, "gpt", self.state_dict() if state is None else state,
                                      {"gpt": to_dict(self.config), "zoo_name": name})

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> GPT:
        """The GPT saved in ``folder``, in eval mode, rebuilt from its ``config.json`` alone."""
        meta = pretrained.read_config(folder, "gpt")
        model = cls(pretrained.section(meta, "gpt", GPTConfig, folder))
        model.load_state_dict(pretrained.load_weights(folder))
        return model.to(device).eval()

    def reset_parameters(self) -> None:
        """N(0, init_std) for every Linear/Embedding, then a zero output head (uniform logits)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=self.config.init_std)
        nn.init.zeros_(self.output.weight)

    # -- full-sequence path -------------------------------------------------------------------
    def forward(self, idx: Tensor, labels: Tensor,
                targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing. idx (B, T) tokens, labels (B,) -> logits (B, T, V) and the loss.

        Position i of the logits predicts idx[:, i] (input = [cls, idx[:, :-1]]); the loss is the
        mean cross-entropy against ``targets`` (usually ``idx`` itself), None without targets.
        """
        if idx.shape[1] < 1:
            raise ValueError("idx needs at least one token")
        logits = self.forward_prefix(labels, idx[:, :-1])
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def forward_prefix(self, labels: Tensor, prefix: Tensor) -> Tensor:
        """Logits (B, t+1, V) of input [cls, prefix (B, t)]; the last row predicts token t."""
        s = 1 + prefix.shape[1]
        if s > self.config.n_tokens:
            raise ValueError(f"sequence of {s} exceeds n_tokens {self.config.n_tokens}")
        x = torch.cat([self.cls_embedding(labels), self.tok_embeddings(prefix)], dim=1)
        h = self.tok_dropout(x)  # (B, S, D)
        cos, sin = self.rope_cos[:s], self.rope_sin[:s]
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.output(self.norm(h)).float()

    # -- KV-cache path --------------------------------------------------------------------------
    def setup_caches(self, max_batch: int, max_seq_len: int, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> None:
        """Allocate one :class:`KVCache` per layer (replacing any earlier one)."""
        if max_seq_len > self.config.n_tokens:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds n_tokens {self.config.n_tokens}")
        ref = self.output.weight
        dtype, device = dtype or ref.dtype, device or ref.device
        cfg = self.config
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(max_batch, max_seq_len, cfg.kv_heads,
                                               cfg.head_dim, dtype, device)
        self.causal_mask = torch.ones(max_seq_len, max_seq_len, dtype=torch.bool,
                                      device=device).tril()

    def clear_caches(self) -> None:
        """Free the KV caches (the full-sequence path never needs them)."""
        for layer in self.layers:
            layer.attention.kv_cache = None
        self.causal_mask = None

    def forward_step(self, input_pos: Tensor, idx: Tensor | None = None,
                     labels: Tensor | None = None) -> Tensor:
        """Cached incremental forward; returns logits (B, S, V) for the S new positions.

        With ``labels`` (B,) the class token is placed at position 0 (prefill) followed by the
        optional ``idx`` (B, S-1); without, ``idx`` (B, S) are tokens at ``input_pos`` (S,)
        (the token at sequence position p is tok_{p-1}). Positions must be written in order.
        """
        if self.causal_mask is None:
            raise RuntimeError("forward_step needs setup_caches() first")
        parts = []
        if labels is not None:
            parts.append(self.cls_embedding(labels))
        if idx is not None:
            parts.append(self.tok_embeddings(idx))
        if not parts:
            raise ValueError("forward_step needs idx, labels or both")
        h = self.tok_dropout(torch.cat(parts, dim=1))  # (B, S, D)
        if input_pos.shape != (h.shape[1],):
            raise ValueError(f"input_pos {tuple(input_pos.shape)} does not match {h.shape[1]} "
                             "new positions")
        if labels is not None and int(input_pos[0]) != 0:
            raise ValueError("the class token must sit at position 0")
        cos, sin = self.rope_cos[input_pos], self.rope_sin[input_pos]
        mask = self.causal_mask[input_pos]  # (S, L)
        for layer in self.layers:
            h = layer(h, cos, sin, input_pos, mask)
        return self.output(self.norm(h)).float()


# ---------------------------------------------------------------------------------------------
# The zoo (sizes in vfmtok.config.GPT_SIZES)
# ---------------------------------------------------------------------------------------------
def build_gpt(name: str, **overrides) -> GPT:
    """The zoo entry ``name`` (a key of :data:`vfmtok.config.GPT_SIZES`) with config ``overrides``."""
    if name not in GPT_SIZES:
        raise ValueError(f"unknown GPT {name!r} (known: {', '.join(GPT_SIZES)})")
    return GPT(GPTConfig(**{**GPT_SIZES[name], **overrides}))


GPT_MODELS: dict[str, Callable[..., GPT]] = {name: partial(build_gpt, name) for name in GPT_SIZES}
