"""The lean predict path: input checks, the ONNX core call, probes, observers, prediction ids.

A real (tiny, untrained) float ONNX model served by the real onnxruntime.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

from agent.host import InferenceRecord, ModelHost
from agent.runtime import LoadedModel, load_model
from firmware_sim.modelgen import N_CLASSES, N_FEATURES, float_onnx
from shared.manifest import Manifest

pytestmark = pytest.mark.unit


def _model(batch: int | None = 1) -> LoadedModel:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(N_FEATURES, N_CLASSES)).astype(np.float32)
    b = np.zeros(N_CLASSES, dtype=np.float32)
    onnx = float_onnx(w, b)
    dim = -1 if batch is None else batch
    golden = {"inputs": {"input": [[0.0] * N_FEATURES]}, "outputs": {"probs": [[0.1] * N_CLASSES]}}  # not checked here
    manifest = Manifest.from_dict(
        {
            "schema": 1,
            "name": "tiny",
            "version": 3,
            "label": "tiny",
            "runtime": "onnx",
            "model_file": "model.onnx",
            "model_sha256": hashlib.sha256(onnx).hexdigest(),
            "inputs": [{"name": "input", "dtype": "float32", "shape": [dim, N_FEATURES]}],
            "outputs": [{"name": "probs", "dtype": "float32", "shape": [dim, N_CLASSES]}],
            "golden": {"vectors": [golden], "atol": 1e-4},
            "latency_budget_ms": 5.0,
        }
    )
    return load_model(manifest, onnx, "0" * 64)


def test_fixed_shape_accepts_exact_and_rejects_others():
    m = _model(batch=1)
    x = np.ones((1, N_FEATURES), dtype=np.float32)
    assert m.coerce_inputs(x)["input"].shape == (1, N_FEATURES)
    assert m.coerce_inputs({"input": x.tolist()})["input"].dtype == np.float32
    for bad in (np.ones((2, N_FEATURES)), np.ones(N_FEATURES), np.ones((1, N_FEATURES + 1))):
        with pytest.raises(ValueError, match="expected shape"):
            m.coerce_inputs(bad)
    with pytest.raises(ValueError, match="missing input 'input'"):
        m.coerce_inputs({"other": x})


def test_dynamic_dimension_accepts_any_batch_but_checks_the_rest():
    m = _model(batch=None)
    for n in (1, 3):
        out = m.predict(np.ones((n, N_FEATURES)).tolist())
        assert out["probs"].shape == (n, N_CLASSES)
    with pytest.raises(ValueError, match="expected shape"):
        m.coerce_inputs(np.ones((3, N_FEATURES - 1)))
    with pytest.raises(ValueError, match="expected shape"):
        m.coerce_inputs(np.ones((1, 1, N_FEATURES)))


def test_onnx_core_call_matches_the_public_session_api():
    m = _model()
    x = np.linspace(0, 1, N_FEATURES, dtype=np.float32).reshape(1, N_FEATURES)
    session: Any = m.runtime._session  # type: ignore[attr-defined]
    expected = session.run(["probs"], {"input": x})[0]
    np.testing.assert_array_equal(m.predict(x)["probs"], expected)
    with pytest.raises(Exception, match="(?i)input"):  # the C++ session still validates the feed
        m.runtime.run({"input": x.astype(np.float64)})


def test_probe_and_observers_see_every_inference():
    host = ModelHost()
    m = _model()
    host.swap("production", m)
    seen: list[InferenceRecord] = []
    x = np.ones((1, N_FEATURES), dtype=np.float32)
    ids = {host.predict(x)["prediction_id"] for _ in range(3)}  # no observer, no probe: the bare path
    host.observers.append(seen.append)
    probe = host.probe("production", m)
    out = host.predict(x.tolist())
    assert out["model"] == "tiny" and out["version"] == 3 and out["role"] == "production"
    assert len(out["outputs"]["probs"][0]) == N_CLASSES
    ids.add(out["prediction_id"])
    assert len(ids) == 4  # unique per call
    with pytest.raises(ValueError):
        host.predict(np.ones((1, 2)))  # the caller's error: seen, not counted against the model
    assert probe.ok == 1 and probe.errors == 0
    assert [r.error is None for r in seen] == [True, False]
    assert seen[0].prediction_id == out["prediction_id"] and seen[0].latency_ms > 0
    host.unprobe("production")
    host.predict(x)
    assert probe.ok == 1 and len(seen) == 3


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_quantize_and_dequantize_equal_the_manifest_formulas_exactly(dtype):
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    scale, zp = 0.0627451, (-5 if dtype == "int8" else 131)
    spec = {"dtype": dtype, "shape": [-1, 4], "quantization": {"scale": scale, "zero_point": zp}}
    manifest = Manifest.from_dict(
        {
            "schema": 1,
            "name": "q",
            "version": 1,
            "label": "q",
            "runtime": "tflite",
            "model_file": "model.tflite",
            "model_sha256": "0" * 64,
            "inputs": [{"name": "x", **spec}],
            "outputs": [{"name": "y", **spec}],
            "golden": {"vectors": [{"inputs": {"x": [[0.0] * 4]}, "outputs": {"y": [[0.0] * 4]}}], "atol": 1e-4},
            "latency_budget_ms": 5.0,
        }
    )
    m = LoadedModel(manifest, "0" * 64, runtime=None, loaded_at=0.0)  # type: ignore[arg-type]  # pure math only
    rng = np.random.default_rng(1)
    ties = (np.arange(-300, 300, dtype=np.float32) + 0.5) * np.float32(scale)  # halfway cases round to even
    x = np.concatenate([rng.normal(0, 10, 4000).astype(np.float32), ties, [1e9, -1e9, 0.0, -0.0]]).astype(np.float32)
    x = x[: len(x) // 4 * 4].reshape(-1, 4)
    expected_q = np.clip(np.round(x / scale) + zp, lo, hi).astype(dtype)
    got_q = m.quantize({"x": x})["x"]
    assert got_q.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got_q, expected_q)
    codes = np.arange(256, dtype=np.uint8).view(dtype).reshape(-1, 4)
    expected_f = (codes.astype(np.float32) - zp) * np.float32(scale)
    got_f = m.dequantize({"y": codes.copy()})["y"]
    assert got_f.dtype == np.float32 and got_f.shape == codes.shape
    np.testing.assert_array_equal(got_f, expected_f)
    wide = codes.astype(np.int32)  # a runtime handing back another integer type: the formula itself
    np.testing.assert_array_equal(m.dequantize({"y": wide})["y"], (wide.astype(np.float32) - zp) * np.float32(scale))
