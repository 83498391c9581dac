"""Builders that several test files share: tiny configs, in-memory images, token files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.formats.tokens import TokenFile, TokenWriter
from vfmtok.config import TokenizerConfig

# The demo size: 64 px, EfficientNet-Lite0 levels (40, 8x8), (112, 4x4), (320, 2x2); 4x4 tokens.
DEMO_TOKENIZER = dict(
    image_size=64, n_tokens=16, dim=128, enc_layers=2, dec_layers=2, n_heads=4, n_points=4,
    enc_ffn_dim=256, dec_ffn_dim=344, codebook_size=1024, codebook_dim=8, pixel_grid=8, n_registers=4,
    conv_ch=16, conv_mult=[1, 1, 2, 4], conv_res_blocks=1, vqgan_ch=16, vqgan_mult=[1, 1, 2, 2, 4],
)  # fmt: skip
# A seconds-fast tokenizer at 32 px (2x2 tokens), for training-loop tests.
TINY_TOKENIZER = dict(
    image_size=32, n_tokens=4, dim=16, enc_layers=1, dec_layers=1, n_heads=2, n_points=2,
    enc_ffn_dim=32, dec_ffn_dim=32, codebook_size=32, codebook_dim=4, pixel_grid=4, n_registers=1,
    conv_ch=8, conv_mult=[1, 1, 2, 2], conv_res_blocks=1,
)  # fmt: skip


def demo_tokenizer_config(kind: str = "vfmtok", **overrides) -> TokenizerConfig:
    return TokenizerConfig(kind=kind, **{**DEMO_TOKENIZER, **overrides})


def tiny_tokenizer_config(kind: str = "vfmtok", **overrides) -> TokenizerConfig:
    return TokenizerConfig(kind=kind, **{**TINY_TOKENIZER, **overrides})


def smooth_images(n: int, seed: int = 0, size: int = 64, cells: int = 4) -> torch.Tensor:
    """Deterministic low-frequency images in [-1, 1], (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, cells, cells, generator=g) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def smooth_uint8(n: int, size: int, seed: int = 0) -> np.ndarray:
    """The same kind of images as uint8 (n, size, size, 3)."""
    x = smooth_images(n, seed, size)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class CachedImages:
    """An in-memory TrainData: random images and their cached backbone levels."""

    def __init__(self, backbone, n: int = 12, size: int = 32, seed: int = 0):
        self.x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        self.levels = backbone(self.x).levels

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, idx, generator):
        return self.x[idx], [lv[idx] for lv in self.levels]


def random_tokens(n: int, codebook: int, n_tokens: int, classes: int = 4,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n, n_tokens), labels (n,)) drawn uniformly, reproducibly."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, codebook, (n, n_tokens)), rng.integers(0, classes, n)


def write_token_file(path: Path, n: int = 40, codebook: int = 64, n_tokens: int = 16, row_group: int = 8,
                     classes: int = 4, seed: int = 0, split: str = "train", meta: dict | None = None,
                     chunk: int = 0) -> TokenFile:
    """``n`` rows of :func:`random_tokens` in row groups of ``row_group``, written ``chunk`` rows a
    call (0: all at once, so the writer's own batching is exercised when it is not)."""
    tokens, labels = random_tokens(n, codebook, n_tokens, classes, seed)
    w = TokenWriter(path, codebook, {"n_tokens": n_tokens, **(meta or {})}, row_group)
    step = chunk or n
    for i in range(0, n, step):
        w.write([f"{split}/{j}" for j in range(i, min(i + step, n))], split, labels[i : i + step],
                tokens[i : i + step], False)
    w.close()
    return TokenFile(path)


def assert_equal_to_fp32_rounding(got: torch.Tensor, want: torch.Tensor, exact: torch.Tensor,
                                  factor: float = 8.0) -> None:
    """``got`` and ``want`` are two float32 evaluations of one function (a cached and a full
    forward, say) whose float64 value is ``exact``. Their kernels sum in different orders, and by
    how much that moves a result depends on the CPU (its vector width, its BLAS); ``want``'s own
    distance from ``exact`` measures it here, in this run. ``got`` may stray from ``exact`` by
    ``factor`` times that (the largest error over many elements differs between two such
    evaluations by a small factor), plus 16 ulps of the largest value, should ``want`` happen to
    round exactly."""
    exact = exact.double()
    rounding = float((want.double() - exact).abs().max())
    tol = factor * rounding + 16 * 2.0**-23 * float(exact.abs().max())
    err = float((got.double() - exact).abs().max())
    assert err <= tol, f"{err:.3g} off the float64 value; fp32 rounding {rounding:.3g}, allowed {tol:.3g}"
