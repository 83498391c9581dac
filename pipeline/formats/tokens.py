"""Token files: what ``tokenize`` writes and ``train_ar`` streams.

One Parquet file per split, zstd-compressed, in row groups sized for streaming (and for sharding
across ranks), with columns ``image_id`` (string), ``split`` (string), ``label`` (int32),
``tokens`` (list of uint16, or int32 when the codebook exceeds 65536 codes) and ``flipped``
(bool). The file's key-value metadata records the tokenizer weights' sha256, the codebook size
and the number of tokens per image. Every reader goes through :class:`TokenFile`, which checks
the schema and that every id is below the codebook size, naming the file and the row when not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import FormatError
from vfmtok import files

META_PREFIX = "vfmtok."
MANIFEST = "manifest.json"


class TokenFileError(FormatError):
    """A token file that does not match the schema or the codebook; names the file (and row)."""


def split_file(folder: Path, split: str) -> Path:
    return folder / f"{split}.parquet"


def write_manifest(folder: Path, files_info: list[dict], codebook_size: int, n_tokens: int,
                   tokenizer_sha256: str) -> None:
    files.write_json(folder / MANIFEST, {"files": files_info, "codebook_size": codebook_size,
                                         "n_tokens": n_tokens, "tokenizer_sha256": tokenizer_sha256})


def numpy_type(codebook_size: int) -> type:
    """The smallest numpy integer type that holds every id of the codebook."""
    return np.uint16 if codebook_size <= 65536 else np.int32


def token_type(codebook_size: int) -> pa.DataType:
    return pa.uint16() if codebook_size <= 65536 else pa.int32()


def schema(codebook_size: int, meta: dict[str, str] | None = None) -> pa.Schema:
    fields = [
        ("image_id", pa.string()), ("split", pa.string()), ("label", pa.int32()),
        ("tokens", pa.list_(token_type(codebook_size))), ("flipped", pa.bool_()),
    ]  # fmt: skip
    metadata = {f"{META_PREFIX}{k}".encode(): str(v).encode() for k, v in (meta or {}).items()}
    return pa.schema(fields, metadata=metadata)


class TokenWriter:
    """Streams batches into one Parquet file, atomically: the file appears only on ``close()``."""

    def __init__(self, path: Path, codebook_size: int, meta: dict[str, str], row_group_size: int):
        self.path, self.codebook_size, self.row_group_size = path, codebook_size, row_group_size
        self.schema = schema(codebook_size, {"codebook_size": codebook_size, **meta})
        self._atomic = contextlib.ExitStack()  # the temp file is renamed into place by close()
        self._tmp = self._atomic.enter_context(files.atomic_path(path))
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.rows = 0

    def write(self, image_ids, split: str, labels, tokens: np.ndarray, flipped: bool) -> None:
        """``tokens`` (B, N) integer ids, all < codebook_size (checked)."""
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise TokenFileError(f"{self.path}: token id out of [0, {self.codebook_size})")
        n, t = tokens.shape
        values = pa.array(tokens.astype(numpy_type(self.codebook_size)).reshape(-1))
        offsets = pa.array(np.arange(0, (n + 1) * t, t, dtype=np.int32))
        batch = pa.RecordBatch.from_arrays([
            pa.array(list(image_ids), pa.string()), pa.array([split] * n, pa.string()),
            pa.array(np.asarray(labels, np.int32)), pa.ListArray.from_arrays(offsets, values),
            pa.array([flipped] * n, pa.bool_()),
        ], schema=self.schema)  # fmt: skip
        self._pending.append(batch)
        self._pending_rows += n
        while self._pending_rows >= self.row_group_size:
            self._flush(self.row_group_size)

    def _flush(self, rows: int) -> None:
        table = pa.Table.from_batches(self._pending, self.schema)
        self._writer.write_table(table.slice(0, rows), row_group_size=rows)
        rest = table.slice(rows)
        self._pending = rest.to_batches()
        self._pending_rows = rest.num_rows
        self.rows += rows

    def close(self) -> None:
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.close()
        self._atomic.close()  # rename into place

    def abort(self) -> None:
        """Drop everything written so far; ``path`` is left as it was."""
        self._writer.close()
        self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)


class TokenFile:
    """A validated token file: schema and metadata checked on open, ids checked as rows stream."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._pf = pq.ParquetFile(self.path)
        except (OSError, pa.ArrowInvalid) as e:
            raise TokenFileError(f"{self.path}: cannot open as Parquet: {e}") from None
        sch = self._pf.schema_arrow
        meta = {k.decode(): v.decode() for k, v in (sch.metadata or {}).items()}
        if f"{META_PREFIX}codebook_size" not in meta:
            raise TokenFileError(f"{self.path}: no {META_PREFIX}codebook_size in the file metadata")
        self.meta = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        self.codebook_size = int(self.meta["codebook_size"])
        expected = schema(self.codebook_size)
        for f in expected:
            if f.name not in sch.names:
                raise TokenFileError(f"{self.path}: missing column {f.name!r}")
            if sch.field(f.name).type != f.type:
                raise TokenFileError(
                    f"{self.path}: column {f.name!r} has type {sch.field(f.name).type}, expected {f.type}"
                )
        self.n_tokens = int(self.meta.get("n_tokens", 0))

    @property
    def num_rows(self) -> int:
        return self._pf.metadata.num_rows

    def row_group_rows(self, i: int) -> int:
        return self._pf.metadata.row_group(i).num_rows

    @property
    def num_row_groups(self) -> int:
        return self._pf.num_row_groups

    def read_row_group(self, i: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(tokens (R, N) int64, labels (R,) int64, image ids) of row group ``i``, validated."""
        table = self._pf.read_row_group(i, columns=["image_id", "label", "tokens"])
        first_row = sum(self.row_group_rows(j) for j in range(i))
        col = table.column("tokens").combine_chunks()
        lengths = np.diff(col.offsets.to_numpy())
        n = self.n_tokens or (int(lengths[0]) if len(lengths) else 0)
        bad_len = np.flatnonzero(lengths != n)
        if len(bad_len):
            raise TokenFileError(f"{self.path}: row {first_row + bad_len[0]} has "
                                 f"{lengths[bad_len[0]]} tokens, expected {n}")
        tokens = col.values.to_numpy(zero_copy_only=False).astype(np.int64).reshape(-1, n)
        bad = np.flatnonzero((tokens >= self.codebook_size).any(1) | (tokens < 0).any(1))
        if len(bad):
            row = first_row + int(bad[0])
            raise TokenFileError(f"{self.path}: row {row} has a token id >= codebook size "
                                 f"{self.codebook_size} (max {tokens[bad[0]].max()})")
        labels = table.column("label").to_numpy().astype(np.int64)
        return tokens, labels, table.column("image_id").to_pylist()

    def flipped(self, i: int) -> np.ndarray:
        """(R,) bool of row group ``i``: the rows that encode a horizontally flipped image."""
        column = self._pf.read_row_group(i, columns=["flipped"]).column("flipped")
        return column.to_numpy(zero_copy_only=False)

    def validate(self) -> None:
        """Check every row group (ids in range, lengths) without keeping anything in memory."""
        for i in range(self.num_row_groups):
            self.read_row_group(i)

    def iter_row_groups(self, groups: list[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in groups if groups is not None else range(self.num_row_groups):
            tokens, labels, _ = self.read_row_group(i)
            yield tokens, labels
