"""Sample quality during AR training: how the paper measures convergence, in miniature.

Every ``train_ar.quality_every`` steps the generator draws a fixed set of samples (the same labels
and seed each time), the tokenizer decodes them, and a frozen *judge* network (the ``judge``
params section: the same for every run compared, e.g. the pretrained backbone even when the
tokenizer's own backbone is random-init) scores them: the Frechet distance of the samples' pooled
judge features to the val images' (lower is better) and the share of samples its linear
classifier assigns to their conditioning class. Cheap enough to run a dozen times per training
run; gFID at the end comes from ``evaluate``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.evaluation import measures
from pipeline.formats.prepared import SplitImages
from vfmtok.backbones import FrozenBackbone
from vfmtok.device import autocast
from vfmtok.fid import fid_from_features
from vfmtok.images import to_uint8
from vfmtok.metrics import fit_probe
from vfmtok.sampling import generate, sample_seeds
from vfmtok.tokenizer import Tokenizer


class SampleQuality:
    """``quality(model) -> {"fd": ..., "class_acc": ...}`` for ``vfmtok.generator_training.train_ar``."""

    def __init__(self, tokenizer: Tokenizer, judge: FrozenBackbone, train: SplitImages, val: SplitImages,
                 num_classes: int, per_class: int, probe_train: int, seed: int, batch_size: int,
                 device: torch.device):
        self.tokenizer, self.judge, self.device = tokenizer, judge, device
        self.seed, self.batch_size = seed, batch_size
        self.labels = torch.arange(num_classes).repeat_interleave(per_class)  # (C * per_class,)
        pick = measures.balanced_subset(train.labels, probe_train)
        self.classifier = fit_probe(self._pooled(train.uint8(pick)), train.labels[pick])
        self.reference = self._pooled(val.uint8(np.arange(len(val))))  # (N_val, C_judge)

    def _pooled(self, images: np.ndarray) -> np.ndarray:
        return measures.pooled_backbone(self.judge, images, self.device)

    @torch.no_grad()
    def samples(self, model: nn.Module) -> np.ndarray:
        """The fixed sample set, (N, H, W, 3) uint8: same labels, same seed, every call."""
        out = []
        for i in range(0, len(self.labels), self.batch_size):
            labels = self.labels[i : i + self.batch_size].to(self.device)
            seeds = sample_seeds(self.seed, i, len(labels))  # one per sample: batching does not matter
            with autocast(self.device):
                ids = generate(model, labels, model.config.n_tokens, seeds=seeds)
                out.append(to_uint8(self.tokenizer.decode(ids)))
        return np.concatenate(out)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        pooled = self._pooled(self.samples(model))
        return {
            "fd": round(fid_from_features(self.reference, pooled), 3),
            "class_acc": round(float((self.classifier.predict(pooled) == self.labels.numpy()).mean()), 4),
        }
