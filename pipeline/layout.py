"""Every path the pipeline reads or writes, relative to the project root, in one place.

``dvc.yaml`` names the same paths as each stage's ``deps`` and ``outs`` (tests/test_deps.py checks
that every output there is a path here). The files *inside* an artifact folder (shard names,
manifests) belong to the format module that writes and reads them (``pipeline/formats/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """The project's paths below ``root``: one read-only attribute or method per path."""

    root: Path = Path(".")

    # -- data/: DVC-tracked artifacts (one folder per stage output)
    data = property(lambda self: self.root / "data")
    # what DVC tracks of the image source instead of its tree (paths, sizes, mtimes)
    source_listing = property(lambda self: self.data / "source_listing.tsv")
    prepared = property(lambda self: self.data / "prepared")
    features = property(lambda self: self.data / "features")
    tokenizer = property(lambda self: self.data / "tokenizer")
    tokens = property(lambda self: self.data / "tokens")
    # the trained generator's model folder: a raster GPT or a RAR (its config.json says which)
    generator = property(lambda self: self.data / "generator")
    samples = property(lambda self: self.data / "samples")

    def checkpoints(self, model: str) -> Path:
        """``data/checkpoints/<model>`` (tokenizer, generator), for resume: git-ignored and
        deliberately not a DVC output, so DVC never deletes them and a clone or ``dvc pull``
        without them is current."""
        return self.data / "checkpoints" / model

    # -- reports/: metrics, plots and pictures (committed to git)
    reports = property(lambda self: self.root / "reports")
    sample_grids = property(lambda self: self.reports / "samples")

    def report(self, stage: str) -> Path:
        """``reports/<stage>.json``: a stage's DVC metrics file."""
        return self.reports / f"{stage}.json"

    def live(self, stage: str) -> Path:
        """``reports/<stage>/``: a training stage's DVCLive folder (per-step curves)."""
        return self.reports / stage

    def picture(self, name: str) -> Path:
        return self.reports / f"{name}.png"

    def metrics_table(self, suffix: str) -> Path:
        """``reports/metrics.{json,md,csv}``: evaluate's numbers for DVC and for people."""
        return self.reports / f"metrics.{suffix}"

    def stage_times(self, suffix: str) -> Path:
        return self.reports / f"stage_times.{suffix}"

    # -- local, git-ignored state
    # converted Inception weights and reference features (checksummed, rebuilt on demand)
    cache = property(lambda self: self.root / ".cache" / "vfmtok")
    prefect_home = property(lambda self: self.root / ".prefect")
    # where a retrain clones the checkout (.dvc/tmp/retrain/: git-ignored by DVC itself)
    retrain_workspaces = property(lambda self: self.root / ".dvc" / "tmp" / "retrain")
    # the previous orchestrated run's metrics, for the diff artifact
    last_metrics = property(lambda self: self.prefect_home / "last_metrics.json")
