"""The meta-device footprints of the committed profiles' training stages, computed once and kept in
``footprints.json`` beside this module, so that ``plan`` answers without importing torch (its
import alone takes ~2 s on a 2-core machine). A configuration the file does not hold (an edited
profile, a ``--set``) is computed on the spot. ``vfmtok-pipeline plan --refresh`` rewrites the
file; a test recomputes every entry and fails when the model code has changed what they hold.

An entry's key is a hash of exactly what the footprint depends on: the generator's full config
for ``train_ar``; the tokenizer, backbone and loss settings for ``train_tokenizer``; and whether
the step runs in bf16 on a GPU or in fp32 on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pipeline.params import Params
from pipeline.planning.memory import Footprint
from pipeline.planning.work import num_classes
from vfmtok import files

FILE = Path(__file__).with_name("footprints.json")
TRAINING_STAGES = ("train_tokenizer", "train_ar")


def generator_config(params: Params):
    """The generator ``train_ar`` builds (its classes from the source's published count)."""
    return params.ar_model.model_config(params.tokenizer.codebook_size, params.tokenizer.n_tokens,
                                        num_classes(params) or 1000)


def _without_files(section) -> dict:
    """A config section's fields, less the weight-file paths (which do not change the memory)."""
    return {k: v for k, v in dataclasses.asdict(section).items()
            if not (k == "weights" or k.endswith("_weights") or k == "allow_random_init")}


def what(params: Params, stage: str, cuda: bool) -> dict:
    """Everything ``stage``'s footprint depends on (the key's preimage), JSON-able."""
    if stage == "train_ar":
        return {"stage": stage, "cuda": cuda, "generator": dataclasses.asdict(generator_config(params))}
    t = params.train_tokenizer
    return {"stage": stage, "cuda": cuda, "tokenizer": dataclasses.asdict(params.tokenizer),
            "backbone": _without_files(params.backbone), "loss": _without_files(t.loss),
            "augment": t.augment, "resolution": params.prepare.resolution}


def key(params: Params, stage: str, cuda: bool) -> str:
    return files.sha256_json(what(params, stage, cuda))[:16]


def label(params: Params, stage: str) -> str:
    if stage == "train_ar":
        tok = params.tokenizer
        return f"{params.ar_model.model}, {tok.n_tokens} tokens, codebook {tok.codebook_size}"
    return f"tokenizer over {params.backbone.model or params.backbone.kind} at {params.prepare.resolution} px"


def read(path: Path = FILE) -> dict[str, dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def compute(params: Params, stage: str, cuda: bool) -> Footprint:
    """The meta-device pass itself (imports torch and the models)."""
    if stage == "train_ar":
        from pipeline.planning.memory import generator_footprint

        return generator_footprint(generator_config(params), cuda)
    from pipeline.planning.tokenizer_memory import tokenizer_footprint

    return tokenizer_footprint(params, cuda)


def footprint(params: Params, stage: str, cuda: bool, cache: dict[str, dict] | None = None) -> Footprint:
    """``stage``'s footprint from the file, else computed."""
    cache = read() if cache is None else cache
    entry = cache.get(key(params, stage, cuda))
    if entry is not None:
        return Footprint(**{f.name: entry[f.name] for f in dataclasses.fields(Footprint)})
    return compute(params, stage, cuda)


def entries(root: Path) -> dict[str, dict]:
    """Freshly computed entries for every committed profile's training stages, on the devices the
    stage may run on (``auto``: a GPU and a CPU)."""
    from pipeline.params.profiles import load_profile, profile_names

    out: dict[str, dict] = {}
    for name in profile_names(root):
        params = load_profile(name, root, check_paths=False)
        for stage in TRAINING_STAGES:
            device = getattr(params, stage).device
            for cuda in [c for c in (True, False) if device == "auto" or (device == "cuda") == c]:
                k = key(params, stage, cuda)
                if k in out:
                    out[k]["profiles"].append(name)
                    continue
                fp = compute(params, stage, cuda)
                out[k] = {"label": f"{label(params, stage)}, {'bf16 (GPU)' if cuda else 'fp32 (CPU)'}",
                          "profiles": [name], **dataclasses.asdict(fp)}
    return dict(sorted(out.items(), key=lambda kv: (kv[1]["profiles"], kv[1]["label"])))


def refresh(root: Path, path: Path = FILE) -> int:
    """Rewrite the file from :func:`entries`; the number of entries."""
    data = entries(root)
    files.write_text(path, json.dumps(data, indent=1) + "\n")
    return len(data)
