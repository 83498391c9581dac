"""``vfmtok-pipeline claims``: the paper's claims in miniature, measured as DVC experiments over seeds.

Three configurations on the same data, token count and AR budget (``params/claims.yaml``, or the
active params with ``--profile active``): VFMTok, the pixel-only VQGAN baseline, and VFMTok on a
random-init frozen backbone of the same architecture (the paper's premise is that the foundation
model's features are what make the tokens good: this run tests it), plus the VFMTok run resampled
with CFG ("good without CFG"). Each configuration runs with seeds 0 .. N-1 (``--seeds N``: the seed
of everything trained or sampled, :data:`SEED_KEYS`), each seed its own experiment, named
``CONFIG-seedS``; what does not depend on the seed (prepared data, features) is shared through
DVC's run cache. The runs are ``dvc exp run --temp`` (the workspace is left alone), seed by seed,
so a study stopped half-way holds whole seeds; an experiment that exists already is kept, so
``--run`` again runs only the missing ones. The CFG runs start from each seed's VFMTok experiment
in the workspace and re-run only sample and evaluate (``runs.run_from``: it needs a clean
workspace, and puts it back).

``pipeline/experiments/claims_report.py`` writes the report: every metric as mean ± sd over the
seeds, every comparison as a difference of means with its 95% interval, and the verdicts by one
rule (``pipeline/experiments/seed_stats.py``).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.experiments.revisions import read_json
from pipeline.experiments.runs import existing, run_experiments, run_from

RUNS = {  # configuration -> params overrides (dvc exp run -S)
    "claims-vfmtok": ["tokenizer.kind=vfmtok"],
    "claims-vqgan": ["tokenizer.kind=vqgan"],
    "claims-random": ["tokenizer.kind=vfmtok", "backbone.weights=random", "backbone.allow_random_init=true"],
}
SEED_KEYS = ("train_tokenizer.seed", "train_ar.seed", "sample.seed")  # what a run's seed sets
CFG_SCALE = 1.5  # the "with CFG" resample of each seed's VFMTok run
LABELS = {"claims-vfmtok": "VFMTok", "claims-vqgan": "VQGAN baseline",
          "claims-random": "VFMTok, random-init backbone"}
PAPER = {  # arXiv 2507.08441 (ImageNet 256x256); see shared/reference/vfmtok-method.md
    "tokens_per_image": "256 (vs 576 for grid tokenizers of similar quality)",
    "codebook_usage": "100% (vs ~95-99% for other tokenizers)",
    "linear_probe_acc": "69.4% (VQGAN: 23.1%)",
    "rfid": "0.89 (LlamaGen VQ-16, 256 tokens: 2.19)",
    "gfid": "GPT-B 3.09 without CFG, 3.43 with (LlamaGen GPT-B: 5.46)",
    "ar_convergence": "~3x faster AR convergence than on a pixel tokenizer's tokens",
}


def run_name(config: str, seed: int) -> str:
    return f"{config}-seed{seed}"


def cfg_config() -> str:
    """The configuration of the CFG resample (VFMTok at :data:`CFG_SCALE`)."""
    return f"claims-vfmtok-cfg{CFG_SCALE:g}"


def configs() -> list[str]:
    return [*RUNS, cfg_config()]


def seed_overrides(seed: int) -> list[str]:
    return [f"{key}={seed}" for key in SEED_KEYS]


def study(seeds: int) -> list[tuple[str, list[str]]]:
    """Every configuration with every seed, seed by seed: a study stopped half-way holds whole seeds."""
    return [(run_name(c, s), [*o, *seed_overrides(s)]) for s in range(seeds) for c, o in RUNS.items()]


def cfg_runs(seed: int) -> list[tuple[str, list[str]]]:
    """The CFG resample of seed ``seed``'s VFMTok run (run from that run's results)."""
    return [(run_name(cfg_config(), seed),
             [*RUNS["claims-vfmtok"], *seed_overrides(seed), f"sample.cfg_scale={CFG_SCALE:g}"])]


def run_study(root: Path, seeds: int, profile: str) -> None:
    """The experiments of ``seeds`` seeds that this repository does not hold yet."""
    have = existing(root)
    for seed in range(seeds):  # seed by seed: a study stopped half-way holds whole seeds
        run_experiments(root, [r for r in study(seeds) if r[0] not in have and r[0].endswith(f"-seed{seed}")],
                        profile)
        run_from(root, [r for r in cfg_runs(seed) if r[0] not in have], base=run_name("claims-vfmtok", seed))


def _reports(rev: str, root: str) -> dict[str, dict]:
    """The evaluate and train_ar reports as that experiment has them."""
    return {name: read_json(rev, f"reports/{name}.json", root) for name in ("metrics", "train_ar")}


def gather(root: str, seeds: int) -> dict[str, list[dict]]:
    """{configuration: the reports of each of its seeds 0 .. seeds-1 that has an experiment}."""
    have = existing(root)
    return {c: [_reports(run_name(c, s), root) for s in range(seeds) if run_name(c, s) in have]
            for c in configs()}


def claims(root: str = ".", run: bool = False, profile: str = "claims", seeds: int = 3) -> Path:
    """Run the study (``run``), then write ``reports/claims.md`` and ``reports/claims_convergence.png``."""
    from pipeline.experiments.claims_report import write_report

    if run:
        run_study(Path(root), seeds, profile)
    return write_report(Path(root), gather(root, seeds))
