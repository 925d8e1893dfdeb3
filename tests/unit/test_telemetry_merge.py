import pytest

from shared.telemetry import LATENCY_EDGES_MS, N_LATENCY_BUCKETS, MergeError, latency_bucket, merge, percentile_ms

pytestmark = pytest.mark.unit


def test_merge_adds_everything_but_identity():
    a = {"model": "m", "version": 1, "count": 2, "latency_ms": [1, 0], "shadow": {"agree": 1}}
    b = {"model": "m", "version": 1, "count": 3, "latency_ms": [0, 4], "shadow": {"agree": 2, "disagree": 1}}
    assert merge(a, b) == {"model": "m", "version": 1, "count": 5, "latency_ms": [1, 4], "shadow": {"agree": 3, "disagree": 1}}


def test_merge_refuses_mismatches():
    with pytest.raises(MergeError, match="version"):
        merge({"version": 1}, {"version": 2})
    with pytest.raises(MergeError, match="lengths differ"):
        merge([1], [1, 2])


def test_buckets_and_percentiles():
    buckets = [0] * N_LATENCY_BUCKETS
    for ms in (0.5, 0.5, 0.5, 2.0):
        buckets[latency_bucket(ms)] += 1
    p50 = percentile_ms(buckets, 0.5)
    assert 0.5 <= p50 <= 0.5 * 2**0.25
    assert percentile_ms(buckets, 1.0) >= 2.0
    assert percentile_ms([0] * N_LATENCY_BUCKETS, 0.5) is None
    assert latency_bucket(LATENCY_EDGES_MS[-1] * 10) == N_LATENCY_BUCKETS - 1
