"""Stage ``prepare``: source images -> square RGB shards + a Parquet manifest + a class index.

Reads ``prepare.*``; writes ``data/prepared/{images/<split>-NNNNN.npy, manifest.parquet,
classes.json}`` and ``reports/prepare.json``. Each shard is one Prefect task (retried on failure);
an image that cannot be decoded is skipped, counted and listed, never a crash. The same input and
params give byte-identical outputs: the order is the sorted scan order and nothing time-dependent
is written under ``data/``.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from pipeline import artifacts, sources
from pipeline.artifacts import Layout
from pipeline.params import load_params

MANIFEST_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("split", pa.string()), ("label", pa.int32()),
    ("class_name", pa.string()), ("source_path", pa.string()), ("content_hash", pa.string()),
    ("shard", pa.string()), ("index", pa.int32()),
])  # fmt: skip


@dataclass
class ShardResult:
    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def _decode(item: sources.SourceItem, size: int) -> np.ndarray | str:
    """Worker-side decode: the pixels, or the reason the image was skipped."""
    try:
        return sources.load_rgb(item, size)
    except sources.BadImage as e:
        return str(e)


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def prepare_shard(
    items: list[sources.SourceItem], shard_path: Path, size: int,
    class_names: list[str], pool: Executor | None,
) -> ShardResult:
    """Decode, resize and crop one shard's images; write them as one (N, size, size, 3) uint8 array."""
    decode = partial(_decode, size=size)
    decoded = pool.map(decode, items, chunksize=16) if pool else map(decode, items)
    result, images = ShardResult(), []
    for item, out in zip(items, decoded, strict=True):
        if isinstance(out, str):
            result.skipped.append({"source_path": item.source_path, "reason": out})
            continue
        result.rows.append({
            "image_id": item.image_id, "split": item.split, "label": item.label,
            "class_name": class_names[item.label], "source_path": item.source_path,
            "content_hash": artifacts.sha256_bytes(out.tobytes()),
            "shard": shard_path.name, "index": len(images),
        })  # fmt: skip
        images.append(out)
    if images:
        artifacts.save_npy(shard_path, np.stack(images))
    return result


def _write_manifest(path: Path, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    artifacts.write_with(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


@flow(name="prepare")
def prepare_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    log = get_run_logger()
    p = load_params(params_file).prepare
    layout = Layout(Path(root))
    start = time.perf_counter()
    index = sources.scan(p.source, p.path, p.devkit, p.val_fraction)
    class_names = [name for _, name in index.classes]
    limits = {"train": p.max_per_class_train, "val": p.max_per_class_val}

    out = layout.prepared
    shutil.rmtree(out, ignore_errors=True)  # the stage owns this folder: no stale shards survive
    (out / "images").mkdir(parents=True)
    rows, skipped, seen = [], [], 0
    pool = ProcessPoolExecutor(p.workers) if p.workers > 0 else None
    try:
        for split, limit in limits.items():
            items = sources.limit_per_class(index.items, split, limit)
            seen += len(items)
            chunks = [items[i : i + p.shard_size] for i in range(0, len(items), p.shard_size)]
            for n, chunk in enumerate(tqdm(chunks, desc=f"prepare {split}", unit="shard")):
                path = out / "images" / f"{split}-{n:05d}.npy"
                res = prepare_shard(chunk, path, p.resolution, class_names, pool)
                rows += res.rows
                skipped += res.skipped
    finally:
        if pool:
            pool.shutdown()
    if not rows:
        raise sources.SourceError(f"{p.path}: no image could be decoded ({len(skipped)} skipped)")
    _write_manifest(out / "manifest.parquet", rows)
    classes = [{"label": i, "key": k, "name": n} for i, (k, n) in enumerate(index.classes)]
    artifacts.write_json(out / "classes.json", classes)

    seconds = time.perf_counter() - start
    report = {
        "images": len(rows),
        "images_train": sum(r["split"] == "train" for r in rows),
        "images_val": sum(r["split"] == "val" for r in rows),
        "classes": len(classes),
        "skipped": len(skipped),
        "skipped_files": skipped,
        "seconds": round(seconds, 3),
        "images_per_s": round(seen / seconds, 1),
    }
    artifacts.write_json(layout.reports / "prepare.json", report)
    log.info("prepared %d images (%d skipped) at %.1f images/s", len(rows), len(skipped),
             report["images_per_s"])
    return report
