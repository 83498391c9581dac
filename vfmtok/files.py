"""Atomic file writes and content hashes: the one place every artifact, checkpoint and cache uses.

Every file goes to a temporary file in the same folder and is renamed into place, so a killed
process never leaves a half-written file that DVC, a resume or a later stage would take for a
good one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(dst: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it replaces ``dst`` in one rename.

    ``fsync``: flush the file to disk before the rename (checkpoints: survive a power cut too).
    On an exception the temporary file is removed and ``dst`` is left as it was.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are shared like any other file
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_with(dst: str | Path, writer: Callable[[Path], None], fsync: bool = False) -> None:
    """Atomic write through a library's own writer (``writer(tmp_path)``)."""
    with atomic_path(dst, fsync) as tmp:
        writer(tmp)


def write_bytes(dst: str | Path, data: bytes) -> None:
    write_with(dst, lambda tmp: tmp.write_bytes(data))


def write_text(dst: str | Path, text: str) -> None:
    write_bytes(dst, text.encode())


def write_json(dst: str | Path, obj: Any) -> None:
    write_text(dst, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npy(dst: str | Path, array: Any) -> None:
    """A numpy array as ``.npy`` (no pickle), atomically."""
    import numpy as np

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    write_with(dst, save)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object, independent of key order."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())
