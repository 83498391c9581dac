"""Stage ``tokenize``: the EMA tokenizer turns every prepared image into token ids, in Parquet.

Reads ``tokenizer``, ``tokenize``, ``data/tokenizer``, ``data/prepared`` (and ``data/features``
for the VFMTok kind); writes ``data/tokens/<split>.parquet`` (see ``pipeline/tokens.py``),
``data/tokens/manifest.json`` and ``reports/tokenize.json`` (bytes per token, images/s).
Optional horizontal-flip copies are encoded through the backbone (cached features are unflipped).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from pipeline import artifacts
from pipeline.artifacts import Layout
from pipeline.datasets import SplitFeatures, SplitImages
from pipeline.models import load_tokenizer
from pipeline.params import load_params
from pipeline.tokens import TokenFile, TokenWriter
from vfmtok.runtime import autocast, pick_device
from vfmtok.tokenizer import Tokenizer


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def tokenize_split(
    model: Tokenizer, images: SplitImages, features: SplitFeatures | None, out: Path,
    meta: dict[str, str], flip: bool, batch_size: int, row_group_size: int, device: torch.device,
) -> int:
    """Encode one split (and its flipped copies) into one Parquet file; returns rows written."""
    split = str(images.rows["split"].iloc[0])
    writer = TokenWriter(out, model.codebook_size, meta, row_group_size)
    try:
        for flipped in (False, True) if flip else (False,):
            for i in tqdm(range(0, len(images), batch_size), desc=f"tokenize {split}", unit="batch",
                          leave=False):
                idx = torch.arange(i, min(i + batch_size, len(images)))
                x = images.tensor(idx).to(device)
                levels = None
                if flipped:
                    x = x.flip(-1)
                elif features is not None:
                    levels = [lv.to(device) for lv in features.batch(idx)]
                with torch.no_grad(), autocast(device):
                    ids = model.encode(x, levels)  # (B, N)
                rows = images.rows.iloc[i : i + len(idx)]
                writer.write(rows["image_id"], split, rows["label"], ids.cpu().numpy(), flipped)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.rows


@flow(name="tokenize")
def tokenize_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    params = load_params(params_file)
    p, layout = params.tokenize, Layout(Path(root))
    device = pick_device(p.device)
    model, digest = load_tokenizer(layout.tokenizer, params, device)
    meta = {"tokenizer_sha256": digest, "n_tokens": str(model.n_tokens),
            "tokenizer_kind": params.tokenizer.kind}

    out = layout.tokens
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start, files, images_done = time.perf_counter(), [], 0
    for split in p.splits:
        images = SplitImages(layout.prepared, split)
        use_cache = params.tokenizer.kind == "vfmtok" and split in params.extract_features.splits
        features = SplitFeatures(layout.features, images) if use_cache else None
        path = out / f"{split}.parquet"
        rows = tokenize_split(model, images, features, path, meta, p.flip_copies and split == "train",
                              p.batch_size, p.row_group_size, device)
        TokenFile(path).validate()  # what train_ar will read, checked once here too
        images_done += rows
        files.append({"file": path.name, "split": split, "rows": rows, "bytes": path.stat().st_size,
                      "sha256": artifacts.sha256_file(path)})
    seconds = time.perf_counter() - start
    artifacts.write_json(out / "manifest.json", {
        "files": files, "codebook_size": model.codebook_size, "n_tokens": model.n_tokens,
        "tokenizer_sha256": digest,
    })  # fmt: skip
    total_bytes = sum(f["bytes"] for f in files)
    report = {
        "rows": images_done,
        "tokens_per_image": model.n_tokens,
        "bytes_per_token": round(total_bytes / (images_done * model.n_tokens), 4),
        "images_per_s": round(images_done / seconds, 1),
        "seconds": round(seconds, 2),
    }
    artifacts.write_json(layout.reports / "tokenize.json", report)
    get_run_logger().info("tokenized %d images at %.1f images/s, %.3f bytes/token", images_done,
                          report["images_per_s"], report["bytes_per_token"])
    return report
