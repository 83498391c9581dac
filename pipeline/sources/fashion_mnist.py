"""Fashion-MNIST as the four standard idx files (gzipped or not): the demo's source."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from pipeline.errors import SourceError
from pipeline.sources.items import SourceFile, SourceIndex, SourceItem

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (optionally gzipped): 0, 0, dtype code, ndim, big-endian dims, data."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise SourceError(f"{path}: not an idx file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise SourceError(f"{path}: unknown idx data type code 0x{raw[2]:02x}")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).astype(int)
    dtype = np.dtype(dtypes[raw[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise SourceError(f"{path}: idx file has {len(raw)} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    raise SourceError(f"{folder}: missing Fashion-MNIST file {stem}[.gz]")


def scan_fashion_mnist(folder: Path) -> SourceIndex:
    items, files = [], []
    for split, (img_stem, lbl_stem) in FASHION_MNIST_FILES.items():
        img_path, lbl_path = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
        files += [SourceFile.stat(img_path), SourceFile.stat(lbl_path)]
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise SourceError(f"{img_path}: shape {images.shape} does not match labels {labels.shape}")
        for i, (img, lbl) in enumerate(zip(images, labels, strict=True)):
            items.append(SourceItem(f"{split}/{i:05d}", split, int(lbl), f"{img_path}#{i}", img))
    classes = [(name, name) for name in FASHION_MNIST_CLASSES]
    return SourceIndex(classes, items, "fashion_mnist/idx", sorted(files, key=lambda f: f.path))
