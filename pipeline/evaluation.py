"""What ``evaluate`` measures, as plain functions over the pipeline's artifacts (the stage module
only orders them and writes the tables): fair reference subsets, cached Inception features of the
reference images, pooled backbone features and the linear probe of the tokens."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.formats import tokens
from pipeline.formats.prepared import SplitImages
from pipeline.layout import Layout
from vfmtok import files, inception
from vfmtok.backbones import FrozenBackbone
from vfmtok.images import from_uint8
from vfmtok.metrics import linear_probe
from vfmtok.runtime import autocast
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


def reference_features(fid: inception.InceptionFeatures, images: SplitImages, pick: np.ndarray,
                       layout: Layout) -> np.ndarray:
    """Inception features of the reference images, cached under ``.cache/`` by their content hashes
    (a changed image, subset or extractor is a new key)."""
    hashes = images.rows["content_hash"].to_numpy()[pick]
    key = files.sha256_bytes(("|".join(hashes) + fid.name).encode())[:20]
    path = layout.cache / "fid_reference" / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    feats = fid.features(images.uint8(pick))
    files.write_npy(path, feats)
    return feats


def pooled_backbone(backbone: FrozenBackbone, images: np.ndarray, device: torch.device,
                    batch: int = 128) -> np.ndarray:
    """Mean-pooled last (semantic) level of the frozen backbone: (N, C) features."""
    out = []
    for i in range(0, len(images), batch):
        with autocast(device):
            sem = backbone(from_uint8(images[i : i + batch]).to(device)).semantic
        out.append(sem.float().mean(dim=(2, 3)).cpu().numpy())
    return np.concatenate(out)


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
