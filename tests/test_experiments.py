"""compare and claims read params and metrics of revisions and lay them out; balanced_subset picks
fair reference sets."""

from __future__ import annotations

import numpy as np

from pipeline import evaluation
from pipeline.experiments import claims, compare


def test_balanced_subset_takes_classes_in_turn():
    labels = np.array([0, 0, 0, 1, 2, 2, 1, 0])
    pick = evaluation.balanced_subset(labels, 5)
    assert pick.tolist() == [0, 1, 3, 4, 5]  # round 1: first of 0, 1, 2; round 2: second of 0, 2
    assert np.bincount(labels[evaluation.balanced_subset(labels, 6)]).tolist() == [2, 2, 2]
    assert evaluation.balanced_subset(labels, 0).tolist() == list(range(8))
    assert evaluation.balanced_subset(labels, 50).tolist() == list(range(8))


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
    assert "VFMTok reaches VQGAN baseline's final FD 30 at step 200 of 400 (2.00x fewer steps)" in text
    assert "VQGAN baseline reaches VFMTok's final FD 15 not within its 400 steps (its best: 30)" in text
    assert "VFMTok reaches VFMTok, random-init backbone's final FD 52 at step 100 of 400 (4.00x" in text
    assert "best of the sweep: 90 at CFG 1.5" in text
    assert (tmp_path / "reports" / "claims_convergence.png").stat().st_size > 1000
