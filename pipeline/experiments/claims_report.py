"""``reports/claims.md`` and ``reports/claims_convergence.png`` from the claims study's experiments
(``pipeline/experiments/claims.py`` runs them): every metric as mean ± sd over the seeds, every
comparison as a difference of means with its 95% interval, one verdict per claim and metric by
the rule the report states (``pipeline/experiments/seed_stats.py``)."""

from __future__ import annotations

from pathlib import Path

from pipeline.experiments import seed_stats as st
from pipeline.experiments.claims import CFG_SCALE, LABELS, PAPER, RUNS, cfg_config
from pipeline.layout import Layout
from pipeline.reporting import plots
from vfmtok import files
from vfmtok.training import steps_to_reach

METRICS = {  # key -> (title, which values are better, the paper's figure)
    "tokens_per_image": ("tokens per image", None, PAPER["tokens_per_image"]),
    "codebook_usage": ("codebook usage (val)", "higher", PAPER["codebook_usage"]),
    "linear_probe_acc": ("linear probe accuracy of the tokens", "higher", PAPER["linear_probe_acc"]),
    "psnr": ("reconstruction PSNR (dB)", "higher", ""),
    "rfid": ("rFID", "lower", PAPER["rfid"]),
    "gfid": ("gFID", "lower", PAPER["gfid"]),
    "sample_class_acc": ("sample class accuracy (judge)", "higher", ""),
    "final_fd": ("FD of a fixed sample set at the end of AR training (judge)", "lower",
                 PAPER["ar_convergence"]),
}
CLAIMS = [  # (claim, configuration A, configuration B, the metrics that test it)
    ("Foundation-model features make better tokens than pixels", "claims-vfmtok", "claims-vqgan",
     ("codebook_usage", "linear_probe_acc", "rfid", "gfid", "sample_class_acc", "final_fd")),
    ("The pretrained features are what makes the tokens good", "claims-vfmtok", "claims-random",
     ("linear_probe_acc", "rfid", "gfid", "sample_class_acc", "final_fd")),
    (f"Good without CFG (no CFG against CFG {CFG_SCALE:g})", "claims-vfmtok", cfg_config(), ("gfid",)),
]


def label(config: str) -> str:
    return LABELS.get(config, f"VFMTok, CFG {CFG_SCALE:g}")


def fd_curve(report: dict) -> list[tuple[int, float]]:
    return [(int(step), float(fd)) for step, fd, *_ in report["train_ar"].get("quality_curve") or []]


def value(report: dict, key: str) -> float | None:
    if key == "final_fd":
        curve = fd_curve(report)
        return curve[-1][1] if curve else None
    v = report["metrics"].get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def spread(runs: list[dict], key: str) -> st.Spread | None:
    values = [v for v in (value(r, key) for r in runs) if v is not None]
    return st.Spread(tuple(values)) if values else None


def _cell(s: st.Spread | None) -> str:
    return "-" if s is None else s.text()


def verdict_rows(got: dict[str, list[dict]]) -> list[str]:
    rows = ["| claim | metric | A | B | A - B (95% interval) | verdict |", "|---|---|---|---|---|---|"]
    for claim, a, b, keys in CLAIMS:
        for key in keys:
            title, better, _ = METRICS[key]
            sa, sb = spread(got[a], key), spread(got[b], key)
            diff = st.welch(sa, sb) if sa and sb else None
            interval = "-" if diff is None else f"{diff.delta:+.4g} ({diff.low:+.4g} .. {diff.high:+.4g})"
            rows.append(f"| {claim} | {title} ({better} is better) | {label(a)}: {_cell(sa)} | "
                        f"{label(b)}: {_cell(sb)} | {interval} | {st.verdict(diff, better)} |")
    return rows


def metric_rows(got: dict[str, list[dict]]) -> list[str]:
    rows = ["| metric | " + " | ".join(label(c) for c in RUNS) + " | paper (ImageNet 256) |",
            "|---|" + "---|" * (len(RUNS) + 1)]
    for key, (title, _, paper) in METRICS.items():
        rows.append(f"| {title} | " + " | ".join(_cell(spread(got[c], key)) for c in RUNS) + f" | {paper} |")
    return rows


def mean_curve(runs: list[dict]) -> list[tuple[int, float, float]]:
    return st.band([c for c in (fd_curve(r) for r in runs) if c])


def convergence_lines(got: dict[str, list[dict]], a: str, b: str) -> list[str]:
    """The AR steps each configuration's mean curve needs to reach the FD the other's mean curve
    has at the end of its budget (lower is better)."""
    ca, cb = ([(s, m) for s, m, _ in mean_curve(got[c])] for c in (a, b))
    if not ca or not cb:
        return [f"- {label(a)} vs {label(b)}: no sample-quality curve (train_ar.quality_every is 0)."]
    out = []
    for x, cx, y, cy in ((a, ca, b, cb), (b, cb, a, ca)):
        target, budget = cy[-1][1], cx[-1][0]
        reached = steps_to_reach(cx, target)
        where = (f"at step {reached} of {budget} (speed-up {budget / reached:.2f}x)" if reached
                 else f"not within its {budget} steps (its best: {min(v for _, v in cx):.4g})")
        out.append(f"- {label(x)} reaches {label(y)}'s final mean FD {target:.4g} {where}.")
    return out


def plot_bands(path: Path, got: dict[str, list[dict]]) -> None:
    """Each configuration's mean FD curve, with a band of ± one standard deviation over its seeds."""
    plt, fig = plots._figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for config in RUNS:
        band = mean_curve(got[config])
        if not band:
            continue
        steps, means, sds = zip(*band, strict=True)
        line, = ax.plot(steps, means, marker="o", markersize=3,
                        label=f"{label(config)} (n={len(got[config])})")
        ax.fill_between(steps, [m - s for m, s in zip(means, sds, strict=True)],
                        [m + s for m, s in zip(means, sds, strict=True)], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("AR training step")
    ax.set_ylabel("FD to val, judge features")
    ax.set_title("AR convergence: mean over seeds, band ± 1 sd (lower is better)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    plots._save(plt, fig, path)


def write_report(root: Path, got: dict[str, list[dict]]) -> Path:
    counts = ", ".join(f"{label(c)} {len(runs)}" for c, runs in got.items())
    lines = [
        "# The paper's claims in miniature", "",
        "Three configurations on the same data, token count and AR budget (`params/claims.yaml`), each "
        "run with several seeds (the seed of the tokenizer, the AR and sampling) as DVC experiments by "
        "`vfmtok-pipeline claims --run --seeds N`; measured numbers, whichever way they come out. The "
        f"judge (a fixed pretrained network, `judge` in params) scores samples for all. Seeds measured: "
        f"{counts}.", "",
        "## Verdicts", "", st.RULE, "",
        *verdict_rows(got), "",
        "## Every metric over the seeds", "",
        "Mean ± standard deviation over the seeds, then each seed's value.", "",
        *metric_rows(got), "",
        "## AR convergence (sample quality against steps)", "",
        *convergence_lines(got, "claims-vfmtok", "claims-vqgan"),
        *convergence_lines(got, "claims-vfmtok", "claims-random"),
        f"- Paper: {PAPER['ar_convergence']}. Curves: [claims_convergence.png](claims_convergence.png).", "",
    ]
    layout = Layout(root)
    out = layout.reports / "claims.md"
    files.write_text(out, "\n".join(lines))
    plot_bands(layout.picture("claims_convergence"), got)
    return out
