"""ADM-format reference batches: what every published ImageNet gFID is scored against.

The evaluator of Dhariwal & Nichol (2021, openai/guided-diffusion ``evaluations/``) reads an
``.npz`` holding ``arr_0``: uint8 (N, H, W, 3) reference images, and/or the precomputed pool3
statistics of the TF Inception graph, ``mu`` (2048,) and ``sigma`` (2048, 2048)
(``VIRTUAL_imagenet256_labeled.npz`` has both, at 256 px; its spatial ``mu_s``/``sigma_s`` for sFID
are read but not used: see ``pipeline/stages/evaluate.py``). This module owns that format's
reader and writer; ``evaluate.reference_npz`` points at such a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import FormatError
from pipeline.formats import npz

FEATURE_DIM = 2048


@dataclass
class ReferenceBatch:
    path: Path
    images: np.ndarray | None  # (N, H, W, 3) uint8
    mu: np.ndarray | None  # (2048,)
    sigma: np.ndarray | None  # (2048, 2048)


def read(path: str | Path) -> ReferenceBatch:
    """The batch at ``path``, its arrays checked (one error line naming the file and the array)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: reference batch not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("arr_0", "mu", "sigma") if k in npz.files}
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: not an .npz reference batch ({e})") from None
    images, mu, sigma = arrays.get("arr_0"), arrays.get("mu"), arrays.get("sigma")
    if images is not None and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3):
        raise FormatError(f"{path}: arr_0 must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if (mu is None) != (sigma is None):
        raise FormatError(f"{path}: has {'mu' if sigma is None else 'sigma'} without the other")
    if mu is not None and (mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM, FEATURE_DIM)):
        raise FormatError(f"{path}: mu {mu.shape} / sigma {sigma.shape} are not 2048-d pool3 statistics")
    if images is None and mu is None:
        raise FormatError(f"{path}: holds neither arr_0 nor mu/sigma")
    return ReferenceBatch(path, images, None if mu is None else mu.astype(np.float64),
                          None if sigma is None else sigma.astype(np.float64))


def write(path: str | Path, images: np.ndarray | None = None, mu: np.ndarray | None = None,
          sigma: np.ndarray | None = None) -> None:
    """An ADM-format batch (e.g. of your own val images, to score against the same set elsewhere)."""
    arrays = {k: v for k, v in (("arr_0", images), ("mu", mu), ("sigma", sigma)) if v is not None}
    npz.write(path, arrays)
