"""Both runtimes with real int8 models: ONNX (onnxruntime's quantizer) and LiteRT (TensorFlow's converter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.ota.state import State
from agent.runtime import golden_check, load_model
from firmware_sim.modelgen import load_digits, make_tflite_bundle
from shared import bundle as bundle_fmt
from tests.otalab import Lab

pytestmark = pytest.mark.integration
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "digits_int8.tflite"


@pytest.fixture(scope="module")
def tflite_bundle():
    return make_tflite_bundle(FIXTURE.read_bytes(), version=1)


def accuracy(model, n=300):
    x, y = load_digits()
    preds = [int(np.argmax(model.predict(x[i : i + 1])["probs"])) for i in range(n)]
    return float(np.mean(np.array(preds) == y[:n]))


def test_litert_serves_a_full_integer_int8_model_with_manifest_quantization(tflite_bundle):
    b = bundle_fmt.read(tflite_bundle)
    spec_in, spec_out = b.manifest.inputs[0], b.manifest.outputs[0]
    assert spec_in.dtype == spec_out.dtype == "int8" and spec_in.quantization and spec_out.quantization
    model = load_model(b.manifest, b.model, "0" * 64)
    assert model.runtime.module == "ai_edge_litert.interpreter"
    golden_check(model)
    q = model.quantize({"input": np.full((1, 64), 0.5, np.float32)})["input"]
    assert q.dtype == np.int8
    assert int(q[0, 0]) == int(np.clip(round(0.5 / spec_in.quantization.scale) + spec_in.quantization.zero_point, -128, 127))
    out = model.predict([[0.5] * 64])["probs"]
    assert out.dtype == np.float32 and abs(float(out.sum()) - 1.0) < 0.05  # dequantized probabilities
    assert accuracy(model) > 0.85


def test_onnx_model_is_int8_quantized_and_accurate(make_bundle):
    import onnx

    b = bundle_fmt.read(make_bundle(1))
    ops = {n.op_type for n in onnx.load_from_string(b.model).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    model = load_model(b.manifest, b.model, "0" * 64)
    golden_check(model)
    assert accuracy(model) > 0.85


def test_tflite_bundle_installs_through_the_verified_path(tmp_path, tflite_bundle):
    lab = Lab(tmp_path / "lab")
    try:
        up = lab.updater(tmp_path / "dev")
        up.apply(lab.desired("lab-dev", lab.publish(tflite_bundle)))
        assert up.store.ota.state is State.COMMITTED, lab.events
        assert up.running()["production"].runtime == "tflite"
        x, y = load_digits()
        assert int(np.argmax(up.host.predict(x[:1].tolist())["outputs"]["probs"])) == y[0]
    finally:
        lab.close()


def test_corrupt_tflite_model_is_a_load_error_not_a_crash(tflite_bundle):
    from agent.runtime import ModelLoadError

    b = bundle_fmt.read(tflite_bundle)
    with pytest.raises(ModelLoadError, match="cannot load tflite model"):
        load_model(b.manifest, b"TFL3" + b"\0" * 100, "0" * 64)


@pytest.mark.slow
def test_litert_falls_back_to_tensorflow_lite_when_the_others_are_missing(tflite_bundle, tmp_path):
    """In a fresh interpreter where ai_edge_litert and tflite_runtime cannot be imported."""
    (tmp_path / "b.tar").write_bytes(tflite_bundle)
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ai_edge_litert', 'tflite_runtime'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from pathlib import Path\n"
        "from shared import bundle\n"
        "from agent.runtime import load_model, golden_check\n"
        f"b = bundle.read(Path({str(tmp_path / 'b.tar')!r}))\n"
        "m = load_model(b.manifest, b.model, '0' * 64)\n"
        "golden_check(m)\n"
        "print(m.runtime.module)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "tensorflow.lite.python.interpreter"


@pytest.mark.slow
def test_tensorflow_converter_makes_a_full_integer_model():
    from firmware_sim.modelgen import make_tflite_model

    bundle = make_tflite_bundle(make_tflite_model(epochs=50), version=2)
    b = bundle_fmt.read(bundle)
    assert b.manifest.inputs[0].dtype == "int8"
    golden_check(load_model(b.manifest, b.model, "0" * 64))


def test_litert_resizes_for_a_new_batch_and_back(tflite_bundle):
    b = bundle_fmt.read(tflite_bundle)
    rt = load_model(b.manifest, b.model, "0" * 64).runtime
    x, _ = load_digits()
    q = np.clip(np.round(x[:3] * 8), -128, 127).astype(np.int8)
    one = [rt.run({"input": q[i : i + 1]})["probs"] for i in range(3)]
    three = rt.run({"input": q})["probs"]
    assert three.shape[0] == 3
    np.testing.assert_array_equal(three, np.concatenate(one))
    np.testing.assert_array_equal(rt.run({"input": q[1:2]})["probs"], one[1])  # back to one row
    with pytest.raises(ValueError, match="expected dtype int8, got float32"):
        rt.run({"input": x[:1]})
