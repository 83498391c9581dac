"""The two encodings of a prepared image shard, behind one reader interface (part of the
``prepared`` format: ``pipeline/formats/prepared.py`` names the files and owns the manifest).

- ``raw``: ``<split>-NNNNN.npy``, one uint8 (N, H, W, 3) array, memory-mapped on read. No decoding
  at all: right for the 64 px demo, whose stages keep every image in memory anyway (12 KB each).
- ``jpeg``: ``<split>-NNNNN.tar``, WebDataset-style: per image a ``KKKKKK.jpg`` member (the
  image re-encoded at ``prepare.resolution`` by Pillow's libjpeg-turbo at ``prepare.jpeg_quality``,
  ``prepare.jpeg_subsampling``, optimised Huffman tables, no metadata) and a ``KKKKKK.cls`` member
  (the label in ASCII), KKKKKK = the index in the shard. USTAR headers with mtime 0, owner 0 and
  mode 0644, so the same pixels always give the same bytes. Any tar reader, and the
  ``webdataset`` package, read it as is; here a member is read by its byte range (from the
  shard's manifest) out of a memory map and decoded where it is needed: in the calling thread,
  a thread pool, or ``DataLoader`` worker processes (``prepared.decode_batches``).

Both readers take an int, a slice or an index array and return uint8 (H, W, 3) / (B, H, W, 3).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from pipeline.errors import FormatError
from vfmtok import files

Encoding = Literal["raw", "jpeg"]
SUFFIX = {"raw": ".npy", "jpeg": ".tar"}
SUBSAMPLING = {"yuv444": 0, "yuv422": 1, "yuv420": 2}  # Pillow's codes for 4:4:4, 4:2:2, 4:2:0


@dataclass(frozen=True)
class Codec:
    """How one image's pixels become the bytes stored for it, and back (picklable: it travels to
    prepare's decode processes)."""

    encoding: Encoding
    resolution: int
    quality: int = 95
    subsampling: str = "yuv420"

    def encode(self, pixels: np.ndarray) -> bytes:
        """(H, W, 3) uint8 -> stored bytes (the raw pixels, or a JPEG file)."""
        if self.encoding == "raw":
            return np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=self.quality, optimize=True,
                                     subsampling=SUBSAMPLING[self.subsampling])
        return buf.getvalue()

    def decode(self, data: bytes | memoryview | np.ndarray) -> np.ndarray:
        """Stored bytes -> (H, W, 3) uint8."""
        if self.encoding == "raw":
            return np.frombuffer(data, np.uint8).reshape(self.resolution, self.resolution, 3)
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))

    def describe(self) -> dict:
        if self.encoding == "raw":
            return {"encoding": "raw", "resolution": self.resolution}
        return {"encoding": "jpeg", "resolution": self.resolution, "codec": "Pillow libjpeg-turbo",
                "quality": self.quality, "subsampling": self.subsampling}


def write_npy_shard(path: Path, codec: Codec, data: list[bytes]) -> list[int]:
    """One (N, H, W, 3) array; returns the byte offset of each image in the file."""
    r = codec.resolution
    files.write_npy(path, np.frombuffer(b"".join(data), np.uint8).reshape(len(data), r, r, 3))
    header = path.stat().st_size - sum(len(d) for d in data)
    return [header + i * r * r * 3 for i in range(len(data))]


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar_shard(path: Path, data: list[bytes], labels: list[int]) -> list[int]:
    """``KKKKKK.jpg`` + ``KKKKKK.cls`` per image; returns the byte offset of each JPEG."""
    offsets: list[int] = []

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, (jpg, label) in enumerate(zip(data, labels, strict=True)):
                offsets.append(tar.offset + tarfile.BLOCKSIZE)  # a USTAR header is one block
                tar.addfile(_member(f"{i:06d}.jpg", len(jpg)), io.BytesIO(jpg))
                cls = str(label).encode()
                tar.addfile(_member(f"{i:06d}.cls", len(cls)), io.BytesIO(cls))

    files.write_with(path, write)
    return offsets


class JpegShard:
    """The images of one tar shard, decoded on demand from a memory map of the file."""

    def __init__(self, path: Path, codec: Codec, offsets: list[int], sizes: list[int]):
        self.path, self.codec = path, codec
        self._offsets, self._sizes = np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)
        self._map: np.memmap | None = None
        end = int((self._offsets + self._sizes).max()) if len(offsets) else 0
        if not path.is_file() or path.stat().st_size < end:
            raise FormatError(f"{path}: missing or shorter than its manifest says ({end} bytes)")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None}  # reopened in the process that unpickles it

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        r = self.codec.resolution
        return (len(self), r, r, 3)

    def raw(self, i: int) -> np.ndarray:
        """The stored bytes of image ``i`` (a view of the memory map)."""
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        start = int(self._offsets[i])
        return self._map[start : start + int(self._sizes[i])]

    def image(self, i: int) -> np.ndarray:
        try:
            return self.codec.decode(self.raw(i))
        except OSError as e:
            raise FormatError(f"{self.path}: image {i} does not decode: {e}") from None

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.image(int(key))
        idx = range(len(self))[key] if isinstance(key, slice) else np.asarray(key).tolist()
        r = self.codec.resolution
        return np.stack([self.image(i) for i in idx]) if len(idx) else np.zeros((0, r, r, 3), np.uint8)
