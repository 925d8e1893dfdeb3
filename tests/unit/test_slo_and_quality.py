"""SLO burn rates and data-quality rules (pure logic)."""

from __future__ import annotations

import pytest

from controller.monitoring import slo
from controller.monitoring.drift import reference_from_manifest
from controller.monitoring.quality import quality_flags
from shared.telemetry import LATENCY_EDGES_MS, N_LATENCY_BUCKETS, latency_bucket

pytestmark = pytest.mark.unit
RULE = slo.BurnRule(3600, 300, 14.4, "page")


def test_burn_rate_is_the_error_ratio_over_the_budget():
    assert slo.burn_rate(slo.Events(1, 100), 0.99) == pytest.approx(1.0)
    assert slo.burn_rate(slo.Events(0, 0), 0.99) is None


def test_a_rule_fires_only_when_both_windows_burn():
    fast = slo.Events(20, 100)  # 20 % bad against a 1 % budget: 20x
    slow = slo.Events(1, 1000)
    assert slo.evaluate(RULE, fast, fast, 0.99).firing
    assert not slo.evaluate(RULE, fast, slow, 0.99).firing  # the problem stopped: the short window says so
    assert not slo.evaluate(RULE, slow, fast, 0.99).firing  # a blip: the long window says so
    assert not slo.evaluate(RULE, slo.Events(), fast, 0.99).firing


def test_latency_events_count_calls_in_buckets_above_the_threshold():
    lat = [0] * N_LATENCY_BUCKETS
    lat[latency_bucket(1.0)] = 90
    lat[latency_bucket(80.0)] = 10
    ev = slo.events("latency", {"latency_ms": lat, "count": 100}, threshold_ms=50.0)
    assert (ev.bad, ev.total) == (10, 100)
    assert slo.slow_calls(lat, LATENCY_EDGES_MS[-1] * 2) == (0, 100)


def test_accuracy_uses_labels_when_there_are_enough_and_the_estimate_otherwise():
    assert slo.accuracy_events(100, 90, 5000, 0.97).source == "measured"
    est = slo.accuracy_events(3, 3, 5000, 0.9)
    assert est.source == "estimated" and est.bad == pytest.approx(500) and est.total == 5000
    assert slo.accuracy_events(0, 0, 0, None).total == 0


def test_availability_counts_missing_device_windows():
    ev = slo.availability(reported=95, expected=100)
    assert (ev.bad, ev.total) == (5, 100)


REF = reference_from_manifest(
    {
        "features": [
            {"name": "a", "bin_edges": [0, 0.25, 0.5, 0.75, 1], "counts": [25, 25, 25, 25]},
            {"name": "b", "bin_edges": [0, 0.5, 1], "counts": [100, 0]},
        ]
    }
)


def test_quality_flags_nonfinite_out_of_range_and_stuck_features():
    ok = {"samples": 100, "features": {"a": [0, 25, 25, 25, 25, 0], "b": [0, 100, 0, 0]}}
    assert quality_flags(REF, ok) == []
    stuck = {"samples": 100, "features": {"a": [0, 100, 0, 0, 0, 0], "b": [0, 100, 0, 0]}}
    [flag] = quality_flags(REF, stuck)
    assert (flag.feature, flag.rule, flag.value) == ("a", "stuck", 1.0)  # b is always in one bin: not stuck
    bad = {**ok, "quality": {"nan": [5, 0], "inf": [0, 0], "out_of_range": [0, 20]}}
    assert {(f.feature, f.rule) for f in quality_flags(REF, bad)} == {("a", "nonfinite"), ("b", "out_of_range")}
    few = {"samples": 10, "quality": {"nan": [5, 5], "inf": [0, 0], "out_of_range": [0, 0]}}
    assert quality_flags(REF, few) == []


def test_quality_ignores_counts_of_the_wrong_shape():
    odd = {"samples": 100, "quality": {"nan": [1]}, "features": {"a": [1, 2]}}
    assert quality_flags(REF, odd) == []


def test_only_broken_data_is_excluded_from_drift_analysis():
    from controller.monitoring.quality import EXCLUDING

    assert {"nonfinite", "stuck"} == EXCLUDING  # out_of_range is drift evidence, never hidden
