"""Datasets: capture batches to Parquet partitions, immutable hashed snapshots, labels and batch features
joined point in time, and the quality gate's refusals."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from controller.pipeline import datasets as dsets
from controller.pipeline import demo, gate
from shared.features import BatchFeatureValue, FeatureSpec, value_at

pytestmark = pytest.mark.unit
DAY = 86400.0
T0 = 1_790_000_000.0


def write_batch(capture: Path, device: str, rows: list[dict], first: int = 1) -> Path:
    """A capture batch as ``POST /v1/capture/{device}`` stores it."""
    folder = capture / device
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{first:012d}-{first + len(rows) - 1:012d}.jsonl"
    lines = [json.dumps({"id": first + i, **r}, separators=(",", ":")) for i, r in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def sample(x: np.ndarray, ts: float, label: int | None, pid: str = "", version: int = 1) -> dict:
    """A capture sample: the raw item the app sent and the model inputs the device made of it."""
    raw = np.asarray(x, dtype=np.float64)
    inputs = np.clip(raw / 16, 0, 1)
    return {"ts": ts, "role": "production", "model": "digits", "version": version, "inputs": inputs.tolist(),
            "raw": raw.tolist(), "prediction": None, "label": label, "prediction_id": pid}  # fmt: skip


@pytest.fixture
def fleet(tmp_path: Path):
    x, y = demo.load_raw()
    capture = tmp_path / "capture"
    for d, dev in enumerate(("d1", "d2", "d3")):
        rows = [sample(x[i], T0 + i * 600.0, int(y[i]) if i % 4 else None, f"p{dev}-{i}") for i in range(d, 600, 3)]
        write_batch(capture, dev, rows)
    devices = {
        "d1": dsets.DeviceInfo(("north",), "pi4"),
        "d2": dsets.DeviceInfo(("north", "south"), "pi5"),
        "d3": dsets.DeviceInfo((), "jetson"),
    }
    return capture, tmp_path / "datasets", devices


def test_export_writes_partitions_by_model_cohort_and_day_once(fleet) -> None:
    capture, root, devices = fleet
    rep = dsets.export_captures(capture, root, devices)
    assert rep.batches == 3 and rep.samples == 600 and rep.skipped == {}
    cohorts = {p.name for p in (root / "samples" / "model=digits").iterdir()}
    assert cohorts == {"cohort=north", "cohort=south", "cohort=_none"}
    days = {p.name for p in (root / "samples" / "model=digits" / "cohort=north").iterdir()}
    assert len(days) == 5  # 600 samples, 10 minutes apart: a little over four days
    again = dsets.export_captures(capture, root, devices)
    assert again.batches == 0 and again.files == []
    rows = dsets.sql(root, "SELECT cohort, count(*) FROM samples GROUP BY cohort ORDER BY cohort")
    assert rows == [("_none", 200), ("north", 400), ("south", 200)]


def test_a_bad_line_is_skipped_counted_and_kept(fleet) -> None:
    capture, root, devices = fleet
    path = write_batch(capture, "d1", [sample(np.zeros(64), T0, 1)], first=5000)
    path.write_text(path.read_text() + "{not json\n" + json.dumps({"id": 5001, "model": "Bad Name!", "ts": T0}) + "\n")
    rep = dsets.export_captures(capture, root, devices)
    assert rep.skipped == {"not JSON": 1, "bad model name": 1}
    assert path.exists()  # the stored batch is never touched


def test_snapshot_is_immutable_and_its_hash_reproducible(fleet, tmp_path: Path) -> None:
    capture, root, devices = fleet
    dsets.export_captures(capture, root, devices)
    q = dsets.Query("digits")
    a = dsets.snapshot(root, q)
    assert len(a) == 600  # d2's samples are in two cohort partitions, counted once
    assert a.cohorts[a.device_id.tolist().index("d2")] == ["north", "south"]
    other = tmp_path / "elsewhere"
    dsets.export_captures(capture, other, devices)
    assert dsets.snapshot(other, q).sha256 == a.sha256  # same inputs, same hash, on another root
    north = dsets.snapshot(root, dsets.Query("digits", cohorts=("north",)))
    assert len(north) == 400 and north.sha256 != a.sha256
    data = a.path / "data.parquet"
    data.write_bytes(dsets.snapshot(root, dsets.Query("digits", until=T0 + DAY)).path.joinpath("data.parquet").read_bytes())
    with pytest.raises(dsets.DatasetError, match="does not match its hash"):
        dsets.load(root, a.sha256)


def test_labels_stored_by_the_controller_win_over_the_captured_ones(fleet) -> None:
    capture, root, devices = fleet
    dsets.export_captures(capture, root, devices)
    plain = dsets.snapshot(root, dsets.Query("digits"))
    assert int(plain.labelled.sum()) == 450  # every fourth sample was captured without a label
    late = dsets.labels_table([("d1", "pd1-0", 7), ("d2", "pd2-4", 3)])  # d1's first: none captured; d2's: relabelled
    ds = dsets.snapshot(root, dsets.Query("digits"), labels=late)
    row = {(d, int(s)): int(lab) for d, s, lab in zip(ds.device_id, ds.sample_id, ds.label, strict=True)}
    assert row[("d1", 1)] == 7 and row[("d2", 2)] == 3
    assert ds.sha256 != plain.sha256


def test_batch_features_join_point_in_time_with_no_leakage_from_the_future(fleet) -> None:
    capture, root, devices = fleet
    dsets.export_captures(capture, root, devices)

    def at(t: float) -> datetime:
        return datetime.fromtimestamp(t, timezone.utc)

    history = [
        BatchFeatureValue("dark_level", 0.5, at(T0 - DAY), None, "fleet"),
        BatchFeatureValue("dark_level", 1.0, at(T0), at(T0 + DAY), "device:d1"),
        BatchFeatureValue("dark_level", 2.0, at(T0 + DAY), None, "device:d1"),  # computed later: never reaches earlier samples
        BatchFeatureValue("dark_level", 3.0, at(T0 + 2 * DAY), at(T0 + 3 * DAY), "cohort:south"),
        BatchFeatureValue("dark_level", 4.0, at(T0 + 2.5 * DAY), None, "cohort:north"),
        BatchFeatureValue("gain", 9.0, at(T0 + DAY), None, "device:d3"),
    ]
    ds = dsets.snapshot(root, dsets.Query("digits", batch_features=("dark_level", "gain")), batch=dsets.batch_table(history))
    for name in ("dark_level", "gain"):
        got = ds.batch[name]
        for i in range(len(ds)):
            scopes = {f"device:{ds.device_id[i]}", "fleet", *(f"cohort:{c}" for c in ds.cohorts[i])}
            expected = value_at([v for v in history if v.scope in scopes], name, at(float(ds.ts[i])))
            assert (np.isnan(got[i]) and expected is None) or got[i] == expected, (name, ds.device_id[i], ds.ts[i])
    dark = ds.batch["dark_level"]
    d1 = ds.device_id == "d1"
    assert set(dark[d1 & (ds.ts < T0 + DAY)]) == {1.0} and set(dark[d1 & (ds.ts >= T0 + DAY)]) == {2.0}
    assert set(dark[(ds.device_id == "d3")]) == {0.5}  # in no cohort: the fleet's value
    assert np.isnan(ds.batch["gain"][ds.ts < T0 + DAY]).all()


def test_holdout_split_is_stable_whatever_else_is_in_the_dataset(fleet) -> None:
    capture, root, devices = fleet
    dsets.export_captures(capture, root, devices)
    full = dsets.snapshot(root, dsets.Query("digits"))
    part = dsets.snapshot(root, dsets.Query("digits", cohorts=("north",)))
    held = {(d, int(s)) for d, s, h in zip(full.device_id, full.sample_id, full.holdout_mask(), strict=True) if h}
    held_part = {(d, int(s)) for d, s, h in zip(part.device_id, part.sample_id, part.holdout_mask(), strict=True) if h}
    assert held_part == {k for k in held if k[0] in ("d1", "d2")}
    assert 0.1 < len(held) / len(full) < 0.3


def test_a_prediction_captured_twice_is_one_row_on_one_side_of_the_split(tmp_path: Path) -> None:
    """The agent captures a sampled prediction when it is served and again when its label comes, under two
    sample ids; a label posted later reaches both copies by prediction id. The snapshot keeps one row (the
    labelled copy, captured at the first copy's time) and no raw input is both trained on and held out."""
    x, y = demo.load_raw()
    capture, root = tmp_path / "capture", tmp_path / "datasets"
    n = 300
    served = [sample(x[i], T0 + i * 60.0, None, f"run1-{i:x}") for i in range(n)]
    labelled = [sample(x[i], T0 + i * 60.0 + 30.0, int(y[i]), f"run1-{i:x}") for i in range(0, n, 2)]
    write_batch(capture, "d1", served, first=1)
    write_batch(capture, "d1", labelled, first=n + 1)
    dsets.export_captures(capture, root, {"d1": dsets.DeviceInfo(("north", "south"), "pi4")})
    late = dsets.labels_table([("d1", f"run1-{i:x}", int(y[i])) for i in range(1, n, 2)])  # the others, by the API
    ds = dsets.snapshot(root, dsets.Query("digits"), labels=late)

    held = ds.holdout_mask(0.5)
    trained_on = {r.tobytes() for r, h in zip(ds.raw, held, strict=True) if not h}
    held_out = {r.tobytes() for r, h in zip(ds.raw, held, strict=True) if h}
    assert trained_on and held_out and not trained_on & held_out
    assert len(ds) == n and sorted(ds.ts.tolist()) == [T0 + i * 60.0 for i in range(n)]
    assert ds.label.tolist() == [int(y[round((t - T0) / 60.0)]) for t in ds.ts]  # every row labelled, its own label
    first_copies = set(range(1, n + 1))
    assert {int(s) for s in ds.sample_id if int(s) in first_copies} == {i + 1 for i in range(1, n, 2)}  # labelled won
    assert dsets.snapshot(root, dsets.Query("digits", until=T0 + 60.0), labels=late).sample_id.tolist() == [n + 1]


def test_a_wiped_devices_two_spools_are_distinct_samples_each_with_its_own_batch_value(tmp_path: Path) -> None:
    """A device wiped between two days: its second spool's sample ids start at 1 again under another spool id.
    Both generations are kept (with an older agent's batch, with no spool id, beside them), one row each, and
    the batch-feature join keys on (device, spool, sample id): no value of one generation reaches the other."""
    x, _ = demo.load_raw()
    capture, root = tmp_path / "capture", tmp_path / "datasets"
    folder = capture / "d1"
    folder.mkdir(parents=True)
    for spool, start in (("aaaa0000aaaa0000", T0), ("bbbb1111bbbb1111", T0 + DAY)):
        rows = [{"id": i + 1, "spool": spool, **sample(x[i], start + i * 60.0, None, "")} for i in range(3)]
        (folder / f"{spool}-000000000001-000000000003.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_batch(capture, "d1", [sample(x[9], T0 - DAY, 1, "")], first=1)  # an agent before spool ids
    rep = dsets.export_captures(capture, root, {"d1": dsets.DeviceInfo(("north",), "pi4")})
    assert rep.batches == 3 and rep.samples == 7 and rep.skipped == {}

    def at(t: float) -> datetime:
        return datetime.fromtimestamp(t, timezone.utc)

    history = [
        BatchFeatureValue("gain", 1.0, at(T0 - 2 * DAY), at(T0 + DAY), "device:d1"),
        BatchFeatureValue("gain", 2.0, at(T0 + DAY), None, "device:d1"),
    ]
    ds = dsets.snapshot(root, dsets.Query("digits", batch_features=("gain",)), batch=dsets.batch_table(history))
    keys = sorted(zip(ds.spool.tolist(), ds.sample_id.tolist(), strict=True))
    assert keys == [("", 1), ("aaaa0000aaaa0000", 1), ("aaaa0000aaaa0000", 2), ("aaaa0000aaaa0000", 3),
                    ("bbbb1111bbbb1111", 1), ("bbbb1111bbbb1111", 2), ("bbbb1111bbbb1111", 3)]  # fmt: skip
    assert len(set(ds.ts.tolist())) == 7
    gain = {(s, int(i)): float(g) for s, i, g in zip(ds.spool, ds.sample_id, ds.batch["gain"], strict=True)}
    assert [gain[("aaaa0000aaaa0000", i)] for i in (1, 2, 3)] == [1.0] * 3
    assert [gain[("bbbb1111bbbb1111", i)] for i in (1, 2, 3)] == [2.0] * 3
    assert gain[("", 1)] == 1.0
    assert dsets.load(root, ds.sha256).spool.tolist() == ds.spool.tolist()


def test_the_same_input_from_two_devices_is_on_one_side_of_the_split(tmp_path: Path) -> None:
    x, y = demo.load_raw()
    capture, root = tmp_path / "capture", tmp_path / "datasets"
    for dev in ("d1", "d2"):
        write_batch(capture, dev, [sample(x[i], T0 + i, int(y[i]), f"{dev}-{i}") for i in range(200)])
    dsets.export_captures(capture, root, {})
    ds = dsets.snapshot(root, dsets.Query("digits"))
    assert len(ds) == 400  # two predictions each: two rows
    held = ds.holdout_mask()
    side: dict[bytes, set[bool]] = {}
    for r, h in zip(ds.raw, held, strict=True):
        side.setdefault(r.tobytes(), set()).add(bool(h))
    assert len(side) == 200 and all(len(s) == 1 for s in side.values())
    assert 0.1 < held.mean() < 0.3


RULES = gate.GateRules(n_classes=10, min_labelled=100)


def gate_for(root: Path, capture: Path, devices, rows: list[dict], rules: gate.GateRules = RULES) -> gate.GateResult:
    write_batch(capture, "g1", rows)
    dsets.export_captures(capture, root, devices)
    ds = dsets.snapshot(root, dsets.Query("digits", cohorts=("gated",)))
    return gate.check(ds, FeatureSpec.from_dict(demo.feature_spec()), rules)


@pytest.fixture
def gated(tmp_path: Path):
    x, y = demo.load_raw()
    return x, y, tmp_path / "capture", tmp_path / "datasets", {"g1": dsets.DeviceInfo(("gated",))}


def test_the_gate_passes_a_good_dataset(gated) -> None:
    x, y, capture, root, devices = gated
    res = gate_for(root, capture, devices, [sample(x[i], T0 + i, int(y[i])) for i in range(300)])
    assert res.passed, res.reasons
    assert res.stats["labelled"] == 300


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("schema", "schema: 30 of 300 rows fit neither the feature spec's raw input [8, 8] nor its output [64]"),
        ("nan", "NaN: 30 rows (10.0%) hold NaN or infinity"),
        ("range", "ranges: 60 rows (20.0%) are outside the feature spec's valid ranges"),
        ("coverage", "label coverage: 120 of 300 rows (40.0%) are labelled"),
        ("size", "minimum size: 50 labelled rows; at least 100"),
        ("balance", "class balance: 1 classes below 2.0% of the labels (3: 0.0%)"),
        ("label", "schema: 5 labels outside 0..9"),
    ],
)
def test_the_gate_refuses_with_the_reason(gated, case: str, expected: str) -> None:
    x, y, capture, root, devices = gated
    n = 50 if case == "size" else 300
    rows = []
    for i in range(n):
        xi, label = x[i].copy(), int(y[i])
        if case == "schema" and i % 10 == 0:
            xi = xi[:63]
        if case == "nan" and i % 10 == 0:
            xi[5] = np.nan
        if case == "range" and i % 5 == 0:
            xi[0] = 40.0
        if case == "coverage" and i % 5 >= 2:
            label = None  # type: ignore[assignment]
        if case == "balance" and label == 3:
            label = 4
        if case == "label" and i < 5:
            label = 12
        rows.append(sample(np.asarray(xi), T0 + i, label))
    if case == "nan":  # JSON has no NaN: the agent would send null, which is not a number either
        for r in rows:
            r["inputs"] = [None if isinstance(v, float) and np.isnan(v) else v for v in r["inputs"]]
    res = gate_for(root, capture, devices, rows)
    assert not res.passed
    assert any(r.startswith(expected) for r in res.reasons), res.reasons


def test_training_inputs_take_the_batch_value_in_force_at_capture(fleet) -> None:
    """The pipeline's model inputs: the spec on each raw item with the dark level in force on its device then."""
    from controller.pipeline.run import model_inputs

    capture, root, devices = fleet
    dsets.export_captures(capture, root, devices)
    t = datetime.fromtimestamp(T0 + DAY, timezone.utc)
    history = [BatchFeatureValue("dark_level", 2.0, t, None, "device:d2")]
    ds = dsets.snapshot(root, dsets.Query("digits", batch_features=("dark_level",)), batch=dsets.batch_table(history))
    spec = FeatureSpec.from_dict(demo.feature_spec())
    got = model_inputs(spec, ds, np.arange(len(ds)))
    for i in range(len(ds)):
        value = value_at(
            history if ds.device_id[i] == "d2" else [], "dark_level", datetime.fromtimestamp(float(ds.ts[i]), timezone.utc)
        )
        expected = spec.transform(ds.raw[i].reshape(1, 8, 8), None if value is None else {"dark_level": value}, validate=False)
        assert np.array_equal(got[i], expected.reshape(-1)), (ds.device_id[i], ds.ts[i])
    shifted = (ds.device_id == "d2") & (ds.ts >= T0 + DAY)
    assert shifted.any() and not np.array_equal(
        got[shifted], model_inputs(spec, dsets.snapshot(root, dsets.Query("digits")), np.flatnonzero(shifted))
    )


@pytest.mark.parametrize("knob", ["brightness", "noise", "blur", "rotation"])
def test_each_sensor_degradation_changes_the_image_the_same_way_each_run(knob: str) -> None:
    x, _ = demo.load_raw()
    d = demo.Degradation(**{knob: demo.AGED_SENSOR.to_dict()[knob]})
    a, b = demo.degrade(x[:50], d, seed=3), demo.degrade(x[:50], d, seed=3)
    assert a.shape == (50, 64) and a.dtype == np.float32 and np.array_equal(a, b)  # seeded: the same drifted set
    assert not np.array_equal(a, x[:50]) and a.min() >= 0.0 and a.max() <= demo.MAX_PIXEL
    if knob == "brightness":
        assert a.mean() > x[:50].mean() + 1.0
    if knob == "noise":
        assert not np.array_equal(a, demo.degrade(x[:50], d, seed=4))
