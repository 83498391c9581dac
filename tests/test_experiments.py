"""compare, claims and rar-vs-raster read params and metrics of revisions and lay them out;
balanced_subset picks fair reference sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.evaluation import measures
from pipeline.experiments import claims, compare, rar_vs_raster
from pipeline.experiments.revisions import read_json
from pipeline.experiments.runs import run_experiments, run_from


def test_balanced_subset_takes_classes_in_turn():
    labels = np.array([0, 0, 0, 1, 2, 2, 1, 0])
    pick = measures.balanced_subset(labels, 5)
    assert pick.tolist() == [0, 1, 3, 4, 5]  # round 1: first of 0, 1, 2; round 2: second of 0, 2
    assert np.bincount(labels[measures.balanced_subset(labels, 6)]).tolist() == [2, 2, 2]
    assert measures.balanced_subset(labels, 0).tolist() == list(range(8))
    assert measures.balanced_subset(labels, 50).tolist() == list(range(8))


def test_compare_lists_changed_params_and_every_metric_with_its_delta(tmp_path, monkeypatch):
    revs = {
        "base": ({"tokenizer.kind": "vfmtok", "tokenizer.dim": 128}, {"m.json:psnr": 16.0, "m.json:kind": "a",
                                                                       "m.json:curve": [[1, 2.0]]}),
        "exp": ({"tokenizer.kind": "vqgan", "tokenizer.dim": 128}, {"m.json:psnr": 17.5, "m.json:kind": "b"}),
    }
    monkeypatch.setattr(compare, "read_rev", lambda rev, root: revs[rev])
    text = compare.compare("base", "exp", str(tmp_path)).read_text()
    assert "| tokenizer.kind | vfmtok | vqgan |" in text and "tokenizer.dim" not in text
    assert "| m.json:psnr | 16.0 | 17.5 | +1.5 |" in text and "| m.json:kind | a | b | changed |" in text
    assert "curve" not in text  # curves are for `dvc plots diff`
    assert (tmp_path / "reports" / "compare_base_vs_exp.md").is_file()


def _report(gfid, curve, **metrics):
    return {"metrics": {"tokens_per_image": 16, "gfid": gfid, **metrics},
            "train_ar": {"quality_curve": [[s, fd, 0.5] for s, fd in curve]}}


def test_claims_convergence_is_steps_to_the_other_runs_final_quality(tmp_path, monkeypatch):
    reports = {
        "claims-vfmtok": _report(100.0, [(100, 50.0), (200, 30.0), (300, 20.0), (400, 15.0)],
                                 codebook_usage=0.8),
        "claims-vqgan": _report(140.0, [(100, 60.0), (200, 45.0), (300, 35.0), (400, 30.0)],
                                codebook_usage=0.3),
        "claims-random": _report(180.0, [(100, 70.0), (200, 60.0), (300, 55.0), (400, 52.0)]),
        "claims-vfmtok-cfg1.5": _report(90.0, []), "claims-vfmtok-cfg2": _report(95.0, []),
        "claims-vfmtok-cfg3": _report(120.0, []),
    }
    monkeypatch.setattr(claims, "_reports", lambda rev, root: reports[rev])
    text = claims.claims(str(tmp_path)).read_text()
    assert "| codebook usage (val) | 0.8 | 0.3 | - |" in text
    # VFMTok reaches VQGAN's final FD (30) at step 200 of 400; VQGAN never reaches VFMTok's 15.
    assert "VFMTok reaches VQGAN baseline's final FD 30 at step 200 of 400 (speed-up 2.00x)" in text
    assert "VQGAN baseline reaches VFMTok's final FD 15 not within its 400 steps (its best: 30)" in text
    assert ("VFMTok reaches VFMTok, random-init backbone's final FD 52 at step 100 of 400 "
            "(speed-up 4.00x)") in text
    assert "best of the sweep: 90 at CFG 1.5" in text
    assert (tmp_path / "reports" / "claims_convergence.png").stat().st_size > 1000


def test_rar_vs_raster_table_checks_the_budget_and_lists_every_metric(tmp_path, monkeypatch):
    got = {
        "ar-GPT-Tiny": {"train_ar.params": 1_116_672, "train_ar.steps": 800, "train_ar.val_loss": 1.9,
                        "metrics.gfid": 250.0, "metrics.kid": 0.2, "sample.generator": "GPT-Tiny",
                        "train_ar.new_convergence_figure": 3.0, "sample.cfg_scale": 1.0},
        "ar-RAR-Tiny": {"train_ar.params": 1_097_984, "train_ar.steps": 800, "train_ar.val_loss": 2.0,
                        "metrics.gfid": 240.5, "metrics.kid": 0.2, "sample.generator": "RAR-Tiny",
                        "train_ar.new_convergence_figure": 2.5, "sample.cfg_scale": 1.0},
    }
    monkeypatch.setattr(rar_vs_raster, "_read", lambda rev, root: got[rev])
    text = rar_vs_raster.rar_vs_raster(str(tmp_path)).read_text()
    assert "RAR has -1.7% parameters (1,097,984 vs 1,116,672): an equal-size pair; steps equal" in text
    assert "| gFID (no CFG unless sample.cfg_scale says) | 250 | 240.5 |" in text
    assert "| `train_ar.new_convergence_figure` | 3 | 2.5 |" in text  # metrics added later show up
    assert "| `metrics.kid` | 0.2 | 0.2 |" not in text and "| KID | 0.2 | 0.2 |" in text
    assert "`sample.cfg_scale`" not in text  # equal settings are not metrics
    got["ar-RAR-Tiny"] |= {"train_ar.params": 2_000_000, "train_ar.steps": 400}
    text = rar_vs_raster.rar_vs_raster(str(tmp_path)).read_text()
    assert "NOT an equal-size pair; steps DIFFERENT (800 vs 400)" in text
    with pytest.raises(UserError, match="compares a GPT"):
        rar_vs_raster.rar_vs_raster(str(tmp_path), gpt="RAR-B", rar="RAR-L")


RUNS_DVC_YAML = """
stages:
  train:
    cmd: python train.py
    params: [t.n]
    outs:
      - model.txt:
          persist: true
  sample:
    cmd: python sample.py
    deps: [model.txt]
    params: [s.scale]
    metrics:
      - metrics.json:
          cache: false
"""
TRAIN = """import os, yaml
open("model.txt", "w").write(str(yaml.safe_load(open("params.yaml"))["t"]["n"]))
open(os.environ["TRAIN_COUNT"], "a").write("x")  # one x a training run
"""
SAMPLE = """import json, yaml
scale = yaml.safe_load(open("params.yaml"))["s"]["scale"]
json.dump({"model": open("model.txt").read(), "scale": scale}, open("metrics.json", "w"))
"""


@pytest.mark.slow
def test_runs_from_an_experiment_rerun_only_what_changed_and_leave_the_workspace(tmp_path, monkeypatch):
    """A CFG-sweep-like run from an experiment's results: the persisted (so never run-cached)
    training stage is not re-run, the workspace ends as committed, and a dirty one is refused."""
    root, count = tmp_path / "proj", tmp_path / "train_runs"
    root.mkdir()
    for name, text in {"dvc.yaml": RUNS_DVC_YAML, "train.py": TRAIN, "sample.py": SAMPLE}.items():
        (root / name).write_text(text)
    (root / "params.yaml").write_text("t:\n  n: 1\ns:\n  scale: 1.0\n")
    monkeypatch.setenv("TRAIN_COUNT", str(count))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # no shared API: no stage uses one

    def sh(*cmd: str) -> str:
        return subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True).stdout

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh("dvc", "repro", "-q")
    sh("git", "add", "-A")
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    committed = {f: (root / f).read_bytes() for f in ("params.yaml", "dvc.lock", "dvc.yaml")}
    run_experiments(root, [("base", ["t.n=2"])])
    assert count.read_text() == "xx"  # the workspace's repro, then the base experiment's
    run_from(root, [("swp", ["s.scale=3.0"])], base="base")
    assert count.read_text() == "xx", "training must come from the base's results, not re-run"
    assert read_json("swp", "metrics.json", str(root)) == {"model": "2", "scale": 3.0}
    assert json.loads((root / "metrics.json").read_text()) == {"model": "1", "scale": 1.0}
    assert {f: (root / f).read_bytes() for f in committed} == committed
    assert sh("git", "status", "--porcelain", "--untracked-files=no") == ""

    (root / "params.yaml").write_text("t:\n  n: 5\ns:\n  scale: 1.0\n")
    with pytest.raises(UserError, match="uncommitted changes"):
        run_from(root, [("swp2", ["s.scale=2.0"])], base="base")
