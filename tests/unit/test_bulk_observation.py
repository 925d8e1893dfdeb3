"""Telemetry off the request path: calls binned in bulk give exactly the sums of binning each call.

``RoleAccumulator.record`` (one call at a time, what the agent did on every request
before) is the reference; ``measure_many``/``add_bulk`` (what the telemetry thread
does now with the calls the model host queued) must produce the same summary for
the same calls, whatever their shapes, values and errors.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import parse_config
from agent.host import InferenceRecord, ModelHost
from agent.link import MqttLink
from agent.runtime import LoadedModel, load_model
from agent.telemetry import Telemetry
from agent.telemetry.window import RoleAccumulator, SummarySpec, latency_counts
from firmware_sim.modelgen import N_CLASSES, N_FEATURES, float_onnx
from shared.manifest import Manifest
from shared.telemetry import LATENCY_EDGES_MS, N_LATENCY_BUCKETS, latency_bucket

pytestmark = pytest.mark.unit

EDGES = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
OWN = np.array([-1.0, 0.0, 2.0])
SPECS = {
    "shared-edges": SummarySpec(("a", "b", "c"), (EDGES, EDGES, EDGES), 4, None, np.array([[0.0, 1.0]] * 3)),
    "own-edges": SummarySpec(("a", "b", "c"), (EDGES, EDGES, OWN), 4, None, None),
    "regression": SummarySpec(("a", "b", "c"), (EDGES, EDGES, EDGES), 0, np.array([0.0, 0.5, 1.0])),
}


def per_call(spec: SummarySpec, calls: list[tuple[float, Any, Any]]) -> dict[str, Any]:
    """The summary as the agent built it before: each call binned on its own, with its fallback."""
    acc = RoleAccumulator("m", 1, "s" * 64, spec)
    for latency, x, out in calls:
        error = out is None
        try:
            parts = acc.measure(latency, x, out, error)
        except (ValueError, TypeError):
            parts = acc.measure(latency, None, None, error)
        assert acc.add(parts)
    return acc.close()


def bulk(spec: SummarySpec, calls: list[tuple[float, Any, Any]]) -> dict[str, Any]:
    acc = RoleAccumulator("m", 1, "s" * 64, spec)
    assert acc.add_bulk(acc.measure_many([c[0] for c in calls], [c[1] for c in calls], [c[2] for c in calls]))
    return acc.close()


value = st.one_of(st.sampled_from([-1.0, 0.0, 0.25, 1.0, 2.0, float("nan"), float("inf"), -float("inf")]), st.floats(-2, 3))


@st.composite
def calls(draw: Any, uniform: bool) -> list[tuple[float, Any, Any]]:
    rows = draw(st.integers(1, 3))
    out_cols = draw(st.sampled_from([4, 1]))
    n = draw(st.integers(1, 25))
    out = []
    for _ in range(n):
        r = rows if uniform else draw(st.integers(1, 3))
        cols = 3 if uniform else draw(st.sampled_from([3, 3, 2]))  # 2 columns: no feature histograms
        x = np.array(draw(st.lists(st.lists(value, min_size=cols, max_size=cols), min_size=r, max_size=r)))
        y = np.array(draw(st.lists(st.lists(st.floats(0, 1), min_size=out_cols, max_size=out_cols), min_size=r, max_size=r)))
        if not uniform and draw(st.booleans()):
            x = x.astype(np.float32)
        if not uniform and r > 1 and draw(st.integers(0, 5)) == 0:
            y = y[:1]  # fewer output rows than input rows
        failed = draw(st.integers(0, 9)) == 0
        latency = draw(st.one_of(st.sampled_from(LATENCY_EDGES_MS[:5]), st.floats(0.0, 100_000.0)))
        out.append((latency, x, None if failed else y))
    return out


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
@settings(max_examples=40, deadline=None)
@given(batch=st.one_of(calls(uniform=True), calls(uniform=False)))
def test_bulk_binning_equals_binning_each_call(spec: SummarySpec, batch: list[tuple[float, Any, Any]]) -> None:
    assert bulk(spec, batch) == per_call(spec, batch)


def test_latency_counts_equal_the_scalar_bucket_function_on_every_edge() -> None:
    values = [0.0, *LATENCY_EDGES_MS, *(e * 1.0000001 for e in LATENCY_EDGES_MS), 1e9]
    expected = np.zeros(N_LATENCY_BUCKETS, dtype=np.int64)
    for v in values:
        expected[latency_bucket(v)] += 1
    assert latency_counts(values).tolist() == expected.tolist()


def _model(version: int = 3) -> LoadedModel:
    rng = np.random.default_rng(version)
    onnx = float_onnx(rng.normal(size=(N_FEATURES, N_CLASSES)).astype(np.float32), np.zeros(N_CLASSES, np.float32))
    edges = [0.0, 4.0, 8.0, 12.0, 16.0]
    manifest = Manifest.from_dict(
        {
            "schema": 1,
            "name": "tiny",
            "version": version,
            "label": "tiny",
            "runtime": "onnx",
            "model_file": "model.onnx",
            "model_sha256": hashlib.sha256(onnx).hexdigest(),
            "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, N_FEATURES]}],
            "outputs": [{"name": "probs", "dtype": "float32", "shape": [-1, N_CLASSES]}],
            "golden": {
                "vectors": [{"inputs": {"input": [[0.0] * N_FEATURES]}, "outputs": {"probs": [[0.1] * N_CLASSES]}}],
                "atol": 1e-4,
            },
            "latency_budget_ms": 5.0,
            "reference": {
                "features": [{"name": f"px{i}", "bin_edges": edges, "range": [0.0, 16.0]} for i in range(N_FEATURES)],
                "predictions": {"classes": [str(c) for c in range(N_CLASSES)]},
            },
        }
    )
    return load_model(manifest, onnx, f"{version:064x}")


def _telemetry(tmp_path: Path, host: ModelHost) -> Telemetry:
    cfg = parse_config({"device_id": "d1", "data_dir": str(tmp_path), "director_public_keys": ["0" * 64]})
    link = MqttLink(cfg, lambda: 0, lambda p: None, lambda: None)  # never started
    seq = iter(range(1, 1_000_000))
    tel = Telemetry(cfg, host, link, lambda: next(seq), "test")
    host.recording, host.on_backlog = True, tel.flush  # what ``Telemetry.start`` does, without its threads
    return tel


def test_the_window_of_recorded_calls_equals_the_summary_of_each_call_binned_inline(tmp_path: Path) -> None:
    host = ModelHost()
    model = _model()
    host.swap("production", model)
    tel = _telemetry(tmp_path, host)
    host.backlog_limit = 64  # some calls are drained by a request (the backlog path), the rest by ``flush``
    rng = np.random.default_rng(1)
    x = rng.uniform(-2.0, 18.0, size=(300, N_FEATURES)).astype(np.float32)
    x[5, 3], x[9, 0] = np.nan, np.inf
    buffer = np.zeros((1, N_FEATURES), np.float32)  # one buffer the caller reuses: telemetry must copy it
    seen: list[InferenceRecord] = []
    host.observers.append(seen.append)  # the same arrays and latencies the queued calls carry
    for i in range(len(x)):
        if i % 3 == 0:
            buffer[:] = x[i : i + 1]
            host.predict_arrays(buffer)
        elif i % 3 == 1:
            view = np.frombuffer(x[i : i + 1].tobytes(), dtype=np.float32).reshape(1, N_FEATURES)  # as the socket delivers
            host.predict_arrays(view)
        else:
            host.predict(x[i : i + 2].tolist())  # a batch of two rows
        if i % 50 == 0:
            with pytest.raises(ValueError):
                host.predict_arrays(np.zeros((1, 3), np.float32))
    tel.flush()
    assert not host.pending
    got = tel.builder.current("production")
    assert got is not None
    reference = RoleAccumulator.for_manifest(model.manifest, model.sha256)
    for r in seen:
        first = r.inputs.get("input") if isinstance(r.inputs, dict) else r.inputs
        out = r.outputs["probs"] if r.outputs is not None else None
        reference.add(reference.measure(r.latency_ms, first, out, r.outputs is None))
    summary, expected = got.summary(), reference.summary()
    assert summary == expected
    assert summary["count"] == len(x) + 6 and summary["errors"] == 6 and summary["quality"]["nan"][3] == 1
    feats = np.concatenate([x[i : i + 1] if i % 3 != 2 else x[i : i + 2] for i in range(len(x))])
    assert summary["samples"] == len(feats)
    whole = RoleAccumulator.for_manifest(model.manifest, model.sha256)  # every input row at once, from the source data
    whole.add(whole.measure(1.0, feats, np.zeros((len(feats), N_CLASSES))))
    assert summary["features"] == whole.summary()["features"] and summary["quality"] == whole.summary()["quality"]


def test_feedback_finds_a_prediction_not_yet_binned_and_a_swap_closes_the_window(tmp_path: Path) -> None:
    host = ModelHost()
    host.swap("production", _model(3))
    tel = _telemetry(tmp_path, host)
    x = np.full((1, N_FEATURES), 3.0, np.float32)
    r = host.predict_arrays(x)
    assert len(host.pending) == 1
    label = int(r.outputs["probs"].argmax())
    assert tel.feedback(r.prediction_id, label) == {"ok": True, "correct": True}
    acc = tel.builder.current("production")
    assert acc is not None and acc.summary()["labels"] == {"count": 1, "correct": 1}
    host.predict_arrays(x)
    host.swap("production", _model(4))
    host.predict_arrays(x)
    windows = tel.windows
    tel.flush()
    assert tel.windows == windows + 1  # the old model's window closed before the new model's calls
    acc = tel.builder.current("production")
    assert acc is not None and acc.version == 4 and acc.summary()["count"] == 1
    tel.queue.close()
    tel.predlog.close()


def test_a_busy_window_writes_its_predictions_to_the_log_before_it_closes(tmp_path: Path) -> None:
    from agent.telemetry.service import UNLOGGED_MAX

    host = ModelHost()
    host.swap("production", _model(3))
    tel = _telemetry(tmp_path, host)
    x = np.full((1, N_FEATURES), 3.0, np.float32)
    first = host.predict_arrays(x).prediction_id
    for _ in range(UNLOGGED_MAX):
        host.predict_arrays(x)
    tel.flush()
    assert tel.predlog.get(first) is not None  # on disk while the window is still open
    assert len(tel._unlogged) < UNLOGGED_MAX
    tel.queue.close()
    tel.predlog.close()


def test_feedback_waits_for_a_flush_that_has_taken_its_prediction(tmp_path: Path) -> None:
    # The telemetry thread's flush takes the queued calls, then bins them; feedback arriving in between found
    # neither a queued call nor a remembered prediction and answered "unknown prediction_id" (a local app
    # labelling right after predicting, on a loaded device).
    import threading

    host = ModelHost()
    host.swap("production", _model(3))
    tel = _telemetry(tmp_path, host)
    x = np.full((1, N_FEATURES), 3.0, np.float32)
    r = host.predict_arrays(x)
    label = int(r.outputs["probs"].argmax())
    answer: list[dict[str, Any]] = []
    with tel._close_lock:  # the telemetry thread mid-flush
        taken = host.take_pending()
        assert not host.pending
        asker = threading.Thread(target=lambda: answer.append(tel.feedback(r.prediction_id, label)))
        asker.start()
        asker.join(0.3)
        tel._add_group(taken)
    asker.join(5)
    assert answer == [{"ok": True, "correct": True}]
    tel.queue.close()
    tel.predlog.close()
