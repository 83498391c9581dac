"""Every path the pipeline reads or writes, relative to the project root, in one place.

``dvc.yaml`` names the same paths as each stage's ``deps`` and ``outs`` (tests/test_layout.py checks
that every output there is a path here). The files *inside* an artifact folder (shard names,
manifests) belong to the format module that writes and reads them (``pipeline/formats/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    # -- data/: DVC-tracked artifacts (one folder per stage output)
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def source_listing(self) -> Path:
        """What DVC tracks of the image source instead of its tree (paths, sizes, mtimes)."""
        return self.data / "source_listing.tsv"

    @property
    def prepared(self) -> Path:
        return self.data / "prepared"

    @property
    def features(self) -> Path:
        return self.data / "features"

    @property
    def tokenizer(self) -> Path:
        return self.data / "tokenizer"

    @property
    def tokens(self) -> Path:
        return self.data / "tokens"

    @property
    def generator(self) -> Path:
        """The trained generator's model folder: a raster GPT or a RAR (its ``config.json`` says which)."""
        return self.data / "generator"

    @property
    def samples(self) -> Path:
        return self.data / "samples"

    def checkpoints(self, model: str) -> Path:
        """``data/checkpoints/<model>`` (tokenizer, generator), for resume: git-ignored and deliberately not
        a DVC output, so DVC never deletes them and a clone or ``dvc pull`` without them is current."""
        return self.data / "checkpoints" / model

    # -- reports/: metrics, plots and pictures (committed to git)
    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def report(self, stage: str) -> Path:
        """``reports/<stage>.json``: a stage's DVC metrics file."""
        return self.reports / f"{stage}.json"

    def live(self, stage: str) -> Path:
        """``reports/<stage>/``: a training stage's DVCLive folder (per-step curves)."""
        return self.reports / stage

    def picture(self, name: str) -> Path:
        return self.reports / f"{name}.png"

    @property
    def sample_grids(self) -> Path:
        return self.reports / "samples"

    def metrics_table(self, suffix: str) -> Path:
        """``reports/metrics.{json,md,csv}``: evaluate's numbers for DVC and for people."""
        return self.reports / f"metrics.{suffix}"

    def stage_times(self, suffix: str) -> Path:
        return self.reports / f"stage_times.{suffix}"

    # -- local, git-ignored state
    @property
    def cache(self) -> Path:
        """Converted Inception weights and reference features (checksummed, rebuilt on demand)."""
        return self.root / ".cache" / "vfmtok"

    @property
    def prefect_home(self) -> Path:
        return self.root / ".prefect"

    @property
    def retrain_workspaces(self) -> Path:
        """Where a retrain clones the checkout (``.dvc/tmp/retrain/``: git-ignored by DVC itself)."""
        return self.root / ".dvc" / "tmp" / "retrain"

    @property
    def last_metrics(self) -> Path:
        """The previous orchestrated run's metrics, for the diff artifact."""
        return self.prefect_home / "last_metrics.json"
