"""What both generator families (:mod:`vfmtok.gpt`, :mod:`vfmtok.rar`) are built from.

- :class:`ClassEmbedder`: the class embedding with a null row for classifier-free guidance;
- :class:`Attention`: causal multi-head (optionally grouped-query) self-attention, with optional
  biases, per-head qk LayerNorm (RAR) and 2D RoPE tables (GPT), and a cached decoding path;
- :class:`KVCache`: a *static* cache, allocated once per generation for the longest sequence and
  written in place (``index_copy_``), so a decode step allocates no cache memory and never
  concatenates; every step attends over the same (max_batch, heads, max_seq, head_dim) buffers
  under a mask row, so its shapes never change and ``torch.compile`` traces it once;
- :class:`Generator`: the decoding and model-folder plumbing both families share
  (``setup_caches`` / ``clear_caches``, the step mask, ``save_pretrained`` / ``from_pretrained``).

A family says how many sequence positions come before the first image token's input
(:attr:`Generator.prefix_len`: the GPT's class token; RAR's learned [CLS] and its class token),
so :func:`vfmtok.sampling.generate` decodes either one the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmtok import model_folder
from vfmtok.config_schema import to_dict, validate

# (runner, tokens (B, N), labels (B,), step) -> loss: one training step's loss (runner: the
# DDP/FSDP/compiled module around the generator)
StepFn = Callable[[nn.Module, Tensor, Tensor, int], Tensor]


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


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (2j, 2j+1) of x (B, S, H, Dh) by per-position tables (S, Dh/2)."""
    xf = x.float().unflatten(-1, (-1, 2))  # (B, S, H, Dh/2, 2)
    x0, x1 = xf.unbind(-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]  # (1, S, 1, Dh/2)
    out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1)
    return out.flatten(-2).type_as(x)


class KVCache(nn.Module):
    """Keys/values of every position decoded so far: (max_batch, kv_heads, max_seq, head_dim).

    Allocated once, written in place; buffers are non-persistent so checkpoints never carry a cache.
    """

    def __init__(self, max_batch: int, max_seq_len: int, n_kv_head: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None):
        super().__init__()
        shape = (max_batch, n_kv_head, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, Hkv, S, Dh) at ``input_pos`` (S,); return views of the whole (B, ...) cache."""
        b = k.shape[0]
        keys, values = self.k[:b], self.v[:b]  # views: no copy
        keys.index_copy_(2, input_pos, k.to(keys.dtype))
        values.index_copy_(2, input_pos, v.to(values.dtype))
        return keys, values


class Attention(nn.Module):
    """Causal self-attention: fused qkv projection, optional biases and qk LayerNorm, optional RoPE.

    ``forward(x, rope, input_pos, mask)``: without ``input_pos`` the whole sequence at once
    (causal SDPA); with it, cached decoding of the new positions against :attr:`kv_cache` under
    ``mask`` (S, max_seq). Grouped-query heads are expanded inside SDPA (``enable_gqa``), not by
    copying the cache every step.
    """

    def __init__(self, dim: int, n_head: int, n_kv_head: int | None = None, *, bias: bool = False,
                 qk_norm: bool = False, norm_eps: float = 1e-6, attn_dropout: float = 0.0,
                 resid_dropout: float = 0.0):
        super().__init__()
        self.n_head, self.n_kv_head = n_head, n_kv_head or n_head
        self.head_dim = dim // n_head
        kv_dim = self.n_kv_head * self.head_dim
        self.wqkv = nn.Linear(dim, dim + 2 * kv_dim, bias=bias)
        self.wo = nn.Linear(dim, dim, bias=bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else None
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else None
        self.attn_dropout = attn_dropout
        self.resid_dropout = nn.Dropout(resid_dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None,
                input_pos: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        b, s, d = x.shape
        kv_dim = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([d, kv_dim, kv_dim], dim=-1)
        q = q.view(b, s, self.n_head, self.head_dim)
        k = k.view(b, s, self.n_kv_head, self.head_dim)
        v = v.view(b, s, self.n_kv_head, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, Dh)
        if input_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("forward_step needs setup_caches() first")
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, Hkv, L, Dh)
            k, v = k.to(q.dtype), v.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None,
            dropout_p=self.attn_dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,
        )  # (B, H, S, Dh)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, s, d)))


class Generator(nn.Module):
    """Decoding and model-folder plumbing shared by the generator families.

    Subclasses set :attr:`config_cls` (whose ``family`` is ``config.json``'s format and section
    name) and :attr:`prefix_len`, keep their blocks in ``self.layers`` (each with an
    :class:`Attention` as ``.attention``; FSDP2 shards per block) and their head in ``self.output``,
    and implement ``forward``, ``forward_prefix`` and ``forward_step``.
    """

    config_cls: ClassVar[type]  # its ``family`` names the family (config.json's format and section)
    family: ClassVar[str]
    prefix_len: ClassVar[int]  # sequence positions before the input of image token 0
    config: Any
    layers: nn.ModuleList
    output: nn.Linear
    families: ClassVar[dict[str, type[Generator]]] = {}  # config family -> class (vfmtok.zoo)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A family registers itself by defining its class: its config's ``family`` names it, so
        :func:`vfmtok.zoo.build` goes from a config to its class without an ``isinstance`` chain."""
        super().__init_subclass__(**kwargs)
        cls.family = cls.config_cls.family
        Generator.families[cls.family] = cls

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        validate(cfg)
        self.config = cfg
        self.register_buffer("causal_mask", None, persistent=False)  # (L, L) once caches exist

    @property
    def null_class(self) -> int:
        """Label index of the unconditional (CFG) class."""
        return self.config.num_classes

    @property
    def max_seq_len(self) -> int:
        """Longest input: the prefix and every image token but the last (which predicts nothing)."""
        return self.prefix_len + self.config.n_tokens - 1

    def step_fn(self, cfg: Any) -> StepFn | None:
        """The training loss of a step for :func:`vfmtok.generator_training.train_ar` when it is
        not plain teacher forcing in raster order (``cfg``: the :class:`~vfmtok.config.ARTrainConfig`);
        None by default."""
        return None

    # -- model folders ---------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, name: str = "", state: dict | None = None) -> str:
        """``folder/{model.safetensors, config.json}`` (``name``: the zoo entry, for people);
        returns the weights' sha256. ``state``: the weights to write instead of this module's
        (the gathered full state of an FSDP2-sharded model)."""
        kind = self.family
        return model_folder.save_folder(folder, kind, self.state_dict() if state is None else state,
                                      {kind: to_dict(self.config), "zoo_name": name})

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> Generator:
        """The model saved in ``folder``, in eval mode, rebuilt from its ``config.json`` alone;
        ``Generator.from_pretrained`` loads whichever family the folder holds."""
        if cls is Generator:
            from vfmtok import zoo  # the families register themselves when zoo imports them

            return zoo.from_pretrained(folder, device)
        meta = model_folder.read_config(folder, cls.family)
        model = cls(model_folder.section(meta, cls.family, cls.config_cls, folder))
        model.load_state_dict(model_folder.load_weights(folder))
        return model.to(device).eval()

    # -- static KV caches --------------------------------------------------------------------------
    def setup_caches(self, max_batch: int, max_seq_len: int, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> None:
        """Allocate one :class:`KVCache` per layer and the causal mask (replacing earlier ones)."""
        if max_seq_len > self.max_seq_len:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the model's {self.max_seq_len} "
                             f"(n_tokens {self.config.n_tokens})")
        ref = self.output.weight
        dtype, device = dtype or ref.dtype, device or ref.device
        for layer in self.layers:
            att = layer.attention
            att.kv_cache = KVCache(max_batch, max_seq_len, att.n_kv_head, att.head_dim, dtype, device)
        self.causal_mask = torch.ones(max_seq_len, max_seq_len, dtype=torch.bool, device=device).tril()

    def clear_caches(self) -> None:
        """Free the KV caches (the full-sequence path never needs them)."""
        for layer in self.layers:
            layer.attention.kv_cache = None
        self.causal_mask = None

    def step_mask(self, input_pos: Tensor, new_positions: int) -> Tensor:
        """The causal mask rows (S, max_seq) of ``input_pos``, after checking the call."""
        if self.causal_mask is None:
            raise RuntimeError("forward_step needs setup_caches() first")
        if input_pos.shape != (new_positions,):
            raise ValueError(f"input_pos {tuple(input_pos.shape)} does not match {new_positions} "
                             "new positions")
        return self.causal_mask[input_pos]


def embed_step(parts: list[Tensor]) -> Tensor:
    """The new positions' inputs (B, S, D) of a cached step; a single part is used as is (a decode
    step of one token concatenates nothing)."""
    if not parts:
        raise ValueError("forward_step needs idx, labels or both")
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
