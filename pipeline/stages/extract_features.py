"""Stage ``extract_features``: the frozen backbone's multi-level maps for every prepared image.

Reads ``backbone.*``, ``extract_features.*`` and ``data/prepared``; writes ``data/features``
(``pipeline/formats/features.py``) and ``reports/extract_features.json``. On several processes
(``launch``) each rank extracts every W-th shard; a shard's bytes do not depend on which. The tokenizer trains
from these when augmentation is off, and the linear probes read them.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.errors import retry_unless_user_error
from pipeline.formats import features, prepared
from pipeline.layout import Layout
from pipeline.orchestration.lazy_prefect import flow, get_run_logger, task
from pipeline.params import load_params
from vfmtok import distributed, files
from vfmtok.backbones import FrozenBackbone, build_backbone
from vfmtok.config_schema import to_dict
from vfmtok.device import autocast
from vfmtok.images import from_uint8


@task(retries=2, retry_delay_seconds=1, retry_condition_fn=retry_unless_user_error)
def extract_shard(backbone: FrozenBackbone, layout: Layout, shard: str, batch_size: int,
                  device: torch.device) -> int:
    """Run the backbone over one image shard; write its levels as one feature shard."""
    images = prepared.load_image_shard(layout.prepared, shard)
    levels: list[list[torch.Tensor]] = [[] for _ in backbone.level_channels]
    for i in range(0, len(images), batch_size):
        x = from_uint8(images[i : i + batch_size]).to(device)  # (B, 3, H, W)
        with autocast(device):
            out = backbone(x)
        for acc, lvl in zip(levels, out.levels, strict=True):
            acc.append(lvl.to(torch.float16).cpu())  # (B, C_l, H_l, W_l)
    features.write_shard(layout.features, shard, [torch.cat(acc) for acc in levels])
    return len(images)


@flow(name="extract_features")
def extract_features_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    log = get_run_logger()
    params = load_params(params_file)
    p, layout = params.extract_features, Layout(Path(root))
    manifest = prepared.read_manifest(layout.prepared)
    todo = sorted(manifest.loc[manifest["split"].isin(p.splits), "shard"].unique())
    device = distributed.init_from_env(p.device)  # torchrun: the shards split across ranks
    backbone = build_backbone(params.backbone).to(device)

    if distributed.is_main():  # rank 0 alone owns the folder
        shutil.rmtree(layout.features, ignore_errors=True)
        layout.features.mkdir(parents=True)
    distributed.barrier()
    start, counts = time.perf_counter(), {}
    mine = todo[distributed.rank()::distributed.world()]  # a shard is the same bytes on any rank
    for shard in tqdm(mine, desc="extract_features", unit="shard", disable=not distributed.is_main()):
        counts[shard] = extract_shard(backbone, layout, shard, p.batch_size, device)
    counts = distributed.gather_batches(counts)  # {shard: images} of every rank, on rank 0
    seconds = time.perf_counter() - start
    if counts is None:
        return {}
    n_images = sum(counts.values())

    features.write_manifest(layout.features, to_dict(params.backbone), backbone.level_channels,
                            backbone.level_shapes, todo, p.splits)
    report = {
        "images": n_images,
        "seconds": round(seconds, 3),
        "images_per_s": round(n_images / seconds, 1),
        "device": device.type,
    }
    files.write_json(layout.report("extract_features"), report)
    log.info("extracted %d images at %.1f images/s on %s", n_images, report["images_per_s"], device.type)
    return report
