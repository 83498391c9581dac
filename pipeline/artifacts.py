"""Atomic artifact writes and the fixed layout of ``data/`` and ``reports/``.

Every artifact goes to a temporary file in the same folder and is renamed into place, so a killed
stage never leaves a half-written file that DVC or a later stage would take for a good one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(dst: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it replaces ``dst`` in one rename."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are shared like any other file
    try:
        yield Path(tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(dst: str | Path, data: bytes) -> None:
    with atomic_path(dst) as tmp:
        tmp.write_bytes(data)


def write_text(dst: str | Path, text: str) -> None:
    write_bytes(dst, text.encode())


def write_json(dst: str | Path, obj: Any) -> None:
    write_text(dst, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_with(dst: str | Path, writer: Callable[[Path], None]) -> None:
    """Atomic write through a library's own writer (``writer(tmp_path)``)."""
    with atomic_path(dst) as tmp:
        writer(tmp)


def save_npy(dst: str | Path, array: np.ndarray) -> None:
    def _w(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    write_with(dst, _w)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, relative to the project root (mirrored in dvc.yaml)."""

    root: Path = Path(".")

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def features(self) -> Path:
        return self.root / "data" / "features"

    @property
    def tokenizer(self) -> Path:
        return self.root / "data" / "tokenizer"

    @property
    def tokens(self) -> Path:
        return self.root / "data" / "tokens"

    @property
    def gpt(self) -> Path:
        return self.root / "data" / "gpt"

    @property
    def samples(self) -> Path:
        return self.root / "data" / "samples"

    @property
    def reports(self) -> Path:
        return self.root / "reports"
