"""Metric tables for DVC (JSON) and for people (Markdown, CSV), each number with its method: the
how-texts are the metrics' declarations (``pipeline/evaluation/metrics.py``)."""

from __future__ import annotations

import csv
import io

from pipeline.evaluation.metrics import declared
from pipeline.layout import Layout
from pipeline.params import Params
from vfmtok import files


def write_metrics(layout: Layout, params: Params, metrics: dict, extractor: str, judge: str) -> None:
    """``metrics`` (every key declared; in table order) as ``reports/metrics.{json,csv,md}``."""
    files.write_json(layout.metrics_table("json"), metrics)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["metric", "value"])
    w.writerows(metrics.items())
    files.write_text(layout.metrics_table("csv"), buf.getvalue())

    lines = [
        "# Metrics", "",
        f"Tokenizer `{params.tokenizer.kind}` ({params.tokenizer.n_tokens} tokens, codebook "
        f"{params.tokenizer.codebook_size}x{params.tokenizer.codebook_dim}), judge `{judge}`, "
        f"GPT `{params.ar_model.model}`, CFG scale {params.sample.cfg_scale}. "
        f"FID-type metrics use {metrics['fid_images']} val images and {metrics['fid_samples']} "
        f"samples (extractor `{extractor}`); small sets bias FID upward, so compare runs of equal size.",
        "", "| metric | value | how |", "|---|---|---|",
    ]  # fmt: skip
    for k, v in metrics.items():
        shown = "absent" if v is None else v
        lines.append(f"| {k} | {shown} | {declared(k).how} |")
    lines += ["", "## Pictures", "",
              "- Reconstructions (top: val originals, bottom: reconstructions): "
              "[tokenizer_recon.png](tokenizer_recon.png)",
              "- Mean signed and absolute reconstruction error: [error_map.png](error_map.png)",
              "- Samples, a row per class: [samples.png](samples.png); per class: [samples/](samples/)",
              "- Training curves: `dvc plots show` (reports/train_tokenizer, reports/train_ar)", ""]
    files.write_text(layout.metrics_table("md"), "\n".join(lines))
