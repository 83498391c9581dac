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
- ``forward_step``: incremental decoding against the per-layer static
  :class:`~vfmtok.transformer.KVCache` set up with ``setup_caches`` and addressed by ``input_pos``.

Attention, the KV cache, the class embedder and the model-folder plumbing are shared with the RAR
generator (:mod:`vfmtok.transformer`); the RMSNorm/SwiGLU blocks and the 2D RoPE are the GPT's own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmtok.generator_config import GPTConfig
from vfmtok.transformer import Attention, ClassEmbedder, Generator, embed_step


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


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg.dim, cfg.n_head, cfg.kv_heads, attn_dropout=cfg.attn_dropout,
                                   resid_dropout=cfg.resid_dropout)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], input_pos: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), rope, input_pos, mask)
        return x + self.feed_forward(self.ffn_norm(x))


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class GPT(Generator):
    """Class-conditional autoregressive transformer over ``n_tokens`` image tokens."""

    config_cls, prefix_len = GPTConfig, 1

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)  # validates it, as self.config
        self.cls_embedding = ClassEmbedder(cfg.num_classes, cfg.dim, cfg.class_dropout)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_2d_tables(math.isqrt(cfg.n_tokens), cfg.head_dim, cfg.rope_base, cfg.cls_rope)
        self.register_buffer("rope_cos", cos, persistent=False)  # (1 + T, Dh/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

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
        rope = self.rope_cos[:s], self.rope_sin[:s]
        for layer in self.layers:
            h = layer(h, rope)
        return self.output(self.norm(h)).float()

    # -- KV-cache path --------------------------------------------------------------------------
    def forward_step(self, input_pos: Tensor, idx: Tensor | None = None,
                     labels: Tensor | None = None) -> Tensor:
        """Cached incremental forward; returns logits (B, S, V) for the S new positions.

        With ``labels`` (B,) the class token is placed at position 0 (prefill) followed by the
        optional ``idx`` (B, S-1); without, ``idx`` (B, S) are tokens at ``input_pos`` (S,)
        (the token at sequence position p is tok_{p-1}). Positions must be written in order.
        """
        parts = []
        if labels is not None:
            parts.append(self.cls_embedding(labels))
        if idx is not None:
            parts.append(self.tok_embeddings(idx))
        h = self.tok_dropout(embed_step(parts))  # (B, S, D)
        mask = self.step_mask(input_pos, h.shape[1])  # (S, L)
        if labels is not None and int(input_pos[0]) != 0:
            raise ValueError("the class token must sit at position 0")
        rope = self.rope_cos[input_pos], self.rope_sin[input_pos]
        for layer in self.layers:
            h = layer(h, rope, input_pos, mask)
        return self.output(self.norm(h)).float()
