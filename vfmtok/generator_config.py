"""The generator families' configs and the zoo of their named sizes, torch-free.

Each family (the raster GPT, RAR) declares its config class once, with a ``family`` name, and
registers its sizes with :func:`register_sizes`: one registry, :data:`ZOO`, answers every "which
model is ``GPT-L``?" (:func:`generator_config`, :func:`generator_family`). ``params.yaml``'s
``ar_model.model`` is a key of it, checked in milliseconds without torch; :mod:`vfmtok.zoo` builds
the model of a name (``zoo.build("RAR-L")``). Adding a size is one line in a family's table below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from vfmtok.config_schema import ConfigError, bounds


@dataclass(frozen=True)
class ZooEntry:
    """A named size: its family's config class and the fields that differ from that class's defaults."""

    config_cls: type
    fields: dict


ZOO: dict[str, ZooEntry] = {}


def register_sizes(config_cls: type, sizes: dict[str, dict]) -> dict[str, dict]:
    """Add ``sizes`` (name -> config fields) of ``config_cls``'s family to :data:`ZOO`; returns
    ``sizes``. A name is registered once: two families cannot both claim ``GPT-B``."""
    for name, fields in sizes.items():
        if name in ZOO:
            raise ValueError(f"generator size {name!r} is registered twice")
        ZOO[name] = ZooEntry(config_cls, fields)
    return sizes


def generator_family(name: str) -> str | None:
    """The family (``"gpt"``, ``"rar"``) of a zoo name, None for an unknown one."""
    entry = ZOO.get(name)
    return entry.config_cls.family if entry else None


def generator_config(name: str, **fields) -> GPTConfig | RARConfig:
    """The zoo entry ``name`` as its family's config, with ``fields`` on top."""
    if name not in ZOO:
        raise ConfigError("model", name, f"must be one of {', '.join(ZOO)}")
    entry = ZOO[name]
    return entry.config_cls(**{**entry.fields, **fields})


@dataclass(kw_only=True)
class GeneratorDropouts:
    """The dropouts every generator family takes: a label-dropout rate (the null class, for CFG)
    and the rest (``params.yaml``'s ``ar_model`` carries them for either family)."""

    class_dropout: float = field(default=0.1, metadata=bounds(0.0, 1.0))
    token_dropout: float = field(default=0.1, metadata=bounds(0.0, 1.0))
    resid_dropout: float = field(default=0.1, metadata=bounds(0.0, 1.0))  # attention + FFN out
    attn_dropout: float = field(default=0.0, metadata=bounds(0.0, 1.0))


# ----------------------------------------------------------------------------- raster GPT


@dataclass(kw_only=True)
class GPTConfig:
    """Architecture of the LlamaGen-style raster GPT (defaults: GPT-B on a 16x16 token grid)."""

    family: ClassVar[str] = "gpt"
    class_dropout: float = field(default=0.1, metadata=bounds(0.0, 1.0))  # labels -> the null class
    token_dropout: float = field(default=0.1, metadata=bounds(0.0, 1.0))
    resid_dropout: float = field(default=0.1, metadata=bounds(0.0, 1.0))  # attention + FFN out
    attn_dropout: float = field(default=0.0, metadata=bounds(0.0, 1.0))
    vocab_size: int = field(default=16384, metadata=bounds(2))
    n_tokens: int = field(default=256, metadata=bounds(1))  # block size; a perfect square
    dim: int = field(default=768, metadata=bounds(8))
    n_layer: int = field(default=12, metadata=bounds(1))
    n_head: int = field(default=12, metadata=bounds(1))
    n_kv_head: int | None = field(default=None, metadata=bounds(1))  # None = n_head (no GQA)
    multiple_of: int = field(default=256, metadata=bounds(1))  # SwiGLU hidden rounding
    ffn_dim_multiplier: float | None = field(default=None, metadata=bounds(0.0))
    norm_eps: float = field(default=1e-5, metadata=bounds(0.0))
    rope_base: float = field(default=10000.0, metadata=bounds(1.0))
    num_classes: int = field(default=1000, metadata=bounds(1))
    init_std: float = field(default=0.02, metadata=bounds(0.0))
    # What 2D RoPE does to the class token: "identity" leaves it unrotated; "zero" zeroes its query
    # and key, as LlamaGen's table (zero rows for the class token) does: the released LlamaGen and
    # VFMTok GPTs were trained that way (vfmtok.released_weights imports them with "zero").
    cls_rope: Literal["identity", "zero"] = "identity"

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:
        """LlamaGen/Llama rounding: 2/3 of 4*dim, optional multiplier, up to ``multiple_of``."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return -(-hidden // self.multiple_of) * self.multiple_of

    def validate(self) -> None:
        if self.dim % self.n_head:
            raise ConfigError("n_head", self.n_head, f"must divide dim {self.dim}")
        if (self.dim // self.n_head) % 4:
            raise ConfigError("dim", self.dim, f"head dim {self.head_dim} must be a multiple of 4 (2D RoPE)")
        if self.n_head % self.kv_heads:
            raise ConfigError("n_kv_head", self.n_kv_head, f"must divide n_head {self.n_head}")
        if math.isqrt(self.n_tokens) ** 2 != self.n_tokens:
            raise ConfigError("n_tokens", self.n_tokens, "must be a perfect square (2D RoPE grid)")


# LlamaGen's sizes (counts for vocab 16384, 256 tokens, 1000 classes).
GPT_SIZES = register_sizes(GPTConfig, {
    "GPT-Tiny": dict(n_layer=4, n_head=4, dim=128, multiple_of=64),  # 0.85M + embeddings (CPU)
    "GPT-Small": dict(n_layer=6, n_head=8, dim=256, multiple_of=64),  # 4.8M + embeddings
    "GPT-B": dict(n_layer=12, n_head=12, dim=768),  # 111M
    "GPT-L": dict(n_layer=24, n_head=16, dim=1024),  # 343M
    "GPT-XL": dict(n_layer=36, n_head=20, dim=1280),  # 775M
    "GPT-XXL": dict(n_layer=48, n_head=24, dim=1536),  # 1.4B
    "GPT-2B": dict(n_layer=48, n_head=32, dim=1920),  # 2.2B (VFMTok's GPT_2B: 32 heads of 60)
    "GPT-3B": dict(n_layer=24, n_head=32, dim=3200),  # 3.1B
})


# ----------------------------------------------------------------------------- RAR


@dataclass(kw_only=True)
class RARConfig:
    """Architecture of the RAR generator (randomized autoregressive, Yu et al. 2024, arXiv
    2411.00776; public code bytedance/1d-tokenizer ``modeling/rar.py``). Defaults: RAR-B on 256
    tokens of a 1024-code tokenizer (MaskGIT-VQ), the setting of RAR's published sizes; RAR's
    dropouts (0.1 on attention probabilities, blocks' outputs and labels; none on tokens)."""

    family: ClassVar[str] = "rar"
    class_dropout: float = field(default=0.1, metadata=bounds(0.0, 1.0))  # labels -> the null class
    token_dropout: float = field(default=0.0, metadata=bounds(0.0, 1.0))
    resid_dropout: float = field(default=0.1, metadata=bounds(0.0, 1.0))  # attention + MLP out
    attn_dropout: float = field(default=0.1, metadata=bounds(0.0, 1.0))  # attention probabilities
    vocab_size: int = field(default=1024, metadata=bounds(2))
    n_tokens: int = field(default=256, metadata=bounds(1))
    dim: int = field(default=768, metadata=bounds(8))
    n_layer: int = field(default=24, metadata=bounds(1))
    n_head: int = field(default=16, metadata=bounds(1))
    mlp_dim: int = field(default=3072, metadata=bounds(1))  # GELU MLP hidden width
    norm_eps: float = field(default=1e-6, metadata=bounds(0.0))
    num_classes: int = field(default=1000, metadata=bounds(1))
    init_std: float = field(default=0.02, metadata=bounds(0.0))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    def validate(self) -> None:
        if self.dim % self.n_head:
            raise ConfigError("n_head", self.n_head, f"must divide dim {self.dim}")


# RAR's sizes (its README and paper; counts for 1024 codes, 256 tokens, 1000 classes; 16 heads each).
RAR_SIZES = register_sizes(RARConfig, {
    # CPU runs: sized to GPT-Tiny's parameter count (within 2% at 1024 codes x 16 tokens), for
    # the equal-budget RAR vs raster-GPT comparison; adaLN costs 6 dim^2 per block, so 3 blocks.
    "RAR-Tiny": dict(n_layer=3, n_head=4, dim=128, mlp_dim=384),
    "RAR-B": dict(n_layer=24, n_head=16, dim=768, mlp_dim=3072),  # 261M
    "RAR-L": dict(n_layer=24, n_head=16, dim=1024, mlp_dim=4096),  # 461M
    "RAR-XL": dict(n_layer=32, n_head=16, dim=1280, mlp_dim=5120),  # 955M
    "RAR-XXL": dict(n_layer=40, n_head=16, dim=1408, mlp_dim=6144),  # 1.5B (1499M)
})
