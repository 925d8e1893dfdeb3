"""The agent's window: top-class confidence bins and data-quality counts per feature."""

from __future__ import annotations

import numpy as np
import pytest

from agent.telemetry.window import RoleAccumulator, SummarySpec
from shared.messages import Telemetry
from shared.schema import Reader
from shared.telemetry import CONFIDENCE_BINS, confidence_bin, merge

pytestmark = pytest.mark.unit
EDGES = np.array([0.0, 0.5, 1.0])
SPEC = SummarySpec(("a", "b"), (EDGES, EDGES), 3, None, np.array([[0.0, 1.0], [0.0, 0.8]]))


def test_nonfinite_inputs_are_counted_not_binned_and_out_of_range_is_per_feature_range():
    acc = RoleAccumulator("m", 1, "s" * 64, SPEC)
    x = np.array([[0.2, 0.9], [np.nan, 0.1], [np.inf, -np.inf], [1.5, 0.3]])
    out = np.array([[0.9, 0.05, 0.05], [0.2, 0.5, 0.3], [0.34, 0.33, 0.33], [0.0, 0.0, 1.0]])
    assert acc.record(1.0, x, out)
    s = acc.close()
    assert s["features"]["a"] == [0, 1, 0, 1]  # 0.2 and 1.5; NaN and inf left out
    assert s["features"]["b"] == [0, 2, 1, 0]  # 0.1, 0.3, 0.9; -inf left out
    assert s["quality"] == {"nan": [1, 0], "inf": [1, 1], "out_of_range": [1, 1]}  # 1.5 > 1.0; 0.9 > 0.8
    expected = [0] * CONFIDENCE_BINS
    for p in (0.9, 0.5, 0.34, 1.0):
        expected[confidence_bin(p)] += 1
    assert s["confidence"] == expected


def test_the_new_parts_merge_and_pass_the_protocol_reader():
    a = RoleAccumulator("m", 1, "s" * 64, SPEC)
    b = RoleAccumulator("m", 1, "s" * 64, SPEC)
    a.record(1.0, np.array([[np.nan, 0.1]]), np.array([[0.1, 0.8, 0.1]]))
    b.record(1.0, np.array([[0.3, 2.0]]), np.array([[0.6, 0.2, 0.2]]))
    merged = merge(a.close(), b.close())
    assert merged["quality"] == {"nan": [1, 0], "inf": [0, 0], "out_of_range": [0, 1]}
    assert sum(merged["confidence"]) == 2
    msg = {"schema": 1, "device_id": "d1", "seq": 1, "sent_at": 1.0, "window_start": 0.0, "window_s": 60.0,
           "roles": {"production": merged}}  # fmt: skip
    read = Telemetry.read(Reader(msg)).roles["production"]
    assert read["confidence"] == merged["confidence"] and read["quality"] == merged["quality"]


def test_late_labels_travel_in_the_window_message_and_come_back_the_same():
    from shared.messages import LateLabel, decode, encode_compact
    from shared.topics import Kind

    label = LateLabel("abc-1f", "production", "digits", 3, 1790000000.0, 7, 1)
    msg = Telemetry(device_id="d1", seq=5, sent_at=1.0, window_start=0.0, window_s=60.0, labels=[label])
    back = decode(Kind.TELEMETRY, encode_compact(msg))
    assert isinstance(back, Telemetry) and back.labels == [label]
    plain = Telemetry(device_id="d1", seq=6, sent_at=1.0, window_start=0.0, window_s=60.0)
    assert b"labels" not in encode_compact(plain) or decode(Kind.TELEMETRY, encode_compact(plain)).labels == []


def test_a_shadow_accumulator_counts_a_confusion_matrix_and_missed_comparisons():
    shadow = RoleAccumulator("m", 2, "s" * 64, SPEC)
    shadow.track_comparisons()  # the window builder does this for the shadow role
    for p, q in ((1, 1), (1, 2), (0, 0), (2, 2), (7, 0)):  # a class out of range still counts as a comparison
        assert shadow.record_shadow(p == q, p, q)
    assert shadow.record_missed("dropped", 2) and shadow.record_missed("sampled_out", 5)
    out = shadow.summary()
    assert out["shadow"] == {"agree": 3, "disagree": 2, "dropped": 2, "sampled_out": 5}
    assert out["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    msg = {"schema": 1, "device_id": "d1", "seq": 1, "sent_at": 1.0, "window_start": 0.0, "window_s": 60.0,
           "roles": {"shadow": out}}  # fmt: skip
    read = Telemetry.read(Reader(msg)).roles["shadow"]
    assert read["confusion"] == out["confusion"] and read["shadow"] == out["shadow"]
    prod = RoleAccumulator("m", 1, "s" * 64, SPEC)
    assert "confusion" not in prod.summary() and "dropped" not in prod.summary()["shadow"]
    assert not prod.record_missed("dropped")  # only the shadow role counts missed comparisons
