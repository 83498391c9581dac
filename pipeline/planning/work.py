"""How much work each stage of a params file does, in the unit its benchmark rate is measured in.

Torch-free and data-free: the image counts come from the source's published sizes
(:data:`SOURCE_SIZES`) and the ``max_per_class_*`` caps, so a plan is made for a machine that has
not seen the data yet. An ``imagefolder`` source's size is unknown until it is listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.params import Params

# source -> (train images, val images, classes), as published
SOURCE_SIZES = {"fashion_mnist": (60_000, 10_000, 10), "imagenet": (1_281_167, 50_000, 1000)}


@dataclass(frozen=True)
class Work:
    stage: str
    amount: float | None  # in ``unit``; None: no benchmark times it, or the data's size is unknown
    unit: str  # "images", "tokens", "samples"
    text: str  # what it is, for people: "1,140 steps x 8 images"
    cached: float = 0.0  # of ``amount``: images whose backbone levels come from the feature cache


def dag_stage_names(root: Path) -> list[str]:
    """The stages of ``dvc.yaml``, in its order (the one source of the DAG; read as plain YAML,
    as DVC itself is slow to import)."""
    return list((yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {}))


def split_sizes(params: Params) -> dict[str, int] | None:
    """{"train": images, "val": images} after the ``max_per_class_*`` caps; None if unknown."""
    p = params.prepare
    if p.source not in SOURCE_SIZES:
        return None
    train, val, classes = SOURCE_SIZES[p.source]
    cap = {"train": p.max_per_class_train, "val": p.max_per_class_val}
    full = {"train": train, "val": val}
    return {s: min(full[s], cap[s] * classes) if cap[s] else full[s] for s in full}


def num_classes(params: Params) -> int | None:
    return SOURCE_SIZES[params.prepare.source][2] if params.prepare.source in SOURCE_SIZES else None


def stage_work(params: Params) -> dict[str, Work]:
    """{stage: its work} for the stages a benchmark rate can time; the others (listing, preparing
    and evaluating: I/O and metrics) have no entry."""
    sizes = split_sizes(params)

    def images(splits: list[str], flip: bool = False) -> float | None:
        if sizes is None:
            return None
        return float(sum(sizes[s] * (2 if flip and s == "train" else 1) for s in splits))

    t, a, s = params.train_tokenizer, params.train_ar, params.sample
    n_tok, classes = params.tokenizer.n_tokens, num_classes(params)
    cfg = s.cfg_scale != 1.0  # guidance runs every row twice: conditional and unconditional
    samples = None if classes is None else float(s.per_class * classes * (2 if cfg else 1))
    flip = params.tokenize.flip_copies
    # tokenize reads the extracted levels of the unflipped images of the splits that have them
    cached = images([s for s in params.tokenize.splits if s in params.extract_features.splits])
    cached = (cached or 0.0) if params.tokenizer.kind == "vfmtok" else 0.0
    return {w.stage: w for w in [
        Work("extract_features", images(params.extract_features.splits), "images",
             f"{'+'.join(params.extract_features.splits)} images"),
        Work("train_tokenizer", float(t.steps * t.batch_size), "images",
             f"{t.steps:,} steps x {t.batch_size} images"),
        Work("tokenize", images(params.tokenize.splits, flip), "images",
             f"{'+'.join(params.tokenize.splits)} images{' (+ flipped train)' if flip else ''}", cached),
        Work("train_ar", float(a.steps * a.batch_size * n_tok), "tokens",
             f"{a.steps:,} steps x {a.batch_size} x {n_tok} tokens"),
        Work("sample", samples, "samples",
             f"{s.per_class} a class x {classes or '?'} classes{' x 2 (guidance)' if cfg else ''}"),
    ]}  # fmt: skip
