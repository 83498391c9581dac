"""The metric declarations drive what ``evaluate`` writes: every key it wrote is declared, in the
declared order, with its how-text in the Markdown table; each group computes exactly its metrics
from its inputs; a new declaration is a new row."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.evaluation import measures, metrics
from pipeline.evaluation.inputs import Readouts, Reconstructions, Run, SampleFeatures, Semantics
from pipeline.layout import Layout
from pipeline.params import load_params
from pipeline.reporting.metrics_table import write_metrics
from tests.conftest import REPO
from vfmtok.fid import fid_from_features
from vfmtok.metrics import batch_psnr

# Descriptive fields whose table row has no how-text: the header line or the key says it all.
NO_HOW = {"tokenizer_kind", "tokens_per_image", "kid_std", "fid_images", "fid_samples", "seconds"}


def _run(**changes) -> Run:
    run = Run(tokenizer_kind="vfmtok", tokens_per_image=64, fid_reference="the val images above",
              fid_resolution=64, fid_images=250, fid_samples=250, started=0.0)
    return dataclasses.replace(run, **changes)


def test_every_key_of_the_committed_report_is_declared_in_table_order_with_its_how():
    written = json.loads((REPO / "reports" / "metrics.json").read_text())
    md = (REPO / "reports" / "metrics.md").read_text().splitlines()
    header = "| metric | value | how |"
    rows = [line[2:-2].split(" | ", 2) for line in md if line.startswith("| ") and line != header]
    assert [key for key, _, _ in rows] == list(metrics.in_table_order(written))  # every key, in order
    for key, _, how in rows:
        assert how == metrics.declared(key).how and bool(how) == (key not in NO_HOW), key


def test_a_declared_metric_is_computed_and_becomes_a_row_of_every_table(tmp_path, monkeypatch):
    answer = metrics.Metric("answer", "what a new metric's row says", Run, lambda r: r.fid_images / 7, 2)
    monkeypatch.setattr(metrics, "METRICS", (*metrics.METRICS[:2], answer, *metrics.METRICS[2:]))
    values = metrics.in_table_order(metrics.compute(_run(started=1e9)))
    assert list(values)[:3] == ["tokenizer_kind", "tokens_per_image", "answer"] and values["answer"] == 35.71
    layout = Layout(tmp_path)
    write_metrics(layout, load_params(REPO / "params.yaml"), values, extractor="x", judge="j")
    assert "| answer | 35.71 | what a new metric's row says |" in layout.metrics_table("md").read_text()
    assert "answer,35.71" in layout.metrics_table("csv").read_text().splitlines()
    assert json.loads(layout.metrics_table("json").read_text())["answer"] == 35.71
    with pytest.raises(KeyError, match="'undeclared' is not declared"):
        metrics.in_table_order(values, {"undeclared": 1})


def test_reconstruction_metrics_come_from_the_reconstructions():
    rng = np.random.default_rng(0)
    orig = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    recon = np.clip(orig.astype(int) + 3, 0, 255).astype(np.uint8)  # the same error everywhere
    feats, ref = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    tokens = np.array([[0, 1], [1, 2]])
    values = metrics.compute(Reconstructions(orig, recon, feats, ref, tokens, codebook_size=8))
    assert list(values) == ["rfid", "psnr", "ssim", "error_bias_max", "codebook_usage", "codebook_perplexity"]
    assert values["rfid"] == round(fid_from_features(ref, feats), 3)
    assert values["psnr"] == round(batch_psnr(orig, recon, data_range=255), 3)
    assert 2.5 < values["error_bias_max"] <= 3 and values["codebook_usage"] == round(3 / 8, 4)


def test_sample_metrics_without_reference_features_are_fid_alone():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(12, 4)), rng.normal(1.0, size=(12, 4))
    stats_only = measures.Reference("stats", real.mean(0), np.cov(real, rowvar=False), None)
    values = metrics.compute(SampleFeatures(stats_only, fake, None, "net", kid_subset_size=6))
    assert values == {"gfid": values["gfid"], "kid": None, "kid_std": None, "precision": None,
                      "recall": None, "inception_score": None, "sfid": None}
    assert values["gfid"] == round(fid_from_features(real, fake), 3)
    with_features = dataclasses.replace(stats_only, features=real)
    full = metrics.compute(SampleFeatures(with_features, fake, None, "net", kid_subset_size=6))
    assert full["gfid"] == values["gfid"] and full["kid"] > 0 and 0 <= full["recall"] <= 1


def test_readouts_and_the_judge_name_their_keys(monkeypatch):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    x = images.reshape(6, -1).astype(np.float64)
    noise = rng.normal(size=(6, 5))
    readouts = metrics.compute(Readouts(images, images, x, x, noise, noise))  # pixels, and noise
    assert list(readouts) == ["token_linear_psnr", "backbone_linear_psnr", "readout_train_images"]
    assert readouts["token_linear_psnr"] > readouts["backbone_linear_psnr"]
    assert readouts["readout_train_images"] == 6

    class Nearest:  # predicts each feature row's first column as its class
        def predict(self, f: np.ndarray) -> np.ndarray:
            return f[:, 0].astype(int)

    monkeypatch.setattr(measures, "token_probe", lambda *args: 0.5)
    feats = np.stack([np.arange(8) % 2, *rng.normal(size=(2, 8))], axis=1)
    sem = Semantics(judge="lite", classifier=Nearest(), val_features=feats, val_labels=np.arange(8) % 2,
                    val_pick=np.arange(8), sample_features=feats, sample_labels=np.zeros(8, int),
                    sample_pick=np.arange(8), tokenizer=None, layout=None, probe_train=0, device=None)
    assert metrics.compute(sem) == {"linear_probe_acc": 0.5, "sample_class_acc": 0.5, "val_class_acc": 1.0,
                                    "fd_lite": 0.0}
    assert metrics.declared("fd_lite").key == "fd_{judge}"
    with pytest.raises(KeyError):
        metrics.declared("fd_")


def test_headline_metrics_say_how_to_show_them_and_which_way_is_better():
    shown = {m.key: (m.label, m.fmt, m.better) for m in metrics.headline()}
    assert shown["gfid"] == ("gFID", ".1f", "lower") and shown["psnr"] == ("PSNR", ".2f", "higher")
    assert all(label and fmt and better for label, fmt, better in shown.values())
    loaded = subprocess.run([sys.executable, "-c", "import sys, pipeline.evaluation.metrics\n"
                             "print(' '.join(sys.modules))"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split()
    assert not {"torch", "numpy", "sklearn", "scipy"} & set(loaded)  # `summary` reads them cheaply
