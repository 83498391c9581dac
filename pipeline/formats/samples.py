"""Generated samples: what ``sample`` writes and ``evaluate`` scores.

``data/samples/samples.npz`` holds ``arr_0``: uint8 (N, H, W, 3), the layout the ADM evaluator and
torch-fidelity read, and ``labels``: int64 (N,), the class each sample was conditioned on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import FormatError
from pipeline.formats import npz

FILE = "samples.npz"


def write(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
        raise ValueError(f"samples must be (N, H, W, 3) uint8 with N labels, got {images.shape} "
                         f"{images.dtype} and {len(labels)} labels")
    npz.write(folder / FILE, {"arr_0": images, "labels": np.asarray(labels, dtype=np.int64)})


def read(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W, 3) uint8, labels (N,) int64), checked."""
    path = folder / FILE
    if not path.is_file():
        raise FormatError(f"{path}: not found; run the sample stage first")
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz["arr_0"], npz["labels"]
    except (OSError, ValueError, KeyError) as e:
        raise FormatError(f"{path}: not a samples file ({e})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise FormatError(f"{path}: arr_0 must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if labels.shape != (len(images),):
        raise FormatError(f"{path}: labels {labels.shape} do not match {len(images)} images")
    return images, labels.astype(np.int64)
