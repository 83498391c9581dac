"""Any ImageFolder tree: ``train/<class>/`` (+ ``val/<class>/``), or one ``<class>/`` tree split by
a stable hash of each file's id."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import SourceError
from pipeline.sources.items import Skipped, SourceFile, SourceIndex, SourceItem
from pipeline.sources.walk import image_files, relative, subdirs


def class_dirs(folder: Path, skipped: list[Skipped]) -> list[Path]:
    dirs = subdirs(folder, skipped)
    if not dirs:
        raise SourceError(f"{folder}: no class folders")
    return dirs


def image_id(root: Path, path: str) -> str:
    """``train/<class>/<stem>``: the path under the source root, without the extension."""
    rel = relative(path, root)
    if rel is None:
        raise ValueError(f"{path} is not under {root}")
    return os.path.splitext(rel)[0]


def items_from_class_dirs(root: Path, split: str, dirs: list[Path], labels: dict[str, int],
                          files: list[SourceFile], skipped: list[Skipped]) -> Iterator[SourceItem]:
    """The images under the class folders ``dirs`` (classes must be among ``labels``); their
    files are appended to ``files``."""
    for d in dirs:
        if d.name not in labels:
            raise SourceError(f"{d}: class folder {d.name!r} is not among the train classes")
        for f in image_files(d, skipped):
            files.append(f)
            yield SourceItem(image_id(root, f.path), split, labels[d.name], f.path)


def _holdout(image_id: str, fraction: float) -> bool:
    """A stable val split for trees without one: the same file always lands on the same side."""
    digest = hashlib.sha256(image_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def scan_imagefolder(root: Path, val_fraction: float) -> SourceIndex:
    files: list[SourceFile] = []
    skipped: list[Skipped] = []
    if (root / "train").is_dir():
        dirs = class_dirs(root / "train", skipped)
        names = [d.name for d in dirs]
        labels = {n: i for i, n in enumerate(names)}
        items = list(items_from_class_dirs(root, "train", dirs, labels, files, skipped))
        if (root / "val").is_dir():
            items += items_from_class_dirs(root, "val", class_dirs(root / "val", skipped), labels, files,
                                           skipped)
        layout = "imagefolder/train-val"
    else:
        dirs = class_dirs(root, skipped)
        names = [d.name for d in dirs]
        labels = {n: i for i, n in enumerate(names)}
        items = [
            SourceItem(it.image_id, "val" if _holdout(it.image_id, val_fraction) else "train",
                       it.label, it.source_path)
            for it in items_from_class_dirs(root, "train", dirs, labels, files, skipped)
        ]
        layout = "imagefolder/hash-split"
    return SourceIndex([(n, n) for n in names], items, layout, files, skipped)
