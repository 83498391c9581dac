"""PSNR/SSIM against scikit-image, codebook statistics, linear probe sanity."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vfmtok.metrics import (
    batch_psnr,
    batch_ssim,
    codebook_usage,
    error_bias,
    linear_probe,
    linear_readout_psnr,
    psnr,
    ssim,
)


def _image_pairs(dtype: str, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.random((n, 32, 40, 3))
    b = np.clip(a + rng.normal(0, 0.08, a.shape), 0, 1)
    if dtype == "uint8":
        return (a * 255).round().astype(np.uint8), (b * 255).round().astype(np.uint8)
    return a.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize(("dtype", "data_range"), [("float64", 1.0), ("float32", 1.0),
                                                   ("uint8", 255.0)])
def test_psnr_ssim_match_skimage(dtype, data_range):
    a, b = _image_pairs(dtype)
    for x, y in zip(a, b, strict=True):
        ref_p = peak_signal_noise_ratio(x, y, data_range=data_range)
        ref_s = structural_similarity(x, y, data_range=data_range, channel_axis=-1)
        assert psnr(x, y) == pytest.approx(ref_p, rel=1e-6)  # range inferred from dtype
        assert ssim(x, y) == pytest.approx(ref_s, rel=1e-6)
        assert psnr(x, y, data_range) == pytest.approx(ref_p, rel=1e-6)
    refs = [structural_similarity(x, y, data_range=data_range, channel_axis=-1)
            for x, y in zip(a, b, strict=True)]
    assert batch_ssim(a, b) == pytest.approx(np.mean(refs), rel=1e-6)
    assert batch_psnr(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(
        np.mean([peak_signal_noise_ratio(x, y, data_range=data_range)
                 for x, y in zip(a, b, strict=True)]), rel=1e-6)
    assert 0.0 < batch_ssim(a, b) < 1.0


def test_ssim_not_inflated_by_guessed_range():
    rng = np.random.default_rng(0)
    a = 0.5 + 0.05 * rng.random((32, 32, 3))  # low contrast: where the constants C1, C2 matter
    b = a + rng.normal(0, 0.02, a.shape)
    guessed = structural_similarity(a, b, data_range=2.0, channel_axis=-1)  # the public-code bug
    assert ssim(a, b) < guessed - 0.1
    assert ssim(a, a) == pytest.approx(1.0)
    assert psnr(a, a) == float("inf")


def test_range_and_shape_errors():
    a, b = _image_pairs("float64", n=1)
    with pytest.raises(ValueError, match="data_range"):
        ssim(a[0] * 2 - 1, b[0])  # [-1, 1] floats need an explicit range
    with pytest.raises(ValueError, match="mismatch"):
        psnr(a[0], b[0, :16])
    assert ssim(a[0] * 2 - 1, b[0] * 2 - 1, data_range=2.0) == pytest.approx(
        structural_similarity(a[0] * 2 - 1, b[0] * 2 - 1, data_range=2.0, channel_axis=-1))


def test_codebook_usage_known_sets():
    usage, ppl = codebook_usage(np.arange(8).repeat(5), 8)  # uniform over all codes
    assert usage == 1.0 and ppl == pytest.approx(8.0)
    usage, ppl = codebook_usage(torch.zeros(4, 16, dtype=torch.long), 10)  # collapse
    assert usage == pytest.approx(0.1) and ppl == pytest.approx(1.0)
    usage, ppl = codebook_usage(np.array([0, 0, 1, 1, 2, 2, 3, 3]), 16)  # 4 of 16, uniform
    assert usage == pytest.approx(0.25) and ppl == pytest.approx(4.0)
    _, ppl = codebook_usage(np.array([0, 0, 0, 1]), 4)  # p = (3/4, 1/4)
    assert ppl == pytest.approx(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))))
    with pytest.raises(ValueError):
        codebook_usage(np.array([0, 4]), 4)


def _blobs(n: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(0, 5, (classes, dim))
    y = rng.integers(0, classes, n)
    return centres[y] + rng.normal(0, 1, (n, dim)), y


def test_linear_probe_separable_and_shuffled():
    xtr, ytr = _blobs(400, 4, 16, seed=1)
    xva, yva = _blobs(400, 4, 16, seed=2)
    assert linear_probe(xtr, ytr, xva, yva) > 0.98
    shuffled = np.random.default_rng(3).permutation(ytr)  # labels carry no information now
    acc = linear_probe(xtr, shuffled, xva, yva)
    assert 0.1 < acc < 0.4  # chance is 0.25
    # deterministic for a fixed seed
    assert linear_probe(xtr, shuffled, xva, yva) == acc


def test_error_bias_sees_a_fixed_blob_not_per_image_noise():
    rng = np.random.default_rng(0)
    orig = rng.integers(40, 200, (50, 32, 32, 3)).astype(np.uint8)
    noise = rng.normal(0, 20, orig.shape)  # per image, zero mean: averages out
    noisy = np.clip(orig + noise, 0, 255).astype(np.uint8)
    signed, absolute, worst = error_bias(orig, noisy)
    assert worst < 2.0 and absolute.mean() > 10 and signed.shape == (32, 32)
    blob = noisy.copy()
    blob[:, 16:24, 0:8] = np.clip(blob[:, 16:24, 0:8].astype(int) + 30, 0, 255)  # same place, every image
    _, _, worst_blob = error_bias(orig, blob)
    assert 25 < worst_blob < 32  # the blob's 8x8 block: +30 grey levels (minus clipping)


def test_linear_readout_recovers_a_linear_image_model():
    rng = np.random.default_rng(1)
    basis = rng.uniform(0, 1, (6, 8 * 8 * 3))  # images are non-negative mixes of 6 patterns

    def data(n):
        w = rng.uniform(0, 1, (n, 6)) / 6
        imgs = np.clip(np.round(255 * (w @ basis)), 0, 255).astype(np.uint8).reshape(n, 8, 8, 3)
        return w, imgs

    tx, ti = data(300)
    vx, vi = data(100)
    exact, alpha = linear_readout_psnr(tx, ti, vx, vi)
    assert exact > 45 and alpha <= 1.0  # the features determine the pixels (up to rounding)
    useless, _ = linear_readout_psnr(rng.normal(size=(300, 6)), ti, rng.normal(size=(100, 6)), vi)
    assert useless < exact - 20  # random features only recover the mean image
