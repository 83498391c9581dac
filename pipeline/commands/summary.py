"""``vfmtok-pipeline summary``: what a person reads at the end of a run, in 80 columns.

The headline metrics (from whatever reports exist: any profile, a partial run), where the
pictures are, and the commands that compare a change and use the models. Plain text, no
terminal width assumed: ``dvc metrics show`` of every metric is too wide to read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.commands import Command
from pipeline.evaluation.metrics import declared
from pipeline.layout import Layout

COMPARE_COLUMNS = r"Experiment|^(gfid|rfid|psnr|codebook_usage|linear_probe_acc|tokenizer\.kind)$"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _num(value, fmt: str) -> str | None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return format(value, fmt)


def _line(label: str, parts: list[tuple[str, object, str]]) -> str | None:
    """``label  name value, ...`` for the parts that have a value (None: a line with none)."""
    shown = [f"{name} {text}{' dB' if name == 'PSNR' else ''}" for name, value, fmt in parts
             if (text := _num(value, fmt)) is not None]
    return f"  {label:<11}{', '.join(shown)}" if shown else None


def _part(key: str, value: object) -> tuple[str, object, str]:
    """A headline metric's (label, value, format), as its declaration says
    (``pipeline/evaluation/metrics.py``)."""
    metric = declared(key)
    return metric.label, value, metric.fmt


def headline(layout: Layout) -> list[str]:
    m = _read(layout.metrics_table("json"))
    tok, ar = _read(layout.report("train_tokenizer")), _read(layout.report("train_ar"))
    if not (m or tok or ar):
        return ["  no results yet: run `dvc repro` (or `vfmtok-pipeline reproduce`)"]
    kind = m.get("tokenizer_kind") or tok.get("kind") or "?"
    n_tok = m.get("tokens_per_image") or tok.get("tokens_per_image")
    lines = [f"  tokenizer {kind}, {n_tok or '?'} tokens per image"]
    rows = [
        _line("Tokenizer", [_part("psnr", m.get("psnr", tok.get("val_psnr"))), _part("ssim", m.get("ssim")),
                            _part("rfid", m.get("rfid")),
                            _part("codebook_usage", m.get("codebook_usage", tok.get("val_codebook_usage")))]),
        _line("Tokens", [_part("linear_probe_acc", m.get("linear_probe_acc"))]),
        _line("Generator", [_part("gfid", m.get("gfid")), ("AR val loss", ar.get("val_loss"), ".3f"),
                            ("steps", ar.get("steps"), "d")]),
        _line("Samples", [_part("sample_class_acc", m.get("sample_class_acc"))]),
    ]
    if rows[-1] and (ceiling := _num(m.get("val_class_acc"), declared("sample_class_acc").fmt)):
        rows[-1] += f" (real val images: {ceiling})"
    lines += [r for r in rows if r]
    if (n := m.get("fid_samples")) is not None:
        lines.append(f"  {'':<11}FID-type metrics on {n} samples: compare runs of equal size only")
    return lines


def pictures(layout: Layout) -> list[str]:
    items = [(layout.picture("tokenizer_recon"), "val images (top), reconstructions (below)"),
             (layout.picture("samples"), "generated samples, a row per class"),
             (layout.sample_grids, "more samples, a grid per class"),
             (layout.metrics_table("md"), "every metric and how it was computed")]
    lines = [f"  {_rel(p, layout.root):<30}{what}" for p, what in items if p.exists()]
    return lines or ["  none yet"]


def _rel(path: Path, root: Path) -> str:
    try:
        text = str(path.relative_to(root))
    except ValueError:
        text = str(path)
    return text + ("/" if path.is_dir() else "")


def summary(root: Path) -> str:
    layout = Layout(root)
    lines = ["Results", *headline(layout), "", "Pictures", *pictures(layout), "",
             "Check this run against the committed one (same bytes on this CPU kind, else metrics",
             "within measured tolerances)",
             "  vfmtok-pipeline verify", "",
             "Compare a change (FID: lower is better; PSNR, usage, probe: higher)",
             "  dvc exp run -n try-vqgan -S tokenizer.kind=vqgan",
             "  vfmtok-pipeline compare HEAD try-vqgan   # writes reports/compare_*.md",
             "  dvc exp show --md --drop '.*' --keep \\",
             f"      '{COMPARE_COLUMNS}'",
             "", "Use the models",
             "  vfmtok-pipeline generate --class 5 -n 16 --out grid.png",
             "  vfmtok-pipeline reconstruct my_photo.jpg --out recon/"]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """None: the summary is of ``--root``'s reports."""


def main(args: argparse.Namespace) -> None:
    print(summary(Path(args.root)))


COMMAND = Command("summary", "the headline results, where the pictures are, what to run next", add_arguments,
                  main)
