"""``vfmtok-pipeline rar-vs-raster``: the RAR generator against the raster GPT on the same tokens,
at equal parameter count and steps, as two named DVC experiments that differ only in
``ar_model.model`` (``ar-GPT-Tiny``, ``ar-RAR-Tiny`` by default: RAR-Tiny is sized to GPT-Tiny's
parameter count), side by side in ``reports/rar_vs_raster.md``, whichever way it comes out.

The table leads with the budget (parameters, steps) and sample quality (gFID, KID, precision,
recall, sample class accuracy; the final raster-order val loss), then lists every other scalar
either run reports (``reports/{train_ar,sample,metrics}.json``), so a metric added to those files
later (e.g. a sample-quality-vs-steps convergence figure) shows up without a change here.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError
from pipeline.experiments.revisions import flatten, read_json
from pipeline.experiments.runs import run_experiments
from pipeline.layout import Layout
from vfmtok import files
from vfmtok.generator_config import generator_family

REPORTS = ("train_ar", "sample", "metrics")
LEAD = [  # (row label, report, key): the rows shown first
    ("parameters", "train_ar", "params"),
    ("training steps", "train_ar", "steps"),
    ("gFID (no CFG unless sample.cfg_scale says)", "metrics", "gfid"),
    ("KID", "metrics", "kid"),
    ("precision", "metrics", "precision"),
    ("recall", "metrics", "recall"),
    ("sample class accuracy", "metrics", "sample_class_acc"),
    ("final val loss (raster order)", "train_ar", "val_loss"),
    ("train tokens/s", "train_ar", "train_tokens_per_s"),
    ("sampling tokens/s (KV cache)", "sample", "tokens_per_s_kv_cache"),
]
EQUAL_PARAMS = 0.05  # relative difference up to which two models count as the same size


def experiment_name(model: str) -> str:
    return f"ar-{model}"


def check_pair(gpt: str, rar: str) -> None:
    """One raster GPT and one RAR, named as in the zoos."""
    if generator_family(gpt) != "gpt" or generator_family(rar) != "rar":
        raise UserError(f"rar-vs-raster compares a GPT-* with a RAR-* model, not {gpt!r} and {rar!r}")


def run(root: str, gpt: str, rar: str) -> None:
    """The two experiments (``dvc exp run --temp``: the workspace is left alone)."""
    run_experiments(root, [(experiment_name(m), [f"ar_model.model={m}"]) for m in (gpt, rar)])


def _read(rev: str, root: str) -> dict[str, object]:
    """``{report.key: scalar}`` of one experiment's three reports."""
    out: dict[str, object] = {}
    for name in REPORTS:
        data = read_json(rev, str(Layout(Path()).report(name)), root)
        out |= {f"{name}.{k}": v for k, v in flatten(data, scalars_only=True).items()}
    return out


def _fmt(v: object) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def table(got: dict[str, dict[str, object]], gpt: str, rar: str) -> list[str]:
    """Markdown lines: the budget check, then the lead rows and every other scalar."""
    g, r = got[gpt], got[rar]
    pg, pr = g.get("train_ar.params"), r.get("train_ar.params")
    same_steps = g.get("train_ar.steps") == r.get("train_ar.steps")
    if isinstance(pg, int) and isinstance(pr, int) and pg:
        gap = pr / pg - 1
        size = f"RAR has {gap:+.1%} parameters ({pr:,} vs {pg:,}): " + (
            "an equal-size pair" if abs(gap) <= EQUAL_PARAMS else "NOT an equal-size pair")
    else:
        size = "parameter counts missing from reports/train_ar.json"
    lines = [f"Budget: {size}; steps {'equal' if same_steps else 'DIFFERENT'} "
             f"({g.get('train_ar.steps')} vs {r.get('train_ar.steps')}).", "",
             f"| | {gpt} (raster GPT) | {rar} (RAR) |", "|---|---|---|"]
    shown = set()
    for label, report, key in LEAD:
        k = f"{report}.{key}"
        shown.add(k)
        lines.append(f"| {label} | {_fmt(g.get(k))} | {_fmt(r.get(k))} |")
    for k in sorted((set(g) | set(r)) - shown):
        if g.get(k) != r.get(k) or k.startswith("metrics."):
            lines.append(f"| `{k}` | {_fmt(g.get(k))} | {_fmt(r.get(k))} |")
    return lines


def rar_vs_raster(root: str = ".", gpt: str = "GPT-Tiny", rar: str = "RAR-Tiny",
                  run_first: bool = False) -> Path:
    """Write ``reports/rar_vs_raster.md`` from the two experiments (run them first with ``run_first``)."""
    check_pair(gpt, rar)
    if run_first:
        run(root, gpt, rar)
    got = {m: _read(experiment_name(m), root) for m in (gpt, rar)}
    lines = ["# RAR vs the raster GPT, same tokens, same budget", "",
             f"Two DVC experiments, `{experiment_name(gpt)}` and `{experiment_name(rar)}`, that differ "
             f"only in `ar_model.model` (made by "
             f"`vfmtok-pipeline rar-vs-raster --run --gpt {gpt} --rar {rar}`): "
             "the same tokens, steps, batch, lr and sampling settings; RAR trains in random orders annealed "
             "to raster (`train_ar.randomness_anneal_*`) and both sample in raster order with the KV cache. "
             "Measured numbers, whichever way they come out.", "", *table(got, gpt, rar), ""]
    out = Layout(Path(root)).reports / "rar_vs_raster.md"
    files.write_text(out, "\n".join(lines))
    return out
