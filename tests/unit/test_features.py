"""shared/features.py: the feature spec (parse, refuse, transform, check) and point-in-time batch values."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from shared.errors import SchemaError
from shared.features import (
    BatchFeatureValue,
    FeatureInputError,
    FeatureSpec,
    FeatureSpecError,
    join_batch,
    next_change,
    value_at,
    values_at,
)

pytestmark = pytest.mark.unit
T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)

SPEC = {
    "version": "t-1",
    "input": {"name": "sensor", "dtype": "float32", "shape": [3], "range": [0, 10], "names": ["a", "b", "kind"]},
    "steps": [
        {"op": "scale", "factor": [2, 1, 1], "offset": {"batch": "offset"}},
        {"op": "clip", "min": 0, "max": 12},
        {"op": "normalise", "mean": [1, 0, 0], "std": 2},
        {"op": "one_hot", "index": 2, "values": [0, 1, 2]},
        {"op": "append", "batch": ["site"]},
    ],
    "batch": [{"name": "offset", "default": 0.0}, "site"],
}


def test_transform_runs_every_step_in_float32():
    spec = FeatureSpec.from_dict(SPEC)
    raw = np.array([[1.0, 2.0, 1.0], [5.0, 10.0, 2.0]])
    got = spec.transform(raw, {"site": 7.0})
    # scale: [2, 2, 1], [10, 10, 2]; clip: same; normalise: [(2-1)/2, 1, .5], [(10-1)/2, 5, 1]; one-hot of kind (after normalise)
    want = np.array([[0.5, 1.0, 0.0, 0.0, 0.0, 7.0], [4.5, 5.0, 0.0, 1.0, 0.0, 7.0]], np.float32)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert spec.output_shape == (6,)


def test_batch_values_join_and_defaults():
    spec = FeatureSpec.from_dict(SPEC)
    raw = np.array([[1.0, 2.0, 0.0]])
    with_offset = spec.transform(raw, {"offset": 1.0, "site": 0.0})
    without = spec.transform(raw, {"site": 0.0})  # offset takes its default 0
    assert with_offset[0, 1] == (2.0 + 1.0) / 2 and without[0, 1] == 2.0 / 2
    with pytest.raises(FeatureInputError, match="'site' has no value in force and no default"):
        spec.transform(raw)
    with pytest.raises(FeatureInputError, match="'site': expected a finite number"):
        spec.transform(raw, {"site": float("nan")})


def test_check_names_each_violation_and_transform_refuses():
    spec = FeatureSpec.from_dict(SPEC)
    raw = np.array([[1.0, 11.0, 0.0], [np.nan, 2.0, -1.0]])
    problems = spec.check(raw)
    assert problems == [
        "feature 'a' (index 0): 1 value(s) outside [0, 10], e.g. nan in item 1",
        "feature 'b' (index 1): 1 value(s) outside [0, 10], e.g. 11.0 in item 0",
        "feature 'kind' (index 2): 1 value(s) outside [0, 10], e.g. -1.0 in item 1",
    ]
    with pytest.raises(FeatureInputError, match="outside"):
        spec.transform(raw, {"site": 0})
    assert spec.transform(raw, {"site": 0}, validate=False).shape == (2, 6)  # the caller's choice
    assert spec.check(np.zeros((2, 4))) == [
        "raw input 'sensor': expected shape [n, 3] (a leading batch axis, then [3]), got [2, 4]"
    ]
    assert "expected numbers" in spec.check(np.array([["x", "y", "z"]]))[0]
    assert spec.check(np.zeros((0, 3))) == []


def test_integer_raw_inputs_must_be_whole_numbers():
    spec = FeatureSpec.from_dict({"version": "i", "input": {"dtype": "uint8", "shape": [2], "range": [0, 255]}})
    assert spec.check(np.array([[1, 2]], np.uint8)) == []
    assert spec.check(np.array([[1.5, 2.0]])) == ["raw input 'raw' is declared uint8: 1 value(s) are not whole numbers"]


def test_reshape_and_per_feature_ranges():
    spec = FeatureSpec.from_dict(
        {
            "version": "img",
            "input": {"shape": [2, 2], "range": [0, 1], "ranges": [[0, 1], [None, 5]]},
            "steps": [{"op": "reshape", "shape": [4]}],
        }
    )
    raw = np.array([[[0.5, 4.0], [1.0, -3.0]]])
    np.testing.assert_array_equal(spec.transform(raw), np.array([[0.5, 4.0, 1.0, -3.0]], np.float32))
    assert spec.check(np.array([[[2.0, 0.0], [0.0, 0.0]]])) == ["feature 0: 1 value(s) outside [0, 1], e.g. 2.0 in item 0"]


def test_round_trip_and_equality():
    spec = FeatureSpec.from_dict(SPEC)
    again = FeatureSpec.from_dict(spec.to_dict())
    assert again == spec and again.version == "t-1"
    assert again.to_dict() == spec.to_dict()
    other = dict(SPEC, version="t-2")
    assert FeatureSpec.from_dict(other) != spec


@pytest.mark.parametrize(
    "change, message",
    [
        ({"version": ""}, "features.version"),
        ({"extra": 1}, "unknown field"),
        ({"input": {"shape": [0]}}, "features.input.shape"),
        ({"input": {"shape": [3], "dtype": "complex64"}}, "features.input.dtype"),
        ({"input": {"shape": [3], "range": [5, 1]}}, "min 5 is above max 1"),
        ({"input": {"shape": [3], "ranges": [[0, 1]]}}, "expected 3 [min, max] pairs"),
        ({"steps": [{"op": "rotate"}]}, "expected one of scale, clip"),
        ({"steps": [{"op": "scale", "factor": [1, 2]}]}, "expected 3 values"),
        ({"steps": [{"op": "scale", "factor": "2"}]}, "expected a finite number"),
        ({"steps": [{"op": "scale", "factr": 2}]}, "unknown field(s) ['factr']"),
        ({"steps": [{"op": "scale", "offset": {"batch": "nope"}}]}, "'nope' is not declared"),
        ({"steps": [{"op": "clip"}]}, "give min, max or both"),
        ({"steps": [{"op": "normalise", "std": 0}]}, "expected positive values"),
        ({"steps": [{"op": "reshape", "shape": [4]}]}, "holds 4 values"),
        ({"steps": [{"op": "reshape", "shape": [3, 1]}, {"op": "one_hot", "index": 0, "values": [1]}]}, "rank 1"),
        ({"steps": [{"op": "one_hot", "index": 3, "values": [1]}]}, "0 to 2"),
        ({"steps": [{"op": "one_hot", "index": 0, "values": [1, 1]}]}, "distinct"),
        ({"steps": [{"op": "append", "batch": ["site", "zz"]}]}, "'zz' is not declared"),
        ({"batch": ["site", "site"]}, "distinct"),
        ({"batch": [{"name": "x", "default": "0"}]}, "expected a finite number"),
    ],
)
def test_bad_specs_are_refused_with_the_field_named(change, message):
    d = {**SPEC, "steps": [], **change}
    with pytest.raises(FeatureSpecError) as err:
        FeatureSpec.from_dict(d)
    assert message in str(err.value)
    assert isinstance(err.value, SchemaError)  # a bundle with a bad spec is a bad manifest


def test_not_a_mapping():
    with pytest.raises(FeatureSpecError, match="expected an object"):
        FeatureSpec.from_dict([])  # type: ignore[arg-type]


# --- point in time ---------------------------------------------------------------------


def v(value: float, start_h: float, end_h: float | None = None, scope: str = "device:d1", name: str = "off") -> BatchFeatureValue:
    end = None if end_h is None else T0 + timedelta(hours=end_h)
    return BatchFeatureValue(name, value, T0 + timedelta(hours=start_h), end, scope)


def at(h: float) -> datetime:
    return T0 + timedelta(hours=h)


def test_value_at_uses_half_open_intervals():
    history = [v(1.0, 0, 2), v(2.0, 2)]
    assert value_at(history, "off", at(-1)) is None
    assert value_at(history, "off", at(0)) == 1.0
    assert value_at(history, "off", at(1.999)) == 1.0
    assert value_at(history, "off", at(2)) == 2.0  # valid_to is exclusive, valid_from inclusive
    assert value_at(history, "off", at(100)) == 2.0
    assert value_at(history, "other", at(1)) is None


def test_newest_start_then_most_specific_scope_wins():
    history = [v(1.0, 0), v(5.0, 3, 4), v(9.0, 0, scope="cohort:c"), v(0.5, 0, scope="fleet")]
    assert value_at(history, "off", at(1)) == 1.0  # device before cohort before fleet
    assert value_at(history, "off", at(3.5)) == 5.0  # a newer value replaces the open-ended one while in force
    assert value_at(history, "off", at(4)) == 1.0  # ... and the older one resumes after it
    assert value_at([history[2], history[3]], "off", at(1)) == 9.0
    naive = datetime(2026, 6, 1, 1)  # naive datetimes read as UTC
    assert value_at(history, "off", naive) == 1.0


def test_values_at_and_next_change():
    history = [v(1.0, 0, 2), v(3.0, 1, name="site")]
    assert values_at(history, at(0.5)) == {"off": 1.0}
    assert values_at(history, at(1.5)) == {"off": 1.0, "site": 3.0}
    assert next_change(history, at(0.5)) == at(1)
    assert next_change(history, at(1.5)) == at(2)
    assert next_change(history, at(3)) is None


def test_point_in_time_join_never_uses_a_value_set_after_capture():
    """The leakage test: a value that starts after a sample was captured is never joined to it."""
    history = [
        v(1.0, 0, scope="device:d1"),
        v(100.0, 5, scope="device:d1"),  # set later: the recalibration after the samples below
        v(7.0, 0, scope="cohort:north"),
        v(70.0, 5, scope="cohort:north"),
        v(0.5, 0, scope="fleet", name="site"),
    ]
    rows = [
        ("d1", "north", at(1)),
        ("d1", "north", at(4.999)),
        ("d2", "north", at(2)),
        ("d3", None, at(2)),
        ("d1", "north", at(6)),
    ]
    joined = join_batch(rows, history)
    assert joined == [
        {"off": 1.0, "site": 0.5},
        {"off": 1.0, "site": 0.5},
        {"off": 7.0, "site": 0.5},  # no device value: its cohort's
        {"off": None, "site": 0.5},
        {"off": 100.0, "site": 0.5},  # captured after the new value started: it was in force
    ]
    for (_, _, captured), row in zip(rows, joined, strict=True):
        if captured < at(5):
            assert row["off"] not in (100.0, 70.0)
    assert join_batch(rows[:1], history, names=["off"]) == [{"off": 1.0}]
    # the same answer as value_at over the device's own history
    own = [h for h in history if h.scope in ("device:d1", "cohort:north", "fleet")]
    for _, _, captured in rows[:2]:
        assert value_at(own, "off", captured) == 1.0


def test_wire_form_round_trips_and_refuses_nonsense():
    value = v(1.5, 0, 2, scope="cohort:north")
    assert BatchFeatureValue.from_wire(value.to_wire()) == value
    with pytest.raises(FeatureSpecError, match="scope"):
        BatchFeatureValue.from_wire({**value.to_wire(), "scope": "planet:x"})
    with pytest.raises(FeatureSpecError, match="valid_to .* is not after valid_from"):
        BatchFeatureValue.from_wire({**value.to_wire(), "valid_to": value.to_wire()["valid_from"]})
    with pytest.raises(FeatureSpecError, match="value: expected a finite number"):
        BatchFeatureValue.from_wire({**value.to_wire(), "value": "1"})


def test_batch_values_follow_a_mutated_mapping_and_reuse_a_read_only_one():
    from types import MappingProxyType

    spec = FeatureSpec.from_dict(SPEC)
    raw = np.array([[1.0, 2.0, 0.0]])
    row = {"site": 1.0}
    assert spec.transform(raw, row)[0, -1] == 1.0
    row["site"] = 2.0  # a caller reusing its dict: never a stale value
    assert spec.transform(raw, row)[0, -1] == 2.0
    frozen = MappingProxyType({"site": 3.0})
    assert spec.transform(raw, frozen)[0, -1] == 3.0
    assert spec.batch_values(frozen) is spec.batch_values(frozen)  # resolved once (the agent's path)


def test_the_quick_range_check_agrees_with_the_full_one():
    spec = FeatureSpec.from_dict({"version": "u", "input": {"shape": [4], "range": [0, 1]}})
    assert spec.check(np.array([[0.0, 0.5, 1.0, 1.0]])) == []
    assert spec.check(np.array([[0.0, 0.5, 1.0, np.nan]])) == ["feature 3: 1 value(s) outside [0, 1], e.g. nan in item 0"]
    assert spec.check(np.array([[0.0, -np.inf, 1.0, 0.0]])) == ["feature 1: 1 value(s) outside [0, 1], e.g. -inf in item 0"]
