"""Image sources for ``prepare``: Fashion-MNIST idx files, an ILSVRC-2012 tree (class folders,
devkit or Kaggle layout), any ImageFolder tree.

A source is scanned into a flat, sorted list of :class:`SourceItem` (so the same folder always gives
the same order and the same shards), a class index, every file the scan read (their sizes and
mtimes make the listing DVC tracks instead of the tree) and every entry it passed over and why.
Decoding happens later, per shard, in :func:`load_rgb`, which turns every way an image can be
broken into one :class:`BadImage`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import SourceError
from pipeline.sources.decode import load_rgb, resize_center_crop
from pipeline.sources.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    read_idx,
    scan_fashion_mnist,
)
from pipeline.sources.imagefolder import scan_imagefolder
from pipeline.sources.imagenet import scan_imagenet
from pipeline.sources.items import BadImage, Skipped, SourceFile, SourceIndex, SourceItem
from pipeline.sources.walk import IMAGE_EXTENSIONS

__all__ = [
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES", "IMAGE_EXTENSIONS", "BadImage", "Skipped",
    "SourceError", "SourceFile", "SourceIndex", "SourceItem", "limit_per_class", "load_rgb",
    "read_idx", "resize_center_crop", "scan",
]  # fmt: skip


def scan(source: str, path: str | Path, devkit: str = "", val_fraction: float = 0.1) -> SourceIndex:
    """Index a source; a missing or empty source is a :class:`SourceError` naming the folder."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: source folder does not exist")
    if source == "fashion_mnist":
        index = scan_fashion_mnist(path)
    elif source == "imagenet":
        index = scan_imagenet(path, Path(devkit) if devkit else None)
    elif source == "imagefolder":
        index = scan_imagefolder(path, val_fraction)
    else:
        raise SourceError(f"unknown source kind {source!r}")
    if not index.items:
        raise SourceError(f"{path}: no images found")
    return index


def limit_per_class(items: Iterable[SourceItem], split: str, limit: int) -> list[SourceItem]:
    """The first ``limit`` items of each class (in scan order) of one split; 0 keeps all."""
    seen: dict[int, int] = {}
    kept = []
    for it in items:
        if it.split != split:
            continue
        if limit and seen.get(it.label, 0) >= limit:
            continue
        seen[it.label] = seen.get(it.label, 0) + 1
        kept.append(it)
    return kept
