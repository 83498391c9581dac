"""Offline Inception: conversion fidelity, cache behaviour, FID/KID/PR/IS maths."""

import os
import shutil

import numpy as np
import pytest
import scipy.linalg
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch_fidelity.feature_extractor_inceptionv3 as tf_inception  # noqa: E402

from vfmtok import fid as fd  # noqa: E402
from vfmtok import inception as inc  # noqa: E402


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("inception-cache")


@pytest.fixture(scope="module")
def extractor(cache_dir):
    return inc.InceptionFeatures(cache_dir)


def _smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """(N, size, size, 3) uint8: blocky colour fields plus a gradient, upsampled by the network."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 4, 4, 3))
    rep = -(-size // 4)
    img = coarse.repeat(rep, axis=1).repeat(rep, axis=2)[:, :size, :size]
    ramp = np.linspace(0, 0.3, size)[None, :, None, None]
    return ((img * 0.7 + ramp) * 255).clip(0, 255).astype(np.uint8)


def test_converted_matches_torchscript(extractor):
    imgs = _smooth_images(2, 299, seed=0)  # already 299: both nets see identical pixels
    ts = torch.jit.load(str(inc.fid_helper_torchscript_path()), map_location="cpu").eval()
    ref = inc.torchscript_features(ts, torch.from_numpy(imgs).permute(0, 3, 1, 2)).double()
    ours = extractor.features(imgs)
    assert ours.shape == (2, 2048) and ours.dtype == np.float64
    assert np.abs(ours - ref.numpy()).max() < 1e-4
    assert ours.std() > 0.01  # real features, not a constant
    fc = extractor.net.fc.weight
    assert torch.isnan(fc).all()  # no logits layer in the source: poisoned on purpose


def test_fid_zero_on_self_and_monotone_in_shift(extractor):
    base = _smooth_images(8, 64, seed=1)  # low-res input, upsampled to 299 inside
    f0 = extractor.features(base, batch_size=8)
    assert f0.shape == (8, 2048)
    assert abs(fd.fid_from_features(f0, f0)) < 1e-6
    fids = []
    for shift in (10, 30, 60):  # brightness shift in grey levels (measured: ~0.25, ~2.3, ~10)
        brighter = (base.astype(np.int16) + shift).clip(0, 255).astype(np.uint8)
        f_shift = extractor.features(brighter, batch_size=8)
        fids.append(fd.fid_from_features(f0, f_shift))
    assert 0.01 < fids[0] < fids[1] < fids[2], fids
    kid_near, _ = fd.kid_from_features(f0, f0 + 1e-3, subsets=3)
    kid_far, _ = fd.kid_from_features(f0, f_shift, subsets=3)  # shift 60
    assert kid_near < 0.1 * kid_far and kid_far > 0


def test_second_load_reuses_cache_and_never_downloads(cache_dir, extractor, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("must not be called")

    monkeypatch.setattr(inc, "convert_fid_helper_inception", boom)
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", boom)
    net = inc.load_inception(cache_dir)
    assert isinstance(net, tf_inception.FeatureExtractorInceptionV3) and not net.training
    weights = cache_dir / inc.CONVERTED_FILE
    assert inc.checksum_path(weights).read_text().split()[1] == weights.name
    with pytest.raises(ValueError, match="full_weights_path"):
        inc.load_inception(cache_dir, features_list=("2048", "logits_unbiased"))


def test_corrupted_cache_is_rebuilt(cache_dir, extractor, tmp_path, monkeypatch):
    for name in (inc.CONVERTED_FILE, inc.CONVERTED_FILE + ".sha256"):
        shutil.copy(cache_dir / name, tmp_path / name)
    weights = tmp_path / inc.CONVERTED_FILE
    good = weights.read_bytes()
    with open(weights, "r+b") as f:  # flip bytes in the middle of the tensor data
        f.seek(len(good) // 2)
        f.write(b"\x00" * 64)
    calls = []
    real = inc.convert_fid_helper_inception
    monkeypatch.setattr(inc, "convert_fid_helper_inception",
                        lambda path, **kw: calls.append(path) or real(path, verify=False))
    inc.load_inception(tmp_path)
    assert calls == [weights]
    assert weights.read_bytes() == good  # deterministic conversion restores the same file
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    inc.load_inception(tmp_path)
    assert len(calls) == 1  # now valid again: reused


def test_full_weights_give_logits_and_inception_score(cache_dir, extractor, tmp_path):
    state = torch.load(cache_dir / inc.CONVERTED_FILE)
    gen = torch.Generator().manual_seed(0)
    state["fc.weight"] = torch.randn(state["fc.weight"].shape, generator=gen) * 0.05
    state["fc.bias"] = torch.zeros_like(state["fc.bias"])
    torch.save(state, tmp_path / "full.pth")
    full = inc.InceptionFeatures(tmp_path, full_weights_path=tmp_path / "full.pth")
    feats, logits = full.features_and_logits(_smooth_images(2, 32, seed=3))
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    assert np.isfinite(logits).all()
    mean, _ = fd.inception_score(logits, splits=1)
    assert 1.0 <= mean < 1008
    assert extractor.features_and_logits(np.zeros((0, 32, 32, 3), np.uint8))[1] is None
    assert fd.inception_score(None) is None


def test_inception_score_known_values():
    assert fd.inception_score(np.zeros((20, 10)), splits=2)[0] == pytest.approx(1.0)
    confident = np.eye(10)[np.arange(20) % 10] * 50.0  # sharp and uniformly spread over 10 classes
    assert fd.inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)


def test_frechet_routes_agree_with_sqrtm():
    rng = np.random.default_rng(0)
    f1 = rng.normal(0, 1, (60, 8)) @ rng.normal(0, 1, (8, 8))
    f2 = rng.normal(0.5, 1.3, (50, 8))
    mu1, s1 = fd.feature_stats(f1)
    mu2, s2 = fd.feature_stats(f2)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert fd.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    assert fd.fid_from_features(f1, f2) == pytest.approx(ref, rel=1e-8)  # N > D: eigh route
    small1, small2 = f1[:6], f2[:5]  # N <= D: low-rank Gram route vs the generic one
    generic = fd.frechet_distance(*fd.feature_stats(small1), *fd.feature_stats(small2))
    assert fd.fid_from_features(small1, small2) == pytest.approx(generic, rel=1e-6)
    assert abs(fd.frechet_distance(mu1, s1, mu1, s1)) < 1e-9


def test_precision_recall_and_labelled_metrics():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (40, 5))
    assert fd.precision_recall(real, real) == (1.0, 1.0)
    assert fd.precision_recall(real, real + 100.0) == (0.0, 0.0)
    # fakes shrunk into the dense centre of the real manifold: precise, poor recall
    p, r = fd.precision_recall(real, real * 0.2)
    assert p == 1.0 and r < 0.2
    out = fd.distribution_metrics(real, real + 0.1, "dinov2", kid_subsets=3)
    assert set(out) == {f"{m}/dinov2" for m in ("fd", "kid", "kid_std", "precision", "recall")}
    assert out["fd/dinov2"] == pytest.approx(0.05, rel=1e-6)  # pure mean shift: |0.1 * 1|^2 * 5


def test_agrees_with_torch_fidelity_on_features():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    rng = np.random.default_rng(1)
    real, fake = rng.normal(0, 1, (30, 12)), rng.normal(0.3, 1.2, (30, 12))
    t_real, t_fake = torch.from_numpy(real), torch.from_numpy(fake)
    ref_fid = fid_statistics_to_metric(fid_features_to_statistics(t_real),
                                       fid_features_to_statistics(t_fake), verbose=False)
    assert fd.fid_from_features(real, fake) == pytest.approx(
        ref_fid["frechet_inception_distance"], rel=1e-6)
    # subset_size == N: each subset is a permutation of the whole set, so the RNGs do not matter
    ref_kid = kid_features_to_metric(t_real, t_fake, kid_subsets=2, kid_subset_size=30,
                                     verbose=False)
    assert fd.kid_from_features(real, fake, subsets=2)[0] == pytest.approx(
        ref_kid["kernel_inception_distance_mean"], rel=1e-6)
    ref_prc = prc_features_to_metric(t_fake, t_real, verbose=False)  # (generated, real)
    assert fd.precision_recall(real, fake) == pytest.approx(
        (ref_prc["precision"], ref_prc["recall"]))
