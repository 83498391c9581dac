"""Stage ``prepare``: source images -> square RGB shards + manifests + a class index.

Reads ``prepare.*``, the source folder and its listing (``data/source_listing.tsv``, what DVC
tracks instead of the tree); writes ``data/prepared`` (``pipeline/formats/prepared.py``) and
``reports/prepare.json``. Each shard is one Prefect task (retried on failure): its images are
decoded, resized, cropped and encoded (raw pixels or JPEG) in ``prepare.workers`` processes, and
only the encoded bytes come back. An image that cannot be decoded, and every entry the scan passed
over (symlink loops, broken links, unreadable folders, unlabelled val images), is skipped, counted
and listed, never a crash. The same input and params give byte-identical outputs: the order is
the sorted scan order and nothing time-dependent is written under ``data/``. The source is
scanned (and checked against its listing) before anything is written, so a bad source loses
nothing.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tqdm import tqdm

from pipeline import sources
from pipeline.errors import SourceError, retry_unless_user_error
from pipeline.formats import prepared, source_listing
from pipeline.formats.image_shards import Codec
from pipeline.layout import Layout
from pipeline.orchestration.lazy_prefect import flow, get_run_logger, task
from pipeline.params import PrepareParams, load_params
from vfmtok import files


@dataclass
class ShardResult:
    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def _encode(item: sources.SourceItem, codec: Codec) -> bytes | str:
    """Worker-side: the image's stored bytes, or the reason it was skipped."""
    try:
        return codec.encode(sources.load_rgb(item, codec.resolution))
    except sources.BadImage as e:
        return str(e)


@task(retries=2, retry_delay_seconds=1, retry_condition_fn=retry_unless_user_error)
def prepare_shard(items: list[sources.SourceItem], writer: prepared.PreparedWriter, shard: str,
                  class_names: list[str], pool: Executor | None) -> ShardResult:
    """Decode, resize, crop and encode one shard's images and write them as one shard."""
    encode = partial(_encode, codec=writer.codec)
    encoded = pool.map(encode, items, chunksize=16) if pool else map(encode, items)
    result, kept, data = ShardResult(), [], []
    for item, out in zip(items, encoded, strict=True):
        if isinstance(out, str):
            result.skipped.append({"source_path": item.source_path, "reason": out})
        else:
            kept.append(item)
            data.append(out)
    if not kept:
        return result
    placed = writer.write_shard(shard, data, [it.image_id for it in kept], [it.label for it in kept])
    for i, (item, where) in enumerate(zip(kept, placed, strict=True)):
        result.rows.append({
            "image_id": item.image_id, "split": item.split, "label": item.label,
            "class_name": class_names[item.label], "source_path": item.source_path,
            "shard": shard, "index": i, **where,
        })  # fmt: skip
    return result


def codec(p: PrepareParams) -> Codec:
    return Codec(p.encoding, p.resolution, p.jpeg_quality, p.jpeg_subsampling)


def scan_checked(p: PrepareParams, layout: Layout) -> sources.SourceIndex:
    """The source's index, refused when it no longer matches the listing DVC recorded."""
    index = sources.scan(p.source, p.path, p.devkit, p.val_fraction)
    if layout.source_listing.is_file():
        source_listing.check(layout.source_listing, index, p.path)
    return index


@flow(name="prepare")
def prepare_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    log = get_run_logger()
    p = load_params(params_file).prepare
    layout = Layout(Path(root))
    start = time.perf_counter()
    index = scan_checked(p, layout)  # before anything is written
    class_names = [name for _, name in index.classes]
    limits = {"train": p.max_per_class_train, "val": p.max_per_class_val}

    writer = prepared.PreparedWriter(layout.prepared, codec(p))
    rows, skipped, seen = [], [s.as_dict() for s in index.skipped], 0
    pool = ProcessPoolExecutor(p.workers) if p.workers > 0 else None
    try:
        for split, limit in limits.items():
            items = sources.limit_per_class(index.items, split, limit)
            seen += len(items)
            chunks = [items[i : i + p.shard_size] for i in range(0, len(items), p.shard_size)]
            for n, chunk in enumerate(tqdm(chunks, desc=f"prepare {split}", unit="shard")):
                name = prepared.shard_name(split, n, p.encoding)
                res = prepare_shard(chunk, writer, name, class_names, pool)
                rows += res.rows
                skipped += res.skipped
    finally:
        if pool:
            pool.shutdown()
    if not rows:
        raise SourceError(f"{p.path}: no image could be decoded ({len(skipped)} skipped)")
    writer.finish(rows, index.classes)

    seconds = time.perf_counter() - start
    stored = sum(r["size"] for r in rows)
    shard_bytes = sum(f.stat().st_size for f in (layout.prepared / prepared.IMAGES).iterdir())
    report = {
        "layout": index.layout,
        "images": len(rows),
        "images_train": sum(r["split"] == "train" for r in rows),
        "images_val": sum(r["split"] == "val" for r in rows),
        "classes": len(index.classes),
        "skipped": len(skipped),
        "skipped_files": skipped,
        **{f"shard_{k}": v for k, v in writer.codec.describe().items()},
        "bytes_per_image": round(stored / len(rows), 1),  # the image data alone
        "shard_bytes_per_image": round(shard_bytes / len(rows), 1),  # with tar/npy headers, manifests
        "seconds": round(seconds, 3),
        "images_per_s": round(seen / seconds, 1),
    }
    files.write_json(layout.report("prepare"), report)
    log.info("prepared %d images (%d skipped) at %.1f images/s, %.0f bytes per image", len(rows),
             len(skipped), report["images_per_s"], report["shard_bytes_per_image"])
    return report
