"""Seed-to-seed spread and the verdict on a claim: the statistics of ``reports/claims.md``.

A run of the claims study is one seed of one configuration (the seed of everything trained or
sampled). A metric of a configuration is given as the mean and sample standard deviation over
its seeds; a comparison of two configurations as the difference of their means with a 95%
confidence interval from Welch's t (unequal variances, few seeds: the t quantile widens the
interval as the seed count falls). The verdict follows from that interval alone, by
:data:`RULE`, never chosen per result.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Literal

LEVEL = 0.95
SUPPORTED, CONTRADICTED, UNRESOLVED = "supported", "contradicted", "not resolved at this scale"
RULE = (f"A claim says configuration A beats B on a metric. Its verdict comes from the {LEVEL:.0%} "
        "interval (Welch's t over the seeds) of mean(A) - mean(B), oriented so that positive means "
        f"A is better: **{SUPPORTED}** when the whole interval is above 0, **{CONTRADICTED}** when "
        f"it is all below 0, **{UNRESOLVED}** when it contains 0 or fewer than two seeds of "
        "either configuration were measured.")


@dataclass(frozen=True)
class Spread:
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float:
        """The sample standard deviation (n - 1); nan for one value."""
        return statistics.stdev(self.values) if self.n > 1 else math.nan

    def text(self, digits: int = 4) -> str:
        shown = ", ".join(f"{v:.{digits}g}" for v in self.values)
        sd = "" if self.n < 2 else f" ± {self.sd:.2g}"
        return f"{self.mean:.{digits}g}{sd} ({shown})"


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) and its interval; ``df``: Welch-Satterthwaite degrees of freedom."""

    delta: float
    low: float
    high: float
    df: float


def welch(a: Spread, b: Spread, level: float = LEVEL) -> Difference | None:
    """The interval of mean(a) - mean(b) by Welch's t; None when either has fewer than 2 values.
    Two configurations with no spread at all (identical values) get a zero-width interval."""
    from scipy import stats

    if a.n < 2 or b.n < 2:
        return None
    va, vb = a.sd**2 / a.n, b.sd**2 / b.n
    delta = a.mean - b.mean
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(delta, delta, delta, math.inf)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return Difference(delta, delta - half, delta + half, df)


def verdict(diff: Difference | None, better: Literal["lower", "higher"]) -> str:
    """:data:`RULE` applied to the interval of mean(A) - mean(B) for a metric where ``better``
    values win."""
    if diff is None:
        return UNRESOLVED
    low, high = (diff.low, diff.high) if better == "higher" else (-diff.high, -diff.low)
    if low > 0:
        return SUPPORTED
    if high < 0:
        return CONTRADICTED
    return UNRESOLVED


def band(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float, float]]:
    """(step, mean, sd) of curves measured at the same steps (steps every curve has)."""
    common = sorted(set.intersection(*(set(s for s, _ in c) for c in curves))) if curves else []
    out = []
    for step in common:
        spread = Spread(tuple(dict(c)[step] for c in curves))
        out.append((step, spread.mean, 0.0 if spread.n < 2 else spread.sd))
    return out
