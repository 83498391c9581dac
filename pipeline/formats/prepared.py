"""Prepared images: what ``prepare`` writes and every later stage reads.

``data/prepared/``:
- ``images/<split>-NNNNN.npy``: one uint8 (N, H, W, 3) array per shard, memory-mapped on read so
  a stage touches only the shard it works on;
- ``manifest.parquet``: one row per image, :data:`MANIFEST_SCHEMA` (``shard`` and ``index`` say
  where its pixels are; ``content_hash`` is the sha256 of those pixels);
- ``classes.json``: ``[{"label", "key", "name"}]`` per class, in label order.

This module owns the names, the schema, the writer and the readers; nothing else spells them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import FormatError
from vfmtok import files

IMAGES, MANIFEST, CLASSES = "images", "manifest.parquet", "classes.json"
MANIFEST_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("split", pa.string()), ("label", pa.int32()),
    ("class_name", pa.string()), ("source_path", pa.string()), ("content_hash", pa.string()),
    ("shard", pa.string()), ("index", pa.int32()),
])  # fmt: skip


def shard_name(split: str, n: int) -> str:
    return f"{split}-{n:05d}.npy"


def content_hash(pixels: np.ndarray) -> str:
    return files.sha256_bytes(np.ascontiguousarray(pixels).tobytes())


class PreparedWriter:
    """Writes one ``data/prepared`` folder from scratch: shards first, manifest and classes last,
    so a folder with a manifest is a complete one."""

    def __init__(self, folder: Path):
        self.folder = folder
        shutil.rmtree(folder, ignore_errors=True)  # the stage owns this folder: no stale shards
        (folder / IMAGES).mkdir(parents=True)

    def write_shard(self, name: str, images: list[np.ndarray]) -> None:
        """``images``: (H, W, 3) uint8 arrays of one shard, in manifest ``index`` order."""
        files.write_npy(self.folder / IMAGES / name, np.stack(images))

    def finish(self, rows: list[dict], classes: list[tuple[str, str]]) -> None:
        """The manifest (``rows`` with :data:`MANIFEST_SCHEMA` keys) and the class index."""
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
        files.write_with(self.folder / MANIFEST, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
        files.write_json(self.folder / CLASSES,
                         [{"label": i, "key": k, "name": n} for i, (k, n) in enumerate(classes)])


def read_manifest(folder: Path) -> pd.DataFrame:
    path = folder / MANIFEST
    if not path.is_file():
        raise FormatError(f"{path}: not found; run the prepare stage first")
    return pd.read_parquet(path)


def read_classes(folder: Path) -> list[dict]:
    path = folder / CLASSES
    if not path.is_file():
        raise FormatError(f"{path}: not found; run the prepare stage first")
    return json.loads(path.read_text())


def load_image_shard(folder: Path, shard: str) -> np.ndarray:
    """(N, H, W, 3) uint8, memory-mapped."""
    path = folder / IMAGES / shard
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: cannot read image shard: {e}") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise FormatError(f"{path}: expected (N, H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    return arr


class SplitImages:
    """Every prepared image of one split, addressable by a global index in manifest order."""

    def __init__(self, folder: Path, split: str, in_memory: bool = True):
        man = read_manifest(folder)
        man = man[man["split"] == split].sort_values(["shard", "index"]).reset_index(drop=True)
        if man.empty:
            raise FormatError(f"{folder / MANIFEST}: no '{split}' images")
        self.split = split
        self.rows: pd.DataFrame = man
        self.labels = man["label"].to_numpy().astype(np.int64)
        self.shard_names = list(dict.fromkeys(man["shard"]))
        arrays = [load_image_shard(folder, s) for s in self.shard_names]
        if sum(len(a) for a in arrays) != len(man):
            raise FormatError(f"{folder}: '{split}' shards and manifest disagree in length")
        self._arrays = [np.asarray(a) for a in arrays] if in_memory else arrays
        self._starts = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def resolution(self) -> int:
        return int(self._arrays[0].shape[1])

    def uint8(self, indices) -> np.ndarray:
        """(B, H, W, 3) uint8 images at the given global indices (array-like of ints)."""
        idx = np.asarray(indices)
        which = np.searchsorted(self._starts, idx, side="right") - 1
        return np.stack([self._arrays[w][i - self._starts[w]] for w, i in zip(which, idx, strict=True)])
