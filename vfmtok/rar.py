"""RAR: randomized autoregressive generation (Yu et al. 2024, arXiv 2411.00776), the generator
behind VFMTok's best figures (CVMI-Lab/VFMTok-RAR: gFID 1.33-1.44 with CFG, 1.65-2.02 without).

Training permutes each sequence's factorization order with probability r, annealed from 1 to 0
(:func:`random_ratio`), and is raster afterwards; sampling is raster with the KV cache, so the
model stays a plain causal transformer. Written from the paper and the public code
(bytedance/1d-tokenizer ``modeling/rar.py``, ``utils/train_utils.py``,
``configs/training/generator/rar.yaml``), whose choices it follows:

- blocks: pre-LayerNorm (eps 1e-6), attention with qkv/output biases and per-head qk LayerNorm, a
  GELU MLP, both branches modulated by adaLN-zero on the class condition (shift, scale, gate);
  a final non-affine LayerNorm with adaLN and a biased linear head; no RoPE;
- sequence: [CLS] (a learned vector), the class token, then the image tokens in the chosen order;
  learned absolute position embeddings (rows for [CLS], the class token and the N grid cells) and
  *target-aware* ones: the input at sequence position p also carries the embedding of the grid cell
  that position p must predict (position 1, the class token, carries the first target's cell;
  the input token of step t carries the cell of token t + 1), so the model knows where it writes;
- condition: class embedding (with the null class for CFG, label dropout 0.1) plus a learned
  per-position step embedding, fed to every block's adaLN;
- init: truncated normal (std 0.02) for weights and tables, zero biases, the [CLS] vector and all
  adaLN modulations zero (each block starts as the identity).

Own choices: separate token and class tables (the public code shares one table with an unused
mask row), and tables sized to the rows used (the public ones carry ~1024 spare rows), so counts
are ~0.7% below the published ones (RAR-B 259.3M vs 261M).

Sequence positions: 0 = [CLS], 1 = class, 2 + i = input token i (in generation order). Output at
position p >= 1 predicts generation step p - 1; [CLS]'s output is unused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmtok.config import ARTrainConfig
from vfmtok.generator_config import RARConfig
from vfmtok.transformer import Attention, ClassEmbedder, Generator, StepFn, embed_step


def random_ratio(step: int, start: int, end: int) -> float:
    """RAR's annealing: 1 before ``start``, linear to 0 at ``end``, 0 after (start == end: a step)."""
    if step < start:
        return 1.0
    if step >= end:
        return 0.0
    return 1.0 - (step - start) / (end - start)


def sample_orders(batch: int, n_tokens: int, ratio: float, device: torch.device | str | None = None,
                  generator: torch.Generator | None = None) -> Tensor:
    """Factorization orders (batch, n_tokens): each row a uniform random permutation with
    probability ``ratio``, else the raster order. ``ratio`` <= 0 draws nothing (the identity)."""
    raster = torch.arange(n_tokens, device=device).expand(batch, n_tokens)
    if ratio <= 0:
        return raster.clone()
    perms = torch.rand(batch, n_tokens, device=device, generator=generator).argsort(dim=1)
    if ratio >= 1:
        return perms
    permute = torch.rand(batch, 1, device=device, generator=generator) < ratio  # (B, 1)
    return torch.where(permute, perms, raster)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class MLP(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout, with biases."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class AdaLNBlock(nn.Module):
    """Pre-norm block whose attention and MLP branches are shifted, scaled and gated by the
    condition (adaLN-zero: the modulation starts at zero, so the block starts as the identity)."""

    def __init__(self, cfg: RARConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attention = Attention(cfg.dim, cfg.n_head, bias=True, qk_norm=True, norm_eps=cfg.norm_eps,
                                   attn_dropout=cfg.attn_dropout, resid_dropout=cfg.resid_dropout)
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.feed_forward = MLP(cfg.dim, cfg.mlp_dim, cfg.resid_dropout)
        self.modulation = nn.Linear(cfg.dim, 6 * cfg.dim)

    def forward(self, x: Tensor, c: Tensor, input_pos: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        """x, c (B, S, D): inputs and per-position conditions."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(c)).chunk(6, dim=-1)
        h = modulate(self.attention_norm(x), shift1, scale1)
        x = x + gate1 * self.attention(h, None, input_pos, mask)
        return x + gate2 * self.feed_forward(modulate(self.ffn_norm(x), shift2, scale2))


class RAR(Generator):
    """Class-conditional RAR over ``n_tokens`` image tokens (see the module docstring)."""

    config_cls, prefix_len = RARConfig, 2

    def __init__(self, cfg: RARConfig):
        super().__init__(cfg)  # validates it, as self.config
        n, d = cfg.n_tokens, cfg.dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.cls_embedding = ClassEmbedder(cfg.num_classes, d, cfg.class_dropout)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, d)
        self.pos_embed = nn.Parameter(torch.zeros(2 + n, d))  # [CLS], class, then grid cell j at 2 + j
        self.target_pos_embed = nn.Parameter(torch.zeros(n, d))  # row j: "the next token is cell j"
        self.step_embed = nn.Parameter(torch.zeros(1 + n, d))  # per sequence position, into the condition
        self.tok_dropout = nn.Dropout(cfg.token_dropout)
        self.layers = nn.ModuleList(AdaLNBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps, elementwise_affine=False)
        self.norm_modulation = nn.Linear(d, 2 * d)
        self.output = nn.Linear(d, cfg.vocab_size)
        self.register_buffer("cond_cache", None, persistent=False)  # (B, D) class embedding, decoding
        self.register_buffer("raster_pos", None, persistent=False)  # (1 + N, D), decoding
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for table in (self.pos_embed, self.target_pos_embed, self.step_embed):
            nn.init.trunc_normal_(table, std=std)
        nn.init.zeros_(self.cls_token)
        for lin in [b.modulation for b in self.layers] + [self.norm_modulation]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # -- inputs ------------------------------------------------------------------------------------
    def embed_inputs(self, labels: Tensor, seq: Tensor,
                     orders: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Inputs x and conditions c (B, 2 + t, D) of [CLS], class, ``seq`` (B, t) tokens in
        generation order ``orders`` (B, N) (None: raster); t <= N - 1."""
        b, t = seq.shape
        if t > self.config.n_tokens - 1:
            raise ValueError(f"{t} input tokens exceed n_tokens - 1 = {self.config.n_tokens - 1}")
        if orders is None:
            orders = torch.arange(self.config.n_tokens, device=seq.device).expand(b, -1)
        cond = self.cls_embedding(labels)  # (B, 1, D)
        x = torch.cat([self.cls_token.expand(b, -1, -1), cond, self.tok_embeddings(seq)], dim=1)
        head = torch.arange(2, device=seq.device).expand(b, 2)
        x = x + self.pos_embed[torch.cat([head, 2 + orders[:, :t]], dim=1)]  # each token's own cell
        target = self.target_pos_embed[orders[:, : t + 1]]  # (B, t+1, D): the cell each input predicts
        x = x + torch.cat([torch.zeros_like(target[:, :1]), target], dim=1)
        return x, cond + self.step_embed[: 2 + t]

    def _run(self, x: Tensor, c: Tensor, input_pos: Tensor | None = None,
             mask: Tensor | None = None) -> Tensor:
        h = self.tok_dropout(x)  # (B, S, D)
        for layer in self.layers:
            h = layer(h, c, input_pos, mask)
        scale, shift = self.norm_modulation(F.silu(c)).chunk(2, dim=-1)
        return self.output(modulate(self.norm(h), shift, scale)).float()

    # -- full-sequence path ---------------------------------------------------------------------
    def forward(self, idx: Tensor, labels: Tensor, targets: Tensor | None = None,
                orders: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing in the factorization ``orders`` (B, N) (None: raster; see
        :func:`sample_orders`). idx (B, N) tokens in raster order -> logits (B, N, V) in
        *generation* order (row i predicts idx[b, orders[b, i]]) and the mean cross-entropy against
        ``targets`` (raster order, usually ``idx``) permuted the same way."""
        if orders is not None:
            idx = idx.gather(1, orders)
            targets = None if targets is None else targets.gather(1, orders)
        x, c = self.embed_inputs(labels, idx[:, :-1], orders)
        logits = self._run(x, c)[:, 1:]  # drop [CLS]'s output
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def forward_prefix(self, labels: Tensor, prefix: Tensor) -> Tensor:
        """Raster logits (B, t+1, V) after [CLS], class, ``prefix`` (B, t); the last predicts token t."""
        x, c = self.embed_inputs(labels, prefix)
        return self._run(x, c)[:, 1:]

    # -- KV-cache path --------------------------------------------------------------------------
    def setup_caches(self, max_batch: int, max_seq_len: int, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> None:
        """The KV caches, a (max_batch, D) slot for the class embedding, and the raster position
        table (position + target-aware embedding of every position), summed once per generation:
        decoding uses the weights as they are now."""
        super().setup_caches(max_batch, max_seq_len, dtype, device)
        ref = self.output.weight
        device = device or ref.device
        self.cond_cache = torch.zeros(max_batch, self.config.dim, dtype=ref.dtype, device=device)
        with torch.no_grad():  # raster: position p >= 1 predicts token p - 1 and carries its cell
            target = F.pad(self.target_pos_embed, (0, 0, 1, 0))  # (1 + N, D); none for [CLS]
            self.raster_pos = (self.pos_embed[: 1 + self.config.n_tokens] + target).to(device)

    def step_fn(self, cfg: ARTrainConfig) -> StepFn:
        """Training in annealed random orders (``randomness_anneal_start`` .. ``_end``)."""
        return annealed_step(cfg.randomness_anneal_start, cfg.randomness_anneal_end)

    def clear_caches(self) -> None:
        super().clear_caches()
        self.cond_cache = self.raster_pos = None

    def forward_step(self, input_pos: Tensor, idx: Tensor | None = None,
                     labels: Tensor | None = None) -> Tensor:
        """Cached raster decoding; logits (B, S', V) of the new positions that predict a token.

        With ``labels`` (B,): prefill of [CLS] and the class token at positions 0 and 1 (their
        logits: the class token's, which predicts token 0), then the optional ``idx`` (B, S-2)
        at 2, 3, ...; without, ``idx`` (B, S) are tokens at ``input_pos`` (S,) >= 2 (token i sits
        at position 2 + i and predicts token i + 1). Positions must be written in order.
        """
        parts, b = [], (labels if labels is not None else idx).shape[0]
        if labels is not None:
            cond = self.cls_embedding(labels)  # (B, 1, D)
            if self.cond_cache is not None:
                self.cond_cache[:b] = cond[:, 0]
            parts += [self.cls_token.expand(b, -1, -1), cond]
        if idx is not None:
            parts.append(self.tok_embeddings(idx))
        x = embed_step(parts)  # (B, S, D)
        mask = self.step_mask(input_pos, x.shape[1])
        if labels is not None and int(input_pos[0]) != 0:
            raise ValueError("the [CLS] and class tokens must sit at positions 0 and 1")
        x = x + self.raster_pos[input_pos]
        c = self.cond_cache[:b, None] + self.step_embed[input_pos]  # (B, S, D)
        logits = self._run(x, c, input_pos, mask)
        return logits[:, 1:] if labels is not None else logits


# ---------------------------------------------------------------------------------------------
# Training in annealed random orders
# ---------------------------------------------------------------------------------------------
def annealed_step(start: int, end: int) -> StepFn:
    """A ``step_fn`` for :func:`vfmtok.generator_training.train_ar`: the loss of step ``step`` with each row
    in a random order with probability :func:`random_ratio` (drawn from torch's RNG, which the
    checkpoints restore, so a resumed run draws the same orders)."""

    def step_fn(runner: nn.Module, tokens: Tensor, labels: Tensor, step: int) -> Tensor:
        orders = sample_orders(tokens.shape[0], tokens.shape[1], random_ratio(step, start, end),
                               tokens.device)
        return runner(tokens, labels, targets=tokens, orders=orders)[1]

    return step_fn
