"""What ``evaluate``'s metrics are computed from, as plain functions over the pipeline's artifacts
(the metrics themselves are declared in ``pipeline/evaluation/metrics.py``): fair reference
subsets, cached Inception features of the reference images, pooled backbone features, the linear
probe of the tokens and the vectors the ridge readouts read (tokens, backbone levels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.formats import features, reference_batch, tokens
from pipeline.formats.prepared import SplitImages
from pipeline.layout import Layout
from pipeline.params import Params
from vfmtok import distributed, files, inception
from vfmtok.backbones import FrozenBackbone, build_backbone
from vfmtok.device import autocast
from vfmtok.fid import feature_stats
from vfmtok.images import from_uint8, resize_uint8
from vfmtok.metrics import linear_probe
from vfmtok.tokenizer import Tokenizer


def balanced_subset(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` items (0 = all) taking classes in turn, in order: a fair reference set.

    The k-th item of every class comes before the (k+1)-th of any; within a round, by position.
    """
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.sort(np.lexsort((np.arange(len(labels)), rank))[:n])


@dataclass
class Reference:
    """What gFID is scored against: pool3 statistics, and the features themselves when known (KID
    and precision/recall need them; an ADM batch with only ``mu``/``sigma`` gives FID alone)."""

    name: str  # where it comes from, for the metrics table
    mu: np.ndarray  # (2048,)
    sigma: np.ndarray  # (2048, 2048)
    features: np.ndarray | None  # (N, 2048)


def cached_features(fid: inception.InceptionFeatures, images: np.ndarray, key: str,
                    layout: Layout) -> np.ndarray | None:
    """Inception features of ``images``, cached under ``.cache/`` by ``key`` (content hashes, size,
    extractor: a changed image, subset, resize or network is a new key). Under torchrun the ranks
    share the work and rank 0 gets the features (None on the others); every rank looks at the
    cache before any writes it, so all take the same branch."""
    path = layout.cache / "fid_reference" / f"{files.sha256_bytes((key + fid.name).encode())[:20]}.npy"
    if path.is_file():
        return np.load(path) if distributed.is_main() else None
    feats = inception_features(fid, images, split=True)
    if feats is not None:
        files.write_npy(path, feats)
    return feats


def val_features(fid: inception.InceptionFeatures, images: SplitImages, pick: np.ndarray, resolution: int,
                 layout: Layout) -> np.ndarray:
    """Features of the val images at ``pick``, at the evaluation resolution (0: as prepared)."""
    size = resolution or images.resolution
    key = "|".join(images.rows["content_hash"].to_numpy()[pick]) + f"|{size}"
    return cached_features(fid, resize_uint8(images.uint8(pick), size), key, layout)


def reference(fid: inception.InceptionFeatures, npz_path: str, resolution: int,
              val_feats: np.ndarray | None, layout: Layout) -> Reference | None:
    """The ADM batch of ``npz_path`` (its ``mu``/``sigma`` as given, its ``arr_0`` through the same
    network, resized to ``resolution``), or else the val images' own features (None off rank 0)."""
    batch = reference_batch.read(npz_path) if npz_path else None
    feats = None
    if batch is not None and batch.images is not None:
        images = resize_uint8(batch.images, resolution) if resolution else batch.images
        feats = cached_features(fid, images, f"{files.sha256_file(batch.path)}|{images.shape[1]}", layout)
    if not distributed.is_main():
        return None
    if batch is None:
        return Reference("the val images above", *feature_stats(val_feats), val_feats)
    mu, sigma = (batch.mu, batch.sigma) if batch.mu is not None else feature_stats(feats)
    source = "mu/sigma" if batch.mu is not None else "arr_0"
    return Reference(f"{batch.path.name} ({source})", mu, sigma, feats)


def pooled_backbone(backbone: FrozenBackbone, images: np.ndarray, device: torch.device,
                    batch: int = 128, split: bool = False) -> np.ndarray | None:
    """Mean-pooled last (semantic) level of the frozen backbone: (N, C) features. ``split``: the
    batches shared across torchrun ranks, the result on rank 0 (None on the others)."""

    def one(idx: np.ndarray) -> np.ndarray:
        with autocast(device):
            sem = backbone(from_uint8(images[idx]).to(device)).semantic
        return sem.float().mean(dim=(2, 3)).cpu().numpy()

    return _batched(one, len(images), batch, split)


def inception_features(fid: inception.InceptionFeatures, images: np.ndarray, split: bool = False,
                       batch: int = 200) -> np.ndarray | None:
    """(N, 2048) pool3 features; ``split`` as in :func:`pooled_backbone`."""
    return _batched(lambda idx: fid.features(images[idx]), len(images), batch, split)


def _batched(fn, n: int, batch: int, split: bool) -> np.ndarray | None:
    parts = (distributed.map_batches(fn, n, batch) if split
             else [fn(np.arange(i, min(i + batch, n))) for i in range(0, n, batch)])
    return None if parts is None else np.concatenate(parts)


def pooled_tokens(tokenizer: Tokenizer, file: tokens.TokenFile, limit: int,
                  device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Each image as the mean of its tokens' dequantized (unit) code vectors, with its label, for
    the first ``limit`` rows (0 = all)."""
    xs, ys, seen = [], [], 0
    for ids, labels in file.iter_row_groups():
        with torch.no_grad():
            f = tokenizer.token_features(torch.from_numpy(ids).to(device)).float().mean(1)  # (R, d)
        xs.append(f.cpu().numpy())
        ys.append(labels)
        seen += len(ids)
        if limit and seen >= limit:
            break
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x[:limit], y[:limit]) if limit else (x, y)


def token_probe(tokenizer: Tokenizer, layout: Layout, probe_train: int, device: torch.device) -> float:
    """Linear probe of the tokens: pooled code vectors (:func:`pooled_tokens`), StandardScaler +
    multinomial logistic regression (C=1, lbfgs, 1000 iters) fit on up to ``probe_train`` train
    rows, accuracy on every val row."""
    tx, ty = pooled_tokens(tokenizer, tokens.TokenFile(tokens.split_file(layout.tokens, "train")),
                           probe_train, device)
    vx, vy = pooled_tokens(tokenizer, tokens.TokenFile(tokens.split_file(layout.tokens, "val")), 0, device)
    return linear_probe(tx, ty, vx, vy, seed=0)


def token_vectors(tokenizer: Tokenizer, layout: Layout, split: str, images: SplitImages,
                  pick: np.ndarray, device: torch.device) -> np.ndarray:
    """The dequantized tokens of the images at ``pick`` (unflipped rows of the split's token file,
    matched by image id), each image's code vectors concatenated: (N, n_tokens * codebook_dim)."""
    file = tokens.TokenFile(tokens.split_file(layout.tokens, split))
    wanted = list(images.rows["image_id"].to_numpy()[pick])
    where = {image_id: i for i, image_id in enumerate(wanted)}
    out: list[np.ndarray | None] = [None] * len(wanted)
    for g in range(file.num_row_groups):
        ids, _, image_ids = file.read_row_group(g)
        for row, (image_id, flip) in enumerate(zip(image_ids, file.flipped(g), strict=True)):
            if not flip and image_id in where:
                out[where[image_id]] = ids[row]
    missing = [wanted[i] for i, v in enumerate(out) if v is None]
    if missing:
        raise tokens.TokenFileError(f"{file.path}: no tokens for image {missing[0]!r}")
    with torch.no_grad():
        vecs = tokenizer.token_features(torch.from_numpy(np.stack(out)).to(device))  # (N, T, d)
    return vecs.flatten(1).float().cpu().numpy()


def backbone_vectors(params: Params, layout: Layout, images: SplitImages, pick: np.ndarray,
                     device: torch.device, batch: int = 128) -> np.ndarray:
    """The tokenizer's frozen backbone levels of the images at ``pick``, flattened and concatenated:
    (N, sum_l C_l * H_l * W_l). From the cached features when the split was extracted."""
    if images.split in params.extract_features.splits:
        cached = features.SplitFeatures(layout.features, images)
        return np.concatenate([lv.flatten(1).numpy() for lv in cached.batch(pick)], axis=1)
    backbone = build_backbone(params.backbone).to(device)
    out = []
    for i in range(0, len(pick), batch):
        with autocast(device):
            levels = backbone(from_uint8(images.uint8(pick[i : i + batch])).to(device)).levels
        out.append(np.concatenate([lv.flatten(1).cpu().numpy() for lv in levels], axis=1))
    return np.concatenate(out)
