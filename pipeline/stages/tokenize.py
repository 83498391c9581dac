"""Stage ``tokenize``: the EMA tokenizer turns every prepared image into token ids, in Parquet.

Reads ``tokenize``, ``data/tokenizer``, ``data/prepared`` (and ``data/features`` for the vfmtok
kind); writes ``data/tokens`` (``pipeline/formats/tokens.py``) and ``reports/tokenize.json``
(bytes per token, images/s). Optional horizontal-flip copies are encoded through the backbone
(the cached features are of the unflipped images).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import retry_unless_user_error
from pipeline.formats import features, tokens
from pipeline.formats.prepared import SplitImages
from pipeline.layout import Layout
from pipeline.models.trained import load_tokenizer
from pipeline.orchestration.lazy_prefect import flow, get_run_logger, task
from pipeline.params import load_params
from vfmtok import distributed, files
from vfmtok.device import autocast
from vfmtok.images import from_uint8
from vfmtok.tokenizer import Tokenizer


def _encoder(model: Tokenizer, images: SplitImages, feats: features.SplitFeatures | None, flipped: bool,
             device: torch.device):
    """``encode(indices) -> (B, N) ids`` of the images (flipped: through the backbone, since the
    cached levels are of the unflipped images)."""

    def encode(idx: np.ndarray) -> np.ndarray:
        x = from_uint8(images.uint8(idx)).to(device)  # (B, 3, H, W)
        levels = None
        if flipped:
            x = x.flip(-1)
        elif feats is not None:
            levels = [lv.to(device) for lv in feats.batch(idx)]
        with torch.no_grad(), autocast(device):
            ids = model.encode(x, levels)  # (B, N)
        return ids.cpu().numpy().astype(tokens.numpy_type(model.codebook_size))

    return encode


@task(retries=2, retry_delay_seconds=1, retry_condition_fn=retry_unless_user_error)
def tokenize_split(
    model: Tokenizer, images: SplitImages, feats: features.SplitFeatures | None, out: Path,
    meta: dict[str, str], flip: bool, batch_size: int, row_group_size: int, device: torch.device,
) -> int:
    """Encode one split (and its flipped copies) into one Parquet file; returns rows written.

    Under torchrun every rank encodes its share of the fixed batches and rank 0 writes them in
    order, so the file is byte-identical whatever the number of ranks."""
    encoded = {flipped: distributed.map_batches(_encoder(model, images, feats, flipped, device), len(images),
                                                batch_size)
               for flipped in ((False, True) if flip else (False,))}
    if not distributed.is_main():
        return 0
    writer = tokens.TokenWriter(out, model.codebook_size, meta, row_group_size)
    try:
        for flipped, batches in encoded.items():
            for i, ids in zip(range(0, len(images), batch_size), batches, strict=True):
                rows = images.rows.iloc[i : i + len(ids)]
                writer.write(rows["image_id"], images.split, rows["label"], ids, flipped)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.rows


@flow(name="tokenize")
def tokenize_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    params = load_params(params_file)
    p, layout = params.tokenize, Layout(Path(root))
    device = distributed.init_from_env(p.device)  # torchrun: the fixed batches split across ranks
    model, digest = load_tokenizer(layout, params, device)
    meta = {"tokenizer_sha256": digest, "n_tokens": str(model.n_tokens),
            "tokenizer_kind": params.tokenizer.kind}

    if distributed.is_main():  # rank 0 alone owns the folder: ranks racing here crashed torchrun runs
        shutil.rmtree(layout.tokens, ignore_errors=True)
        layout.tokens.mkdir(parents=True)
    start, written, done = time.perf_counter(), [], 0
    for split in p.splits:
        images = SplitImages(layout.prepared, split)
        feats = features.for_split(layout.features, images, params.tokenizer.kind,
                                   params.extract_features.splits)
        path = tokens.split_file(layout.tokens, split)
        rows = tokenize_split(model, images, feats, path, meta, p.flip_copies and split == "train",
                              p.batch_size, p.row_group_size, device)
        if not distributed.is_main():
            continue
        tokens.TokenFile(path).validate()  # what train_ar will read, checked once here too
        done += rows
        written.append({"file": path.name, "split": split, "rows": rows, "bytes": path.stat().st_size,
                        "sha256": files.sha256_file(path)})
    seconds = time.perf_counter() - start
    if not distributed.is_main():
        return {}
    tokens.write_manifest(layout.tokens, written, model.codebook_size, model.n_tokens, digest)
    total_bytes = sum(f["bytes"] for f in written)
    report = {
        "rows": done,
        "tokens_per_image": model.n_tokens,
        "bytes_per_token": round(total_bytes / (done * model.n_tokens), 4),
        "images_per_s": round(done / seconds, 1),
        "seconds": round(seconds, 2),
    }
    files.write_json(layout.report("tokenize"), report)
    get_run_logger().info("tokenized %d images at %.1f images/s, %.3f bytes/token", done,
                          report["images_per_s"], report["bytes_per_token"])
    return report
