"""Reconstruction, codebook and representation metrics: PSNR, SSIM, codebook usage, linear probe.

Why the care with `data_range`: scikit-image guesses the range of float images as [-1, 1]
(data_range=2), which inflates SSIM for [0, 1] images; the public VFMTok evaluation fell into this.
Here the range follows the dtype (uint8 -> 255, float -> 1 with values checked to lie in [0, 1])
unless given explicitly.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vfmtok.quantizer import code_histogram_stats

ArrayLike = np.ndarray | torch.Tensor


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _pair(
    a: ArrayLike, b: ArrayLike, data_range: float | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Validate an image pair and settle its data range (see the module docstring)."""
    a, b = _numpy(a), _numpy(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"image mismatch: {a.shape} {a.dtype} vs {b.shape} {b.dtype}")
    if data_range is not None:
        return a, b, float(data_range)
    if a.dtype == np.uint8:
        return a, b, 255.0
    if np.issubdtype(a.dtype, np.floating):
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"float images outside [0, 1] ({lo:.3g}..{hi:.3g}): pass data_range")
        return a, b, 1.0
    raise ValueError(f"cannot infer data_range for dtype {a.dtype}: pass it explicitly")


def psnr(a: ArrayLike, b: ArrayLike, data_range: float | None = None) -> float:
    """PSNR in dB of one image pair, 10 log10(range^2 / MSE); inf for identical images."""
    a, b, dr = _pair(a, b, data_range)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(dr * dr / mse))


def ssim(a: ArrayLike, b: ArrayLike, data_range: float | None = None) -> float:
    """SSIM of one (H, W, C) or (H, W) pair with scikit-image's defaults (7x7 uniform window).

    Channels are averaged (`channel_axis=-1`), as LlamaGen/VFMTok evaluations do, but with the
    correct data_range.
    """
    a, b, dr = _pair(a, b, data_range)
    channel_axis = -1 if a.ndim == 3 else None
    return float(structural_similarity(a, b, data_range=dr, channel_axis=channel_axis))


def batch_psnr(a: ArrayLike, b: ArrayLike, data_range: float | None = None) -> float:
    """Mean over N of per-image PSNR for (N, H, W, C) batches (not PSNR of the pooled MSE)."""
    a, b, dr = _pair(a, b, data_range)
    return float(np.mean([psnr(x, y, dr) for x, y in zip(a, b, strict=True)]))


def batch_ssim(a: ArrayLike, b: ArrayLike, data_range: float | None = None) -> float:
    """Mean over N of per-image SSIM for (N, H, W, C) batches."""
    a, b, dr = _pair(a, b, data_range)
    return float(np.mean([ssim(x, y, dr) for x, y in zip(a, b, strict=True)]))


def codebook_usage(indices: ArrayLike, codebook_size: int) -> tuple[float, float]:
    """(fraction of codes used at least once, perplexity exp(H(p)) of the code histogram).

    Perplexity reads as "effective number of codes": K for a uniform histogram, 1 for a collapse.
    """
    idx = torch.as_tensor(_numpy(indices).reshape(-1).astype(np.int64))
    if idx.numel() == 0:
        raise ValueError("no indices")
    if idx.min() < 0 or idx.max() >= codebook_size:
        raise ValueError(f"indices outside [0, {codebook_size})")
    usage, perplexity = code_histogram_stats(idx, codebook_size)
    return float(usage), float(perplexity)


def fit_probe(x: ArrayLike, y: ArrayLike, *, C: float = 1.0, max_iter: int = 1000,  # noqa: N803
              seed: int = 0):
    """The fitted classifier of the probe protocol (see :func:`linear_probe`): StandardScaler +
    multinomial L2 logistic regression (lbfgs); ``.predict`` / ``.score`` on new features."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    clf.fit(_numpy(x).reshape(len(x), -1), _numpy(y))
    return clf


def linear_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    val_x: ArrayLike,
    val_y: ArrayLike,
    *,
    C: float = 1.0,  # noqa: N803 (scikit-learn's name)
    max_iter: int = 1000,
    seed: int = 0,
) -> float:
    """Top-1 validation accuracy of a linear classifier on frozen features.

    Fixed protocol (the paper does not state its own): features as given, e.g. mean-pooled tokens,
    (N, D); standardised with training-set statistics; multinomial logistic regression, L2 penalty
    with inverse strength C, lbfgs solver, at most `max_iter` iterations, seeded; no augmentation,
    no hyper-parameter search.
    """
    clf = fit_probe(train_x, train_y, C=C, max_iter=max_iter, seed=seed)
    return float(clf.score(_numpy(val_x).reshape(len(val_x), -1), _numpy(val_y)))



# ----------------------------------------------------------------------------- diagnostics


def error_bias(originals: np.ndarray, recons: np.ndarray,
               block: int = 8) -> tuple[np.ndarray, np.ndarray, float]:
    """Where reconstructions are wrong *in the same way for every image*.

    (N, H, W, C) uint8 pairs -> the mean signed error map (H, W), the mean absolute error map
    (H, W), both in grey levels (0-255, averaged over channels), and ``error_bias_max``: the largest
    |mean signed error| over ``block`` x ``block`` pixel blocks. Per-image errors of both signs
    average out; a fixed-position artifact (a blob stamped on every image) does not, so this
    number is near 0 for a sound decoder and large for one with a hotspot.
    """
    if originals.shape != recons.shape or originals.ndim != 4:
        raise ValueError(f"expected two (N, H, W, C) batches, got {originals.shape} and {recons.shape}")
    diff = recons.astype(np.float64) - originals.astype(np.float64)  # (N, H, W, C)
    signed, absolute = diff.mean(axis=(0, 3)), np.abs(diff).mean(axis=(0, 3))  # (H, W) each
    hb, wb = signed.shape[0] // block, signed.shape[1] // block
    blocks = signed[: hb * block, : wb * block].reshape(hb, block, wb, block).mean(axis=(1, 3))
    return signed, absolute, float(np.abs(blocks).max())


def linear_readout_psnr(train_x: np.ndarray, train_images: np.ndarray, val_x: np.ndarray,
                        val_images: np.ndarray, alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0),
                        alpha_targets: int = 1024) -> tuple[float, float]:
    """How much of the pixels a *linear* map from features recovers: (val PSNR, chosen alpha).

    Features (N, D) are standardised with the train statistics; a ridge regression to the flattened
    pixels (N, H*W*C, in [0, 1]) is fit on train with alpha chosen by efficient leave-one-out
    (RidgeCV's GCV, one eigendecomposition for every alpha), then scored on val as the mean
    per-image PSNR of its clipped, rounded uint8 predictions. From the tokens it says whether the
    decoder uses what the tokens hold (a decoder should beat it); from the frozen backbone's levels
    it is the ceiling those features set for any tokenizer reading them linearly.

    The leave-one-out search costs a pass over every target per alpha (12,288 pixels at 64 px: a
    minute on 2 cores), so alpha is chosen on ``alpha_targets`` evenly spaced pixels and the final
    fit, one solve, uses all of them.
    """
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import RidgeCV

    scaler = StandardScaler().fit(train_x)
    x = scaler.transform(train_x)  # (N, D), zero-mean columns
    y = train_images.reshape(len(train_images), -1).astype(np.float32) / 255.0  # (N, H*W*C)
    cols = np.linspace(0, y.shape[1] - 1, min(alpha_targets, y.shape[1])).round().astype(int)
    alpha = float(RidgeCV(alphas=alphas).fit(x, y[:, cols]).alpha_)
    # The same ridge (intercept = the pixel means, x being centred) solved in its dual: with more
    # features than images (the backbone's levels: ~12k) that is a few times fewer FLOPs.
    mean = y.mean(axis=0)
    ridge = KernelRidge(alpha=alpha, kernel="linear").fit(x, y - mean)
    pred = (ridge.predict(scaler.transform(val_x)) + mean).reshape(val_images.shape)
    pred_u8 = np.clip(np.round(pred * 255.0), 0, 255).astype(np.uint8)
    return batch_psnr(val_images, pred_u8, data_range=255), alpha
