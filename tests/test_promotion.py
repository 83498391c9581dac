"""The retrain's promotion gate: a model replaces the current one only when it is better by the
margin ``promote`` sets, on a metric found in exactly one metrics file."""

from __future__ import annotations

import pytest

from pipeline.orchestration import promotion
from pipeline.params import PromoteParams
from vfmtok.config_schema import ConfigError


def test_promotion_gate_needs_a_real_improvement_by_the_margin():
    lower = PromoteParams(metric="gfid", mode="min", min_delta=1.0)
    assert promotion.judge(9.0, 10.5, lower)[0] and not promotion.judge(9.8, 10.5, lower)[0]
    assert "only by 0.7" in promotion.judge(9.8, 10.5, lower)[1]
    assert not promotion.judge(11.0, 10.5, lower)[0] and not promotion.judge(10.5, 10.5, lower)[0]
    assert promotion.judge(5.0, None, lower) == (True, "no current model with a finite gfid to compare with")
    assert not promotion.judge(float("nan"), 3.0, lower)[0] and not promotion.judge(None, 3.0, lower)[0]
    higher = PromoteParams(metric="acc", mode="max", min_delta=0.0)
    assert promotion.judge(0.6, 0.5, higher)[0] and not promotion.judge(0.5, 0.5, higher)[0]
    metrics = {"reports/metrics.json": {"gfid": 3.5, "kind": "x"},
               "reports/a.json": {"val_loss": 2, "seconds": 1}, "reports/b.json": {"seconds": 4}}
    assert promotion.lookup(metrics, "gfid") == 3.5 and promotion.lookup(metrics, "val_loss") == 2.0
    assert promotion.lookup(metrics, "reports/b.json:seconds") == 4.0
    assert promotion.lookup(metrics, "kind") is None and promotion.lookup(metrics, "nope") is None
    with pytest.raises(ConfigError, match="promote.metric = 'seconds': in several metrics files"):
        promotion.lookup(metrics, "seconds")
