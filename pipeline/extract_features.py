"""Stage ``extract_features``: the frozen backbone's multi-level maps for every prepared image.

Reads ``backbone.*`` and ``extract_features.*`` and ``data/prepared``; writes
``data/features/<split>-NNNNN.safetensors`` (one float16 tensor per level, rows in the image
shard's order), ``data/features/manifest.json`` and ``reports/extract_features.json``.
The tokenizer trains from these when augmentation is off, and the linear probe reads them.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from safetensors.torch import save_file
from tqdm import tqdm

from pipeline import artifacts, shards
from pipeline.artifacts import Layout
from pipeline.config import to_dict
from pipeline.params import load_params
from vfmtok.backbones import FrozenBackbone, build_backbone
from vfmtok.runtime import autocast, pick_device


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def extract_shard(
    backbone: FrozenBackbone, prepared: Path, shard: str, out_path: Path,
    batch_size: int, device: torch.device,
) -> int:
    """Run the backbone over one image shard; write its levels as one safetensors file."""
    images = shards.load_image_shard(prepared, shard)
    levels: list[list[torch.Tensor]] = [[] for _ in backbone.level_channels]
    for i in range(0, len(images), batch_size):
        x = shards.images_to_tensor(images[i : i + batch_size]).to(device)  # (B, 3, H, W)
        with autocast(device):
            out = backbone(x)
        for acc, lvl in zip(levels, out.levels, strict=True):
            acc.append(lvl.to(torch.float16).cpu())  # (B, C_l, H_l, W_l)
    tensors = {f"level_{i}": torch.cat(acc).contiguous() for i, acc in enumerate(levels)}
    artifacts.write_with(out_path, lambda tmp: save_file(tensors, str(tmp)))
    return len(images)


@flow(name="extract_features")
def extract_features_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    log = get_run_logger()
    params = load_params(params_file)
    p, layout = params.extract_features, Layout(Path(root))
    device = pick_device(p.device)
    backbone = build_backbone(params.backbone).to(device)
    manifest = shards.read_manifest(layout.prepared)
    todo = sorted(manifest.loc[manifest["split"].isin(p.splits), "shard"].unique())

    out = layout.features
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start, n_images = time.perf_counter(), 0
    for shard in tqdm(todo, desc="extract_features", unit="shard"):
        dst = out / shards.feature_shard_name(shard)
        n_images += extract_shard(backbone, layout.prepared, shard, dst, p.batch_size, device)
    seconds = time.perf_counter() - start

    artifacts.write_json(out / "manifest.json", {
        "backbone": to_dict(params.backbone),
        "dtype": "float16",
        "levels": [{"channels": c, "height": h, "width": w}
                   for c, (h, w) in zip(backbone.level_channels, backbone.level_shapes, strict=True)],
        "semantic_level": len(backbone.level_channels) - 1,
        "shards": [{"image_shard": s, "file": shards.feature_shard_name(s)} for s in todo],
        "splits": p.splits,
    })  # fmt: skip
    report = {
        "images": n_images,
        "seconds": round(seconds, 3),
        "images_per_s": round(n_images / seconds, 1),
        "device": device.type,
    }
    artifacts.write_json(layout.reports / "extract_features.json", report)
    log.info("extracted %d images at %.1f images/s on %s", n_images, report["images_per_s"],
             device.type)
    return report
