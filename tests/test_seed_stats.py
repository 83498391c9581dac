"""The statistics of the claims report: Welch intervals against scipy's own, and the verdict rule on
synthetic seeds with a known effect."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.experiments import seed_stats as st


def test_welch_interval_is_scipys():
    rng = np.random.default_rng(0)
    for n_a, n_b in ((3, 3), (2, 5), (8, 4)):
        a, b = rng.normal(1.0, 0.5, n_a), rng.normal(0.2, 2.0, n_b)
        ours = st.welch(st.Spread(tuple(a)), st.Spread(tuple(b)))
        ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        assert ours.delta == pytest.approx(a.mean() - b.mean(), rel=1e-12)
        assert (ours.low, ours.high) == pytest.approx((ref.low, ref.high), rel=1e-9)


def test_spread_is_mean_and_sample_sd():
    s = st.Spread((1.0, 2.0, 4.0))
    assert s.mean == pytest.approx(7 / 3) and s.sd == pytest.approx(math.sqrt(7 / 3))
    assert s.text() == "2.333 ± 1.5 (1, 2, 4)"
    assert math.isnan(st.Spread((3.0,)).sd) and st.Spread((3.0,)).text() == "3 (3)"


def _seeds(mean: float, sd: float, n: int, seed: int) -> st.Spread:
    return st.Spread(tuple(np.random.default_rng(seed).normal(mean, sd, n)))


@pytest.mark.parametrize("better", ["higher", "lower"])
def test_a_clear_effect_is_supported_or_contradicted_and_no_effect_is_not_resolved(better):
    """Three seeds a side. An effect of 10 standard deviations in the claimed direction is
    supported, in the other contradicted; no effect (the same distribution) is not resolved, for
    each of 20 independent draws (a 95% interval misses a zero effect 5% of the time: the draws
    are fixed, so which ones would is known and none of these does)."""
    sign = 1 if better == "higher" else -1
    base = _seeds(0.5, 0.01, 3, 1)
    assert st.verdict(st.welch(_seeds(0.5 + sign * 0.1, 0.01, 3, 2), base), better) == st.SUPPORTED
    assert st.verdict(st.welch(_seeds(0.5 - sign * 0.1, 0.01, 3, 3), base), better) == st.CONTRADICTED
    same = [st.verdict(st.welch(_seeds(0.5, 0.01, 3, 10 + i), _seeds(0.5, 0.01, 3, 40 + i)), better)
            for i in range(20)]
    assert same == [st.UNRESOLVED] * 20


def test_one_seed_resolves_nothing():
    assert st.welch(st.Spread((1.0,)), st.Spread((5.0, 6.0))) is None
    assert st.verdict(None, "higher") == st.UNRESOLVED


def test_band_is_mean_and_sd_at_the_steps_every_curve_has():
    band = st.band([[(100, 10.0), (200, 6.0)], [(100, 12.0), (200, 8.0), (300, 1.0)]])
    assert band == [(100, 11.0, pytest.approx(math.sqrt(2))), (200, 7.0, pytest.approx(math.sqrt(2)))]
