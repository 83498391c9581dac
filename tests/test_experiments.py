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


def _study(seeds: int = 3) -> dict[str, dict]:
    """Synthetic runs with known effects: VFMTok's probe accuracy 0.60 (+-0.01) against VQGAN's 0.40
    and the random backbone's 0.50, the same gFID for all three (within noise), VFMTok reaching
    FD 30 at step 300 (its mean 20 there), VQGAN never reaching 15."""
    rng = np.random.default_rng(7)
    out = {}
    for s in range(seeds):
        def noise(scale=1.0):
            return float(rng.normal(0, scale))
        out[f"claims-vfmtok-seed{s}"] = _report(100 + noise(3), [(100, 50.0 + noise()), (200, 30.0 + noise()),
                                                                  (300, 20 + noise()), (400, 15.0 + noise())],
                                                linear_probe_acc=0.60 + noise(0.01), codebook_usage=0.8)
        out[f"claims-vqgan-seed{s}"] = _report(100 + noise(3), [(100, 60.0 + noise()), (200, 45.0 + noise()),
                                                                 (300, 35 + noise()), (400, 30.0 + noise())],
                                               linear_probe_acc=0.40 + noise(0.01), codebook_usage=0.3)
        out[f"claims-random-seed{s}"] = _report(100 + noise(3), [(100, 70.0), (200, 60.0), (300, 55.0),
                                                                  (400, 52.0 + noise())],
                                                linear_probe_acc=0.50 + noise(0.01))
        out[f"claims-vfmtok-cfg1.5-seed{s}"] = _report(130 + noise(3), [])
    return out


def test_claims_gives_spreads_intervals_and_verdicts_by_its_rule(tmp_path, monkeypatch):
    reports = _study()
    monkeypatch.setattr(claims, "existing", lambda root: set(reports) - {"claims-vqgan-seed2"})
    monkeypatch.setattr(claims, "_reports", lambda rev, root: reports[rev])
    text = claims.claims(str(tmp_path), seeds=3).read_text()
    assert ("Seeds measured: VFMTok 3, VQGAN baseline 2, VFMTok, random-init backbone 3, VFMTok, CFG 1.5 3"
            in text)
    probe = [ln for ln in text.splitlines() if ln.startswith("| Foundation-model features make better tokens")
             and "linear probe" in ln]
    assert len(probe) == 1 and probe[0].endswith("| supported |"), probe
    gfid = [ln for ln in text.splitlines() if "gFID" in ln and ln.startswith("| Foundation")]
    assert gfid[0].endswith("| not resolved at this scale |"), gfid  # the same gFID for both
    no_cfg = [ln for ln in text.splitlines() if ln.startswith("| Good without CFG")]
    assert no_cfg[0].endswith("| supported |")  # 100 against 130
    assert "VFMTok reaches VQGAN baseline's final mean FD" in text and "at step 300 of 400" in text
    probe_row = next(ln for ln in text.splitlines()
                     if ln.startswith("| linear probe accuracy of the tokens |"))
    assert probe_row.split(" | ")[1].startswith("0.59") and probe_row.count(" ± ") == 3
    assert (tmp_path / "reports" / "claims_convergence.png").stat().st_size > 1000


def test_the_readme_block_is_the_reports_verdict_table(tmp_path, monkeypatch):
    from pipeline.reporting.doc_renderers import ReportError, claims_verdicts

    reports = _study()
    monkeypatch.setattr(claims, "existing", lambda root: set(reports))
    monkeypatch.setattr(claims, "_reports", lambda rev, root: reports[rev])
    claims.claims(str(tmp_path), seeds=3)
    block = claims_verdicts(tmp_path / "reports").splitlines()
    assert block[0].startswith("A claim says configuration A beats B") and block[2].startswith("| claim |")
    rows = [ln for ln in block if ln.startswith("| Good without CFG")]
    assert len(rows) == 1 and rows[0].endswith("| **supported** |")
    assert len([ln for ln in block if ln.startswith("| ") and "**" in ln]) == 12  # 6 + 5 + 1 comparisons
    (tmp_path / "reports" / "claims.md").write_text("# The paper's claims\n\n| old | table |\n")
    with pytest.raises(ReportError, match="no '## Verdicts' section"):
        claims_verdicts(tmp_path / "reports")


def test_claims_runs_only_the_experiments_it_does_not_hold(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(claims, "existing", lambda root: {"claims-vfmtok-seed0", "claims-vqgan-seed0",
                                                          "claims-vfmtok-cfg1.5-seed0"})
    monkeypatch.setattr(claims, "run_experiments", lambda root, runs, profile: ran.extend(runs))
    monkeypatch.setattr(claims, "run_from", lambda root, runs, base: ran.extend((n, base) for n, _ in runs))
    claims.run_study(tmp_path, 2, "claims")
    assert [r[0] for r in ran] == ["claims-random-seed0", "claims-vfmtok-seed1", "claims-vqgan-seed1",
                                   "claims-random-seed1", "claims-vfmtok-cfg1.5-seed1"]
    assert ran[1][1][-3:] == ["train_tokenizer.seed=1", "train_ar.seed=1", "sample.seed=1"]
    assert ran[-1] == ("claims-vfmtok-cfg1.5-seed1", "claims-vfmtok-seed1")


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
