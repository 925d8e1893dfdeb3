"""Merging windows from many devices equals summarising the concatenated raw data.

Exact for counts and histograms; latency percentiles read from the merged
buckets are within the documented bucket error of the exact nearest-rank value.
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.telemetry.window import RoleAccumulator, SummarySpec
from shared.telemetry import LATENCY_EDGES_MS, LATENCY_RATIO, bin_index, derive, merge, percentile_ms

pytestmark = pytest.mark.unit

N_FEATURES, N_CLASSES = 3, 4
SHARED = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
OWN = np.array([-1.0, 0.0, 2.0])
SPEC = SummarySpec(("a", "b", "c"), (SHARED, SHARED, OWN), N_CLASSES, None)
SPEC_SHARED = SummarySpec(("a", "b", "c"), (SHARED, SHARED, SHARED), N_CLASSES, None)

value = st.one_of(st.sampled_from([-1.0, 0.0, 0.25, 1.0, 2.0]), st.floats(-2, 3, allow_nan=False))
record = st.tuples(
    st.floats(0.001, 5000.0, allow_nan=False),  # latency ms
    st.lists(st.lists(value, min_size=N_FEATURES, max_size=N_FEATURES), min_size=1, max_size=3),  # rows
    st.integers(0, N_CLASSES - 1),  # top class
    st.booleans(),  # error
    st.one_of(st.none(), st.integers(0, N_CLASSES - 1)),  # label feedback
    st.one_of(st.none(), st.booleans()),  # shadow agreement
)
devices = st.lists(st.lists(record, max_size=15), min_size=1, max_size=8)


def summarise(spec: SummarySpec, records: list) -> dict:
    acc = RoleAccumulator("m", 1, "s" * 64, spec)
    for latency, rows, cls, error, label, shadow in records:
        out = np.zeros((len(rows), N_CLASSES))
        out[:, cls] = 1.0
        assert acc.record(latency, np.array(rows), out, error)
        if label is not None and not error:
            acc.record_label(cls, label)
        if shadow is not None:
            acc.record_shadow(shadow)
    return acc.close()


def naive(spec: SummarySpec, records: list) -> dict:
    """The same summary computed the slow, obvious way from raw data."""
    ok = [r for r in records if not r[3]]
    feats = {}
    for i, (name, edges) in enumerate(zip(spec.feature_names, spec.feature_edges, strict=True)):
        counts = [0] * (len(edges) + 1)
        for r in ok:
            for row in r[1]:
                counts[bin_index(list(edges), row[i])] += 1
        feats[name] = counts
    lat = [0] * (len(LATENCY_EDGES_MS) + 1)
    for r in records:
        lat[sum(1 for e in LATENCY_EDGES_MS if e < r[0])] += 1
    return {
        "count": len(records),
        "errors": sum(r[3] for r in records),
        "samples": sum(len(r[1]) for r in ok),
        "latency_ms": lat,
        "predictions": [sum(len(r[1]) for r in ok if r[2] == c) for c in range(N_CLASSES)],
        "features": feats,
        "labels": {"count": sum(r[4] is not None for r in ok), "correct": sum(r[4] == r[2] for r in ok)},
        "shadow": {"agree": sum(r[5] is True for r in records), "disagree": sum(r[5] is False for r in records)},
    }


@settings(max_examples=60)
@given(devices)
def test_merged_device_windows_equal_the_summary_of_all_raw_data(per_device):
    for spec in (SPEC, SPEC_SHARED):
        merged = reduce(merge, [summarise(spec, recs) for recs in per_device])
        everything = [r for recs in per_device for r in recs]
        assert merged == summarise(spec, everything)
        expected = naive(spec, everything)
        assert {k: merged[k] for k in expected} == expected


@settings(max_examples=60)
@given(st.lists(st.lists(st.floats(0.0005, 3000.0, allow_nan=False), min_size=1, max_size=40), min_size=1, max_size=6))
def test_merged_percentiles_are_within_the_bucket_error(latencies):
    spec = SummarySpec((), (), N_CLASSES, None)
    merged = reduce(merge, [summarise(spec, [(x, [[0, 0, 0]], 0, False, None, None) for x in dev]) for dev in latencies])
    raw = sorted(x for dev in latencies for x in dev)
    for q in (0.5, 0.95, 0.99):
        exact = raw[max(0, math.ceil(q * len(raw)) - 1)]  # nearest rank
        est = percentile_ms(merged["latency_ms"], q)
        assert est is not None
        if exact <= LATENCY_EDGES_MS[0]:
            assert est == LATENCY_EDGES_MS[0]
        else:
            assert exact <= est < exact * LATENCY_RATIO * (1 + 1e-9), (q, exact, est)
    assert derive(merged)["p50_ms"] == percentile_ms(merged["latency_ms"], 0.5)


@given(st.lists(st.floats(-1, 2, allow_nan=False), min_size=1, max_size=50))
def test_feature_bins_line_up_with_numpy_histogram_for_in_range_values(values):
    edges = [0.0, 0.25, 0.5, 1.0]
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bin_index(edges, v)] += 1
    inside = [v for v in values if edges[0] <= v <= edges[-1]]
    assert counts[1:-1] == np.histogram(inside, bins=edges)[0].tolist()
    assert counts[0] == sum(v < edges[0] for v in values)
    assert counts[-1] == sum(v > edges[-1] for v in values)
