"""What a scan of a source yields: the images to prepare, every file it read (for the listing
that DVC tracks instead of the tree), and every entry it had to pass over, with the reason."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class BadImage(Exception):
    """One input that cannot be decoded; ``prepare`` skips, counts and lists it."""


@dataclass(frozen=True)
class SourceItem:
    image_id: str
    split: str
    label: int
    source_path: str
    pixels: np.ndarray | None = None  # in-memory images (idx files); None: decode source_path


@dataclass(frozen=True)
class SourceFile:
    """A file the scan read or will read: its absolute path, size and modification time."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def stat(cls, path: Path, st: os.stat_result | None = None) -> SourceFile:
        st = st or path.stat()
        return cls(str(path), int(st.st_size), int(st.st_mtime_ns))


@dataclass(frozen=True)
class Skipped:
    """An entry passed over: a symlink loop, a broken link, an unreadable folder, an unlabelled
    val image, or (found later, by ``prepare``) an image that does not decode."""

    source_path: str
    reason: str

    def as_dict(self) -> dict:
        return {"source_path": self.source_path, "reason": self.reason}


@dataclass
class SourceIndex:
    classes: list[tuple[str, str]]  # per label: (key, human-readable name), e.g. (wnid, "tench")
    items: list[SourceItem]
    layout: str = ""  # which layout was read, e.g. "imagenet/kaggle" (reported by prepare)
    files: list[SourceFile] = field(default_factory=list)  # images and label files, for the listing
    skipped: list[Skipped] = field(default_factory=list)
