"""The promotion gate of a retrain: only a model better than the current one becomes current.

"Current" is the latest version in DVC's model registry (GTO: an annotated git tag
``ARTIFACT@vX.Y.Z`` per ``type: model`` artifact of ``dvc.yaml``, all registered together on the
experiment's commit), or, before the first promotion, the checkout's ``HEAD``: the models the
user has. The retrain's value of ``promote.metric`` is compared with the current one's; it is
promoted when it is better (``promote.mode``) by at least ``promote.min_delta``. A registered
version never touches the working tree (tags only); ``dvc exp apply NAME`` or ``git checkout
TAG && dvc checkout`` brings it in. The decision and its reason are a Prefect artifact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.experiments.revisions import workspace_metrics
from pipeline.params import PromoteParams
from vfmtok.config_schema import ConfigError

PROMOTION_KEY = "vfmtok-promotion"


@dataclass
class Decision:
    promoted: bool
    reason: str
    metric: str
    value: float | None  # the retrain's
    baseline: float | None  # the current model's
    baseline_ref: str  # e.g. "tokenizer@v0.0.1 (commit 1a2b3c4)" or "HEAD (commit 1a2b3c4)"
    versions: dict[str, str] = field(default_factory=dict)  # artifact -> version registered


def model_artifacts(root: Path) -> list[str]:
    """The ``type: model`` artifacts of ``dvc.yaml``, in file order."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    return [name for name, a in (spec.get("artifacts") or {}).items() if (a or {}).get("type") == "model"]


def lookup(metrics: dict[str, dict], name: str) -> float | None:
    """The value of metric ``name`` (``KEY`` in exactly one file, or ``FILE:KEY``); None if absent."""
    if ":" in name:
        file, key = name.rsplit(":", 1)
        hits = [metrics[file][key]] if key in metrics.get(file, {}) else []
    else:
        files = [f for f, values in metrics.items() if name in values]
        if len(files) > 1:
            raise ConfigError("promote.metric", name, f"in several metrics files ({', '.join(files)}): "
                                                      f"write FILE:{name}")
        hits = [metrics[f][name] for f in files]
    value = hits[0] if hits else None
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def judge(value: float | None, baseline: float | None, cfg: PromoteParams) -> tuple[bool, str]:
    """(promote?, why): better than ``baseline`` in ``cfg.mode`` by at least ``cfg.min_delta``."""
    m = cfg.metric
    if value is None or not math.isfinite(value):
        return False, f"the retrain has no finite {m} ({value})"
    if baseline is None or not math.isfinite(baseline):
        return True, f"no current model with a finite {m} to compare with"
    gain = baseline - value if cfg.mode == "min" else value - baseline
    word = "lower" if cfg.mode == "min" else "higher"
    margin = f"by {abs(gain):.6g}, at least {cfg.min_delta:g} needed"
    if gain > 0 and gain >= cfg.min_delta:
        return True, f"{m} {value:.6g} is {word} than the current {baseline:.6g} {margin}"
    if gain > 0:
        return False, f"{m} {value:.6g} is {word} than the current {baseline:.6g}, but only {margin}"
    return False, f"{m} {value:.6g} is not {word} than the current {baseline:.6g}"


def current(root: Path, artifacts: list[str]) -> tuple[str, str] | None:
    """``(label, commit)`` of the latest registered version of the first model artifact."""
    import gto.api
    from gto.exceptions import ArtifactNotFound

    if not artifacts:
        return None
    try:
        latest = gto.api.find_latest_version(str(root), artifacts[0])
    except ArtifactNotFound:
        return None
    if latest is None:
        return None
    return f"{artifacts[0]}@{latest.version}", latest.commit_hexsha


def decide(root: Path, workspace: Path, head: str, cfg: PromoteParams) -> Decision:
    """Compare the retrain in ``workspace`` with the current model of ``root`` (nothing is written)."""
    value = lookup(workspace_metrics(workspace), cfg.metric)
    found = current(root, model_artifacts(root))
    label, commit = found if found else ("HEAD", head)
    baseline = lookup(workspace_metrics(root, commit), cfg.metric)
    promoted, reason = judge(value, baseline, cfg)
    return Decision(promoted, reason, cfg.metric, value, baseline, f"{label} (commit {commit[:7]})")


def register(root: Path, artifacts: list[str], commit: str, message: str) -> dict[str, str]:
    """A new version of every model artifact on ``commit`` (GTO tags); ``{artifact: version}``."""
    import gto.api

    from pipeline.orchestration.workspace import IDENTITY, git_identity

    name, email = git_identity() or IDENTITY
    versions = {}
    for artifact in artifacts:
        tag = gto.api.register(str(root), artifact, commit, message=message, author=name, author_email=email)
        versions[artifact] = tag.version
    return versions


def markdown(d: Decision, experiment: str) -> str:
    """The Prefect artifact: promoted or not, and why."""
    verdict = "promoted" if d.promoted else "not promoted"
    lines = [f"# Retrain `{experiment}`: {verdict}", "", d.reason + ".", "",
             "| | model | " + d.metric + " |", "|---|---|---|",
             f"| retrain | experiment `{experiment}` | {_fmt(d.value)} |",
             f"| current | {d.baseline_ref} | {_fmt(d.baseline)} |", ""]
    if d.promoted and d.versions:
        tags = ", ".join(f"`{a}@{v}`" for a, v in d.versions.items())
        lines += [f"Registered {tags} (GTO tags on the experiment's commit; `gto show` lists them).",
                  f"Use it in the checkout: `dvc exp apply {experiment}`.", ""]
    elif d.promoted:
        lines += ["No `type: model` artifact in dvc.yaml: nothing to register.", ""]
    else:
        lines += [f"The experiment is kept: `dvc exp show` lists it, `dvc exp apply {experiment}` "
                  "applies it.", ""]
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "absent" if v is None else f"{v:.6g}"
