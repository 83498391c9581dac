"""Stage ``prepare``: source images -> square RGB shards + a Parquet manifest + a class index.

Reads ``prepare.*`` and the source folder; writes ``data/prepared`` (``pipeline/formats/prepared.py``)
and ``reports/prepare.json``. Each shard is one Prefect task (retried on failure); an image that
cannot be decoded is skipped, counted and listed, never a crash. The same input and params give
byte-identical outputs: the order is the sorted scan order and nothing time-dependent is written
under ``data/``. The source is scanned before anything is written, so a bad source loses nothing.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from pipeline import sources
from pipeline.errors import SourceError, retry_unless_user_error
from pipeline.formats import prepared
from pipeline.layout import Layout
from pipeline.params import load_params
from vfmtok import files


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


@task(retries=2, retry_delay_seconds=1, retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE)
def prepare_shard(items: list[sources.SourceItem], writer: prepared.PreparedWriter, shard: str, size: int,
                  class_names: list[str], pool: Executor | None) -> ShardResult:
    """Decode, resize and crop one shard's images and write them as one shard."""
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
            "content_hash": prepared.content_hash(out), "shard": shard, "index": len(images),
        })  # fmt: skip
        images.append(out)
    if images:
        writer.write_shard(shard, images)
    return result


@flow(name="prepare")
def prepare_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    log = get_run_logger()
    p = load_params(params_file).prepare
    layout = Layout(Path(root))
    start = time.perf_counter()
    index = sources.scan(p.source, p.path, p.devkit, p.val_fraction)  # before anything is written
    class_names = [name for _, name in index.classes]
    limits = {"train": p.max_per_class_train, "val": p.max_per_class_val}

    writer = prepared.PreparedWriter(layout.prepared)
    rows, skipped, seen = [], [], 0
    pool = ProcessPoolExecutor(p.workers) if p.workers > 0 else None
    try:
        for split, limit in limits.items():
            items = sources.limit_per_class(index.items, split, limit)
            seen += len(items)
            chunks = [items[i : i + p.shard_size] for i in range(0, len(items), p.shard_size)]
            for n, chunk in enumerate(tqdm(chunks, desc=f"prepare {split}", unit="shard")):
                res = prepare_shard(chunk, writer, prepared.shard_name(split, n), p.resolution,
                                    class_names, pool)
                rows += res.rows
                skipped += res.skipped
    finally:
        if pool:
            pool.shutdown()
    if not rows:
        raise SourceError(f"{p.path}: no image could be decoded ({len(skipped)} skipped)")
    writer.finish(rows, index.classes)

    seconds = time.perf_counter() - start
    report = {
        "images": len(rows),
        "images_train": sum(r["split"] == "train" for r in rows),
        "images_val": sum(r["split"] == "val" for r in rows),
        "classes": len(index.classes),
        "skipped": len(skipped),
        "skipped_files": skipped,
        "seconds": round(seconds, 3),
        "images_per_s": round(seen / seconds, 1),
    }
    files.write_json(layout.report("prepare"), report)
    log.info("prepared %d images (%d skipped) at %.1f images/s", len(rows), len(skipped),
             report["images_per_s"])
    return report
