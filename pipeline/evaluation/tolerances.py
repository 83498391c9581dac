"""``reports/tolerances.json``: how far a run's metrics may lie from the committed run's and still
agree, and how those limits were measured.

Another CPU kind computes with other float kernels, so its outputs' bytes differ from the
committed run's and its metrics differ a little; how much is measured by re-running the same
params (other days, CPU kinds, thread settings), never guessed. ``benchmarks/tolerances.py``
writes the file from such re-runs; ``vfmtok-pipeline verify`` reads it. The top level says how
the runs were made: ``how`` (a sentence), ``margin`` and ``runs`` (``label``, ``cpu``, ``threads``,
``date``, ``source`` of each). Each row of ``metrics`` is one metric's limit: ``key``,
``tolerance``, ``kind`` (``abs``: in the metric's units; ``rel``: a fraction of the committed
value), ``observed_spread`` (the largest difference between two of the runs), ``runs`` (how many)
and ``note`` (why the limit is not margin x spread, when it is not).

Which metrics get a row is decided from their declarations (``pipeline/evaluation/metrics.py``):
a measured number, rounded to ``digits``, gets one (:func:`toleranced`); a run's settings
(``fid_images``, ``tokens_per_image``: no ``digits``) must be equal instead (:func:`is_setting`);
the stage's own time (``seconds``) is never compared. Torch-free.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.evaluation.inputs import Run
from pipeline.evaluation.metrics import Metric, declared
from vfmtok.files import write_json

KINDS = ("abs", "rel")
ROW_FIELDS = ("key", "tolerance", "kind", "observed_spread", "runs")


def toleranced(metric: Metric) -> bool:
    """A measured number (rounded to ``digits``), not what the run was (its settings and time:
    the ``Run`` group)."""
    return metric.digits is not None and metric.needs is not Run


def is_setting(metric: Metric) -> bool:
    """A value that says what was run (sizes, names, the reference): equal in runs of the same params."""
    return metric.digits is None


def digits(key: str) -> int | None:
    """The decimals ``key``'s values are rounded to (None: undeclared or not rounded)."""
    try:
        return declared(key).digits
    except KeyError:
        return None


@dataclass(frozen=True)
class Row:
    """One metric's limit."""

    key: str
    tolerance: float
    kind: str
    observed_spread: float
    runs: int
    note: str = ""

    def limit(self, committed: float) -> float:
        """The largest difference from ``committed`` that agrees."""
        return self.tolerance if self.kind == "abs" else self.tolerance * abs(committed)

    def difference(self, committed: float, value: float) -> float:
        """``|value - committed|``, rounded as the values are (their difference is then exact:
        a run one unit of the last digit away is not refused for a float's last bit)."""
        places = digits(self.key)
        diff = abs(value - committed)
        return diff if places is None else round(diff, places)

    def agrees(self, committed: float, value: float) -> bool:
        return self.difference(committed, value) <= self.limit(committed)


@dataclass(frozen=True)
class Tolerances:
    how: str
    margin: float
    runs: list[dict]
    metrics: list[Row]

    def row(self, key: str) -> Row | None:
        return next((r for r in self.metrics if r.key == key), None)


def to_dict(tolerances: Tolerances) -> dict:
    return {"how": tolerances.how, "margin": tolerances.margin, "runs": tolerances.runs,
            "metrics": [asdict(r) for r in tolerances.metrics]}


def write(path: Path, tolerances: Tolerances) -> None:
    """Atomically: a half-written file is never read as the limits."""
    write_json(path, to_dict(tolerances))


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _row(item: object, where: str) -> Row:
    if not isinstance(item, dict):
        raise UserError(f"{where}: a row is an object with {', '.join(ROW_FIELDS)}")
    missing = [f for f in ROW_FIELDS if f not in item]
    if missing:
        raise UserError(f"{where}: no {', '.join(missing)}")
    if not isinstance(item["key"], str) or not item["key"]:
        raise UserError(f"{where}.key is {item['key']!r}, not a metric's name")
    if item["kind"] not in KINDS:
        raise UserError(f"{where}.kind is {item['kind']!r}, not abs or rel ({item['key']})")
    for name in ("tolerance", "observed_spread"):
        if not is_number(item[name]) or item[name] < 0:
            raise UserError(f"{where}.{name} is {item[name]!r}, not a number >= 0 ({item['key']})")
    return Row(item["key"], float(item["tolerance"]), item["kind"], float(item["observed_spread"]),
               int(item["runs"]) if is_number(item["runs"]) else 0, str(item.get("note", "")))


def parse(text: str, source: str) -> Tolerances:
    """The file's contents; anything else is one line naming ``source`` and the key at fault."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UserError(f"{source}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), list):
        raise UserError(f"{source}: no metrics: list of rows")
    rows = [_row(item, f"{source}: metrics[{i}]") for i, item in enumerate(data["metrics"])]
    keys = [r.key for r in rows]
    if len(set(keys)) != len(keys):
        raise UserError(f"{source}: {next(k for k in keys if keys.count(k) > 1)} has two rows")
    margin = data.get("margin")
    return Tolerances(str(data.get("how", "")), float(margin) if is_number(margin) else math.nan,
                      list(data.get("runs") or []), rows)


def read(path: Path) -> Tolerances:
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"{path}: cannot read the tolerances ({e.strerror})") from None
    return parse(text, str(path))
