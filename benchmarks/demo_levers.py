"""What each lever of the demo's generator buys: class accuracy and gFID of its samples per change.

    .venv/bin/python benchmarks/demo_levers.py                 # every variant (~30 min on 2 cores)
    .venv/bin/python benchmarks/demo_levers.py --only before,steps
    .venv/bin/python benchmarks/demo_levers.py --threads 1     # variants two at a time, one thread each

Needs a demo project whose pipeline has run (``bash scripts/demo.sh``: ``data/prepared``,
``data/features``, ``data/tokenizer``, ``data/tokens``). Each variant is a set of params overrides
on the project's ``params.yaml``. It runs in a scratch folder that links the project's data; there
the real stages run: ``train_tokenizer`` and ``tokenize`` (only for a variant that changes the
tokenizer), then ``train_ar``, ``sample``. The samples are scored as ``evaluate`` scores them
(:func:`score`: the judge's classifier on ``evaluate.probe_train`` balanced train images, gFID of
``evaluate.fid_images`` balanced picks against the val images), without the reconstruction
metrics, which a generator change leaves alone. A variant that differs from another only in its
``sample`` params reuses that one's generator. Rows go to ``reports/demo_levers.json`` in the
order below, with the generator's steps and the seconds ``train_ar`` took (under ``--threads``, and
whatever else loads the machine: the steps are the comparable cost); `vfmtok-pipeline docs` renders
them in docs/experiments.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OLD_GENERATOR = {  # the published recipe at 200 steps: where the levers start
    "train_ar.steps": 200, "train_ar.lr": 0.001, "train_ar.lr_schedule": "constant",
    "train_ar.warmup_steps": 20, "ar_model.class_dropout": 0.1, "ar_model.token_dropout": 0.1,
    "ar_model.resid_dropout": 0.1, "sample.temperature": 1.0, "sample.top_p": 1.0,
}


@dataclass
class Variant:
    name: str
    lever: str
    change: str
    overrides: dict = field(default_factory=dict)  # dotted params keys -> values, over OLD_GENERATOR


def _on_old(**changes) -> dict:
    return {**OLD_GENERATOR, **{k.replace("__", "."): v for k, v in changes.items()}}


RECIPE = dict(train_ar__lr=0.002, train_ar__lr_schedule="cosine", ar_model__token_dropout=0.0,
              ar_model__resid_dropout=0.0)
LONGER = dict(RECIPE, train_ar__steps=480, train_ar__warmup_steps=40)
SHARPER = dict(sample__temperature=0.8, sample__top_p=0.7)
DEMO = dict(LONGER, **SHARPER)
VARIANTS = [
    Variant("before", "-", "200 AR steps, lr 1e-3 constant, dropouts 0.1, temperature 1", _on_old()),
    Variant("sharper", "sampling", "temperature 0.8, top-p 0.7", _on_old(**SHARPER)),
    Variant("recipe", "AR recipe", "lr 2e-3 cosine, no token/residual dropout (200 steps)",
            _on_old(**RECIPE)),
    Variant("steps", "AR budget", "... and 480 steps (warm-up 40)", _on_old(**LONGER)),
    Variant("demo", "sampling", "... and temperature 0.8, top-p 0.7 (the demo)", _on_old(**DEMO)),
    Variant("no_class_dropout", "AR recipe", "the demo without class dropout (no CFG possible)",
            _on_old(**DEMO, ar_model__class_dropout=0.0)),
    Variant("cfg", "guidance", "the demo's generator, CFG 2.0 at temperature 1, top-p 1",
            _on_old(**LONGER, sample__cfg_scale=2.0)),
    Variant("tokens16", "token count", "the demo with 16 tokens (4x4 grid) instead of 64",
            _on_old(**DEMO, tokenizer__n_tokens=16, tokenizer__pixel_grid=4,
                    tokenizer__conv_mult=[1, 1, 2, 4, 4])),
]


def _set(params: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = params
    for key in path:
        node = node[key]
    if last not in node:
        raise KeyError(f"params.yaml has no {dotted}")
    node[last] = value


def _run(folder: Path, stage: str, threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(folder / f"{stage}.log", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "pipeline.stage", stage], cwd=folder, env=env,
                            stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"{folder}/{stage}.log: stage {stage} failed (exit {rc})")
    return time.perf_counter() - t0


def _scratch(project: Path, work: Path, name: str, overrides: dict, threads: int, linked: list[str]) -> Path:
    """A folder running the project's pipeline with ``overrides``: the project's data in ``linked``
    linked, its params with the overrides, the stages' ``dvc.yaml``."""
    folder = work / name
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for part in linked:
        link = folder / "data" / part
        if not link.exists():
            link.symlink_to(project / "data" / part)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in {**overrides, "launch.cpu_threads": threads}.items():
        _set(params, key, value)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / "dvc.yaml").write_text((project / "dvc.yaml").read_text())
    cache = folder / ".cache"
    if not cache.exists():
        (project / ".cache").mkdir(exist_ok=True)
        cache.symlink_to((project / ".cache").resolve())  # the Inception weights and val features
    return folder


_LOCKS: dict[str, threading.Lock] = {}


def _generator(project: Path, work: Path, variant: Variant, threads: int) -> tuple[Path, float]:
    """The folder holding the variant's trained generator (trained once per non-sample overrides)."""
    trained = {k: v for k, v in variant.overrides.items() if not k.startswith("sample.")}
    key = "g" + hashlib.sha256(json.dumps(trained, sort_keys=True).encode()).hexdigest()[:12]
    tokenizer = {k: v for k, v in trained.items() if k.startswith("tokenizer.")}
    linked = ["prepared", "features"] + ([] if tokenizer else ["tokenizer", "tokens"])
    folder = _scratch(project, work, key, trained, threads, linked)
    done = folder / "train_ar.done"
    with _LOCKS.setdefault(key, threading.Lock()):  # two variants of one generator: trained once
        if not done.is_file():
            if tokenizer:
                _run(folder, "train_tokenizer", threads)
                _run(folder, "tokenize", threads)
            done.write_text(f"{_run(folder, 'train_ar', threads):.1f}")
    return folder, float(done.read_text())


def score(folder: Path) -> dict:
    """``sample_class_acc`` and ``gfid`` of ``folder``'s samples, as ``evaluate`` computes them."""
    import torch

    from pipeline.evaluation import measures
    from pipeline.formats import samples
    from pipeline.formats.prepared import SplitImages
    from pipeline.layout import Layout
    from pipeline.params import load_params
    from vfmtok import inception
    from vfmtok.backbones import build_backbone
    from vfmtok.fid import fid_from_features
    from vfmtok.metrics import fit_probe

    params, layout = load_params(folder / "params.yaml"), Layout(folder)
    e, device = params.evaluate, torch.device("cpu")
    images, labels = samples.read(layout.samples)
    judge = build_backbone(params.judge)
    train, val = SplitImages(layout.prepared, "train"), SplitImages(layout.prepared, "val")
    t_pick = measures.balanced_subset(train.labels, e.probe_train)
    classifier = fit_probe(measures.pooled_backbone(judge, train.uint8(t_pick), device), train.labels[t_pick])
    accuracy = float((classifier.predict(measures.pooled_backbone(judge, images, device)) == labels).mean())
    fid = inception.InceptionFeatures(layout.cache, device=device)
    val_feats = measures.val_features(fid, val, measures.balanced_subset(val.labels, e.fid_images),
                                      e.resolution, layout)
    s_feats = measures.inception_features(fid, images[measures.balanced_subset(labels, e.fid_images)])
    return {"sample_class_acc": round(accuracy, 4), "gfid": round(fid_from_features(val_feats, s_feats), 3)}


def one(project: Path, work: Path, variant: Variant, threads: int) -> dict:
    trained, seconds = _generator(project, work, variant, threads)
    folder = _scratch(project, work, variant.name, variant.overrides, threads,
                      ["prepared", "features"])
    for part in ("tokenizer", "tokens", "generator"):
        link = folder / "data" / part
        if not link.exists():
            link.symlink_to(trained / "data" / part)
    _run(folder, "sample", threads)
    steps = variant.overrides.get("train_ar.steps", OLD_GENERATOR["train_ar.steps"])
    row = {"lever": variant.lever, "change": variant.change, "ar_steps": steps, **score(folder),
           "train_ar_seconds": round(seconds, 1)}
    print(json.dumps({"variant": variant.name, **row}), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, default=REPO, help="a demo project whose pipeline has run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/demo_levers"), help="scratch folders")
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads per stage; 1 runs two variants at once")
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "demo_levers.json")
    a = ap.parse_args()
    chosen = [v for v in VARIANTS if not a.only or v.name in a.only.split(",")]
    project = a.project.resolve()
    for part in ("prepared", "features", "tokenizer", "tokens"):
        if not (project / "data" / part).exists():
            raise SystemExit(f"{project / 'data' / part}: missing; run the demo pipeline in {project} first")
    with ThreadPoolExecutor(max_workers=2 if a.threads == 1 else 1) as pool:
        rows = list(pool.map(lambda v: one(project, a.work, v, a.threads), chosen))
    threads = f"{a.threads} thread{'' if a.threads == 1 else 's'} per stage"
    out = {"how": f"`benchmarks/demo_levers.py --threads {a.threads}` on the tokens of a demo run, "
                  f"{threads}; samples scored as evaluate scores them", "rows": rows}
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
