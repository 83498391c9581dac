"""What each group of metrics is computed from: one dataclass per group, built once by the
``evaluate`` stage (the expensive part: Inception features, reconstructions, backbone vectors,
probe fits) and handed to every metric that needs it (``pipeline/evaluation/metrics.py``).

A result that several metrics share (KID and precision/recall come from one call; usage and
perplexity from one histogram) is a cached property here, so it is computed once however many
metrics read it. The module imports neither torch nor numpy when imported, so the declarations
that name these classes stay cheap to read (``vfmtok-pipeline summary``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from pipeline.evaluation.measures import Reference
    from pipeline.layout import Layout
    from vfmtok.tokenizer import Tokenizer


@dataclass
class Run:
    """What was evaluated, on how much, and when the stage started (its ``time.perf_counter()``)."""

    tokenizer_kind: str
    tokens_per_image: int
    fid_reference: str  # what gFID is scored against (``Reference.name``)
    fid_resolution: int  # the size images are resized to before the Inception network
    fid_images: int
    fid_samples: int
    started: float


@dataclass
class SampleFeatures:
    """The samples' Inception pool3 features (and logits when the network has them) and the
    reference they are scored against."""

    reference: Reference
    features: np.ndarray  # (N, 2048)
    logits: np.ndarray | None  # (N, 1008), or None without a full Inception weights file
    extractor: str  # the feature extractor's name (``InceptionFeatures.name``)
    kid_subset_size: int

    @cached_property
    def distribution(self) -> dict[str, float]:
        """KID, its std and precision/recall keyed ``<metric>/<extractor>`` ({} when the reference
        has only statistics: they need its features)."""
        from vfmtok.fid import distribution_metrics

        if self.reference.features is None:
            return {}
        return distribution_metrics(self.reference.features, self.features, self.extractor,
                                    kid_subset_size=self.kid_subset_size)

    def distribution_metric(self, name: str) -> float | None:
        return self.distribution.get(f"{name}/{self.extractor}")


@dataclass
class Reconstructions:
    """The EMA tokenizer's reconstructions of every val image, the Inception features of those at
    the FID picks and of the val images there, and the val split's token ids."""

    originals: np.ndarray  # (N, H, W, 3) uint8
    reconstructions: np.ndarray  # (N, H, W, 3) uint8
    features: np.ndarray  # (fid_images, 2048): the picked reconstructions
    reference_features: np.ndarray  # (fid_images, 2048): the picked val images
    val_tokens: np.ndarray  # every row of the val token file
    codebook_size: int

    @cached_property
    def codebook(self) -> tuple[float, float]:
        """(share of codes used, perplexity) of the val tokens."""
        from vfmtok.metrics import codebook_usage

        return codebook_usage(self.val_tokens, self.codebook_size)

    @cached_property
    def error(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(mean signed error map, mean absolute error map, worst 8x8 block): ``error_map.png``
        draws the maps."""
        from vfmtok.metrics import error_bias

        return error_bias(self.originals, self.reconstructions)


@dataclass
class Readouts:
    """The images the ridge readouts are fit on (train) and scored on (val), and the vectors they
    read: each image's dequantized tokens and its frozen backbone levels, flattened."""

    train_images: np.ndarray  # (N_train, H, W, 3) uint8
    val_images: np.ndarray  # (N_val, H, W, 3) uint8
    train_tokens: np.ndarray  # (N_train, n_tokens * codebook_dim)
    val_tokens: np.ndarray
    train_backbone: np.ndarray  # (N_train, sum of C * H * W over the levels)
    val_backbone: np.ndarray


@dataclass
class Semantics:
    """The judge's view: a linear classifier fit on its pooled last level of train images, the
    same features of the val images and of the samples (with the FID picks of each), and what the
    linear probe of the tokens reads."""

    judge: str  # names the ``fd_{judge}`` key
    classifier: object  # ``vfmtok.metrics.fit_probe``'s fitted pipeline
    val_features: np.ndarray  # (N_val, C_judge)
    val_labels: np.ndarray
    val_pick: np.ndarray  # the val images FID-type metrics use
    sample_features: np.ndarray  # (N_samples, C_judge)
    sample_labels: np.ndarray  # the conditioning classes
    sample_pick: np.ndarray
    tokenizer: Tokenizer
    layout: Layout
    probe_train: int  # train rows the token probe fits on (0 = all)
    device: torch.device
