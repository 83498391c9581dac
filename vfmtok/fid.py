"""Distances between feature distributions: FID, KID, improved precision/recall, Inception Score.

They take feature matrices, so they work in any feature space (the Inception pool3 features of
``vfmtok.inception``, a frozen backbone's pooled features, ...); :func:`distribution_metrics`
labels its results with the extractor's name, as torch-fidelity does.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch


def feature_stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> mean (D,) and unbiased covariance (D, D), in float64."""
    f = np.asarray(f, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    vals, vecs = scipy.linalg.eigh(s)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), any feature space.

    tr((S1 S2)^1/2) is computed as tr((R S2 R)^1/2) with R = S1^1/2: both matrices are symmetric
    PSD, so `eigh` applies and no complex parts or `sqrtm` convergence issues arise (S1 S2 itself is
    not symmetric and is singular whenever N <= D). Mathematically equal to the sqrtm formula.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: {mu1.shape} {s1.shape} vs {mu2.shape} {s2.shape}")
    root = _psd_sqrt(s1)
    m = root @ s2 @ root
    tr_covmean = np.sqrt(np.clip(scipy.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between two (N, D) feature sets (FID when they are Inception pool3).

    When both N <= D the covariances are low rank and tr((S1 S2)^1/2) equals the nuclear norm of
    A1 A2^T with A = centred features / sqrt(N - 1) (the nonzero eigenvalues of S1 S2 are the
    squared singular values of A1 A2^T): exact and far cheaper than a D x D eigendecomposition.
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"need two (N>=2, D) feature sets, got {f1.shape} and {f2.shape}")
    if max(len(f1), len(f2)) > f1.shape[1]:
        return frechet_distance(*feature_stats(f1), *feature_stats(f2))
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a1 = (f1 - mu1) / np.sqrt(len(f1) - 1)
    a2 = (f2 - mu2) / np.sqrt(len(f2) - 1)
    tr_covmean = scipy.linalg.svdvals(a1 @ a2.T).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (a1 * a1).sum() + (a2 * a2).sum() - 2.0 * tr_covmean)


def _mmd2_unbiased_poly(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m = len(x)
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2.0 * kxy.mean())


def kid_from_features(f1: np.ndarray, f2: np.ndarray, subsets: int = 100,
                      subset_size: int | None = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): mean and std over random subsets.

    Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, as in the paper and
    torch-fidelity. `subset_size` is capped at the smaller set (the estimator stays unbiased; only
    its variance grows), where torch-fidelity would refuse.
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    m = min(len(f1), len(f2), subset_size or len(f1))
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    rng = np.random.default_rng(seed)
    mmds = [_mmd2_unbiased_poly(f1[rng.choice(len(f1), m, replace=False)],
                                f2[rng.choice(len(f2), m, replace=False)]) for _ in range(subsets)]
    return float(np.mean(mmds)), float(np.std(mmds))


def _kth_nn_radius(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    # (N,) distance to the k-th nearest other sample; the sample itself is the 1st (distance 0).
    return torch.cat([torch.cdist(xb, x).kthvalue(k + 1, dim=1).values for xb in x.split(chunk)])


def _covered(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    # Fraction of queries inside at least one reference k-NN ball.
    hits = [(torch.cdist(qb, ref) <= radii[None]).any(dim=1) for qb in query.split(chunk)]
    return torch.cat(hits).double().mean().item()


def precision_recall(f_real: np.ndarray, f_fake: np.ndarray, k: int = 3, chunk: int = 1024,
                     device: str | torch.device = "cpu") -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019), k-NN manifold estimate.

    precision: fraction of fake samples inside the real manifold (union of balls reaching each real
    sample's k-th nearest real neighbour); recall: the same with the roles swapped.
    """
    real = torch.as_tensor(np.asarray(f_real, np.float64), device=device)
    fake = torch.as_tensor(np.asarray(f_fake, np.float64), device=device)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"need more than k={k} samples per set")
    precision = _covered(fake, real, _kth_nn_radius(real, k, chunk), chunk)
    recall = _covered(real, fake, _kth_nn_radius(fake, k, chunk), chunk)
    return precision, recall


def inception_score(logits: np.ndarray | None, splits: int = 10) -> tuple[float, float] | None:
    """Inception Score (Salimans et al. 2016) from (N, C) logits.

    Mean and std of exp(E_x KL(p(y|x) || p(y))) over `splits` consecutive chunks (no shuffling).
    None in, None out: without a logits layer IS is absent, never 0.
    """
    if logits is None:
        return None
    x = torch.as_tensor(np.asarray(logits, np.float64))
    log_p = x.log_softmax(dim=1)  # (N, C)
    scores = []
    for chunk in log_p.tensor_split(splits):
        log_q = chunk.exp().mean(0, keepdim=True).log()  # (1, C) marginal over the chunk
        kl = (chunk.exp() * (chunk - log_q)).sum(1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def distribution_metrics(f_real: np.ndarray, f_fake: np.ndarray, extractor: str, *,
                         kid_subsets: int = 100, kid_subset_size: int | None = 1000,
                         k: int = 3) -> dict[str, float]:
    """FD, KID and precision/recall keyed `<metric>/<extractor>` (FD/inception-v3-compat is FID)."""
    kid, kid_std = kid_from_features(f_real, f_fake, kid_subsets, kid_subset_size)
    precision, recall = precision_recall(f_real, f_fake, k=k)
    return {f"fd/{extractor}": fid_from_features(f_real, f_fake), f"kid/{extractor}": kid,
            f"kid_std/{extractor}": kid_std, f"precision/{extractor}": precision,
            f"recall/{extractor}": recall}
