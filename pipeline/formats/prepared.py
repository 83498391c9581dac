"""Prepared images: what ``prepare`` writes and every later stage reads.

``data/prepared/``:
- ``images/<split>-NNNNN.{npy,tar}``: the image shards, ``raw`` uint8 (N, H, W, 3) arrays or
  WebDataset-style tars of JPEGs (``prepare.encoding``; ``pipeline/formats/image_shards.py``);
- ``images/<split>-NNNNN.json``: each shard's own manifest: the codec, the image count, the
  file's size and sha256, and per image its key, id, label, byte range and content hash, so a
  shard can be copied, streamed or checked on its own;
- ``manifest.parquet``: one row per image, :data:`MANIFEST_SCHEMA` (``shard`` and ``index`` say
  where it is, ``offset``/``size`` its byte range in that file; ``content_hash`` is the sha256 of
  the stored bytes: the pixels of a raw shard, the JPEG file of a jpeg one);
- ``classes.json``: ``[{"label", "key", "name"}]`` per class, in label order.

Every stage reads images through :class:`SplitImages` (``uint8(indices)``, ``labels``, ``rows``,
``split``, ``len``) or :func:`load_image_shard`, whatever the encoding. This module owns the
names, the schema, the writer and the readers; nothing else spells them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import FormatError
from pipeline.formats.image_shards import SUFFIX, Codec, JpegShard, write_npy_shard, write_tar_shard
from vfmtok import files

IMAGES, MANIFEST, CLASSES = "images", "manifest.parquet", "classes.json"
SHARD_FORMAT, SHARD_VERSION = "vfmtok.prepared-shard", 1
MANIFEST_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("split", pa.string()), ("label", pa.int32()),
    ("class_name", pa.string()), ("source_path", pa.string()), ("content_hash", pa.string()),
    ("shard", pa.string()), ("index", pa.int32()), ("offset", pa.int64()), ("size", pa.int64()),
])  # fmt: skip
MAX_DECODE_THREADS = 8


def shard_name(split: str, n: int, encoding: str = "raw") -> str:
    return f"{split}-{n:05d}{SUFFIX[encoding]}"


def shard_manifest_name(shard: str) -> str:
    return Path(shard).with_suffix(".json").name


def content_hash(data: bytes | np.ndarray) -> str:
    """sha256 of an image's stored bytes (for a raw shard: its pixels, C order)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).tobytes()
    return files.sha256_bytes(data)


class PreparedWriter:
    """Writes one ``data/prepared`` folder from scratch: shards first, manifest and classes last,
    so a folder with a manifest is a complete one."""

    def __init__(self, folder: Path, codec: Codec):
        self.folder, self.codec = folder, codec
        shutil.rmtree(folder, ignore_errors=True)  # the stage owns this folder: no stale shards
        (folder / IMAGES).mkdir(parents=True)

    def write_shard(self, name: str, data: list[bytes], image_ids: list[str],
                    labels: list[int]) -> list[dict]:
        """One shard of encoded images (``Codec.encode``) in manifest ``index`` order and its
        manifest; returns per image its ``offset``, ``size`` and ``content_hash``."""
        path = self.folder / IMAGES / name
        if self.codec.encoding == "raw":
            offsets = write_npy_shard(path, self.codec, data)
        else:
            offsets = write_tar_shard(path, data, labels)
        placed = [{"offset": o, "size": len(d), "content_hash": content_hash(d)}
                  for o, d in zip(offsets, data, strict=True)]
        members = [{"key": f"{i:06d}", "image_id": iid, "label": int(lbl), **p}
                   for i, (iid, lbl, p) in enumerate(zip(image_ids, labels, placed, strict=True))]
        meta = {"format": SHARD_FORMAT, "version": SHARD_VERSION, "shard": name, **self.codec.describe(),
                "count": len(data), "bytes": path.stat().st_size, "sha256": files.sha256_file(path),
                "members": members}
        # compact (one line): Python's fast JSON encoder only runs without indentation
        text = json.dumps(meta, sort_keys=True, separators=(",", ":")) + "\n"
        files.write_text(self.folder / IMAGES / shard_manifest_name(name), text)
        return placed

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


def read_shard_manifest(folder: Path, shard: str) -> dict:
    path = folder / IMAGES / shard_manifest_name(shard)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: cannot read shard manifest: {e}") from None
    if meta.get("format") != SHARD_FORMAT or meta.get("version") != SHARD_VERSION:
        raise FormatError(f"{path}: not a version-{SHARD_VERSION} {SHARD_FORMAT} manifest")
    return meta


def _load_npy_shard(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: cannot read image shard: {e}") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise FormatError(f"{path}: expected (N, H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    return arr


def load_image_shard(folder: Path, shard: str) -> np.ndarray | JpegShard:
    """One shard's images, (N, H, W, 3) uint8 by index or slice: a memory-mapped array (raw) or a
    :class:`JpegShard` that decodes the images asked for."""
    path = folder / IMAGES / shard
    if path.suffix == SUFFIX["raw"]:
        return _load_npy_shard(path)
    if path.suffix != SUFFIX["jpeg"]:
        raise FormatError(f"{path}: unknown image shard type {path.suffix!r}")
    meta = read_shard_manifest(folder, shard)
    codec = Codec("jpeg", int(meta["resolution"]), int(meta["quality"]), str(meta["subsampling"]))
    members = meta["members"]
    return JpegShard(path, codec, [m["offset"] for m in members], [m["size"] for m in members])


class SplitImages:
    """Every prepared image of one split, addressable by a global index in manifest order.

    Raw shards are read into memory (``in_memory``) or memory-mapped; jpeg shards stay mapped and
    are decoded on demand, by ``decode_threads`` threads in :meth:`uint8` (0: one per core, at
    most 8; Pillow decodes without holding the GIL), or one image per ``__getitem__``, which is
    what ``DataLoader`` workers call (:func:`decode_batches`).
    """

    def __init__(self, folder: Path, split: str, in_memory: bool = True, decode_threads: int = 0):
        man = read_manifest(folder)
        man = man[man["split"] == split].sort_values(["shard", "index"]).reset_index(drop=True)
        if man.empty:
            raise FormatError(f"{folder / MANIFEST}: no '{split}' images")
        self.split = split
        self.rows: pd.DataFrame = man
        self.labels = man["label"].to_numpy().astype(np.int64)
        self.shard_names = list(dict.fromkeys(man["shard"]))
        shards = [load_image_shard(folder, s) for s in self.shard_names]
        if sum(len(a) for a in shards) != len(man):
            raise FormatError(f"{folder}: '{split}' shards and manifest disagree in length")
        self._shards = [np.asarray(a) if in_memory and isinstance(a, np.ndarray) else a for a in shards]
        self._starts = np.cumsum([0] + [len(a) for a in shards])
        self._encoded = any(isinstance(a, JpegShard) for a in shards)
        self._threads = decode_threads or min(MAX_DECODE_THREADS, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}  # a pool does not cross processes

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def resolution(self) -> int:
        return int(self._shards[0].shape[1])

    def _locate(self, indices) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"image index out of range 0..{len(self) - 1} of the '{self.split}' split")
        which = np.searchsorted(self._starts, idx, side="right") - 1
        return which, idx - self._starts[which]

    def __getitem__(self, i: int) -> np.ndarray:
        """One image (H, W, 3) uint8."""
        (w,), (j,) = self._locate([i])
        return np.asarray(self._shards[w][int(j)])

    def uint8(self, indices) -> np.ndarray:
        """(B, H, W, 3) uint8 images at the given global indices (array-like of ints)."""
        which, local = self._locate(indices)
        if not len(which):
            r = self.resolution
            return np.zeros((0, r, r, 3), np.uint8)
        fetch = [(self._shards[w], int(j)) for w, j in zip(which, local, strict=True)]
        if not self._encoded or self._threads < 2 or len(fetch) < 2:
            return np.stack([s[j] for s, j in fetch])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="decode")
        return np.stack(list(self._pool.map(lambda sj: sj[0][sj[1]], fetch)))


def decode_batches(images: SplitImages, batches: Iterable[Sequence[int]], workers: int,
                   prefetch: int = 2) -> Iterator[np.ndarray]:
    """(B, H, W, 3) uint8 batches, one per index list, decoded in ``workers`` ``DataLoader``
    worker processes (0: in this process, by :meth:`SplitImages.uint8`), in order."""
    batches = [list(b) for b in batches]
    if workers <= 0:
        yield from (images.uint8(b) for b in batches)
        return
    from torch.utils.data import DataLoader  # only the callers that ask for workers pay for torch

    yield from DataLoader(images, batch_sampler=batches, num_workers=workers, collate_fn=np.stack,
                          prefetch_factor=prefetch)
