"""One tokenizer configuration on the current checkout's data: train it, then score it the way
``evaluate`` does. The table of docs/demo-tokenizer-study.md was made this way.

    .venv/bin/python benchmarks/tokenizer_ablation.py NAME [KEY=VALUE ...] [--threads 1]
    .venv/bin/python benchmarks/tokenizer_ablation.py skip tokenizer.dec_slot_skip=true \\
        train_tokenizer.steps=1260 train_tokenizer.batch_size=8 train_tokenizer.warmup_steps=150

KEY is a dotted params key, VALUE is parsed as YAML. The checkout's ``data/prepared`` and
``data/features`` (from ``dvc repro extract_features``) are linked into ``/tmp/vfmtok-ablation/NAME``
with params.yaml plus the overrides; there ``python -m pipeline.stage train_tokenizer`` runs
folded (no Prefect), and the EMA tokenizer it saves is scored on the val split: PSNR, codebook
usage and perplexity, ``error_bias_max`` and ``token_linear_psnr`` (a ridge readout of the
dequantized tokens of ``evaluate.probe_train`` train images). One JSON line is printed and written
to ``result.json`` there. ``--threads 1`` lets two runs share a 2-core machine side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_params(folder: Path, overrides: list[str]) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"error: override {item!r} is not KEY=VALUE")
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            if not isinstance(node.get(part), dict):
                sys.exit(f"error: params.yaml has no section {key.rsplit('.', 1)[0]!r}")
            node = node[part]
        if leaf not in node:
            sys.exit(f"error: params.yaml has no key {key!r}")
        node[leaf] = yaml.safe_load(value)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def score(folder: Path) -> dict:
    """The evaluate-style figures of the tokenizer saved in ``folder/data/tokenizer``."""
    import numpy as np
    import torch

    from pipeline.evaluation.reconstruction import reconstruct
    from pipeline.formats import features
    from pipeline.formats.prepared import SplitImages
    from pipeline.params import load_params
    from vfmtok.metrics import batch_psnr, codebook_usage, error_bias, linear_readout_psnr
    from vfmtok.tokenizer import Tokenizer

    params, data, cpu = load_params(str(folder / "params.yaml")), folder / "data", torch.device("cpu")
    model = Tokenizer.from_pretrained(data / "tokenizer")
    splits = {s: SplitImages(data / "prepared", s) for s in ("train", "val")}
    feats = {s: features.for_split(data / "features", im, params.tokenizer.kind, ["train", "val"])
             for s, im in splits.items()}
    orig, recon, ids = reconstruct(model, splits["val"], feats["val"], 100, cpu)
    n = params.evaluate.probe_train
    _, _, train_ids = reconstruct(model, splits["train"], feats["train"], 100, cpu, limit=n)
    with torch.no_grad():
        vectors = [model.token_features(torch.as_tensor(i)).flatten(1).numpy() for i in (train_ids, ids)]
    linear, _ = linear_readout_psnr(vectors[0], splits["train"].uint8(np.arange(len(train_ids))),
                                    vectors[1], orig)
    usage, perplexity = codebook_usage(ids, model.codebook_size)
    report = json.loads((folder / "reports" / "train_tokenizer.json").read_text())
    return {"psnr": round(batch_psnr(orig, recon, data_range=255), 3), "usage": round(usage, 4),
            "perplexity": round(perplexity, 1), "error_bias_max": round(error_bias(orig, recon)[2], 2),
            "token_linear_psnr": round(linear, 3), "train_seconds": report["train_seconds"],
            "train_images_per_s": report["train_images_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("overrides", nargs="*", help="dotted params keys: KEY=VALUE")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    folder = Path("/tmp/vfmtok-ablation") / args.name
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "data").mkdir(parents=True)
    for part in ("prepared", "features"):
        if not (REPO / "data" / part).is_dir():
            sys.exit(f"error: {REPO / 'data' / part} is missing: run `dvc repro extract_features` first")
        (folder / "data" / part).symlink_to(REPO / "data" / part)
    write_params(folder, args.overrides)
    env = dict(os.environ, VFMTOK_FOLDED="1", HF_HUB_OFFLINE="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with open(folder / "train.log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "pipeline.stage", "train_tokenizer"], cwd=folder,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"error: train_tokenizer failed (exit {done.returncode}): see {folder / 'train.log'}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = {"name": args.name, "overrides": args.overrides, **score(folder)}
    (folder / "result.json").write_text(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
