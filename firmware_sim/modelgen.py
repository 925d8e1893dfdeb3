"""Make small real int8 models and their bundles, with no download.

``make_onnx_bundle`` trains a softmax regression on scikit-learn's bundled 8x8
digits (numpy only, well under a second), exports it to ONNX, quantizes it to
int8 with onnxruntime's static quantization (QDQ, calibrated on the training
data), and packs it with a manifest whose golden vectors come from the
quantized model itself.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from shared import bundle as bundle_fmt
from shared.features import FeatureSpec
from shared.manifest import Manifest

N_FEATURES, N_CLASSES = 64, 10
# The digits feature spec: an 8x8 image of 0..16 intensities from the sensor, less the device's
# dark level (a batch feature; 0 until one is set), scaled to 0..1 and flattened row-major.
DIGITS_FEATURES: dict[str, Any] = {
    "version": "digits-8x8-v1",
    "input": {"name": "pixels", "dtype": "float32", "shape": [8, 8], "range": [0, 16]},
    "steps": [
        {"op": "normalise", "mean": {"batch": "dark_level"}, "std": 16},
        {"op": "clip", "min": 0, "max": 1},
        {"op": "reshape", "shape": [N_FEATURES]},
    ],
    "batch": [{"name": "dark_level", "default": 0.0}],
}


def load_digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as the sensor gives them: (n, 8, 8) intensities 0..16, and the labels."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits as model inputs: the raw images through :data:`DIGITS_FEATURES` (n, 64) in 0..1."""
    raw, y = load_digits_raw()
    return FeatureSpec.from_dict(DIGITS_FEATURES).transform(raw), y


def golden_raw_vectors(
    run: Callable[[np.ndarray], np.ndarray], count: int, spec: dict[str, Any] = DIGITS_FEATURES
) -> list[dict[str, Any]]:
    """Golden vectors that cover the raw -> feature step: raw image, the features the spec makes
    of it, and the model's output for them; the last one with a dark level joined (when count > 1)."""
    fs = FeatureSpec.from_dict(spec)
    raw, _ = load_digits_raw()
    out = []
    for i in range(count):
        batch = {"dark_level": 2.0} if count > 1 and i == count - 1 else None
        r = np.clip(raw[i : i + 1] + 2.0, 0, 16) if batch else raw[i : i + 1]
        x = fs.transform(r, batch)
        vec = {"raw": r.tolist(), "inputs": {"input": x.tolist()}, "outputs": {"probs": run(x).tolist()}}
        if batch:
            vec["batch"] = batch
        out.append(vec)
    return out


def train_softmax(
    x: np.ndarray, y: np.ndarray, *, epochs: int = 200, lr: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.01, (x.shape[1], N_CLASSES)).astype(np.float32)
    b = np.zeros(N_CLASSES, np.float32)
    onehot = np.eye(N_CLASSES, dtype=np.float32)[y]
    for _ in range(epochs):
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(x)
        w -= lr * (x.T @ g)
        b -= lr * g.sum(axis=0)
    return w, b


def float_onnx(w: np.ndarray, b: np.ndarray) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, N_FEATURES])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, N_CLASSES])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgefleet")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def quantize_int8(model: bytes, calibration: np.ndarray) -> bytes:
    from controller.pipeline.quantize import quantize_onnx

    return quantize_onnx(model, calibration)


def reference_histograms(x: np.ndarray, probs: np.ndarray, y: np.ndarray, bins: int = 8) -> dict[str, Any]:
    """The manifest's drift reference: feature and prediction histograms, and the confidence
    calibration (accuracy per top-class probability bin) the controller estimates accuracy with."""
    from controller.monitoring.estimate import reference_confidence

    preds = probs.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1).tolist()
    features = [
        {"name": f"px{i}", "bin_edges": edges, "counts": np.histogram(x[:, i], bins=edges)[0].tolist()} for i in range(x.shape[1])
    ]
    return {
        "features": features,
        "predictions": {"classes": list(range(N_CLASSES)), "counts": np.bincount(preds, minlength=N_CLASSES).tolist()},
        "confidence": reference_confidence(probs, y),
    }


def make_onnx_bundle(
    *,
    version: int = 1,
    name: str = "digits",
    epochs: int = 200,
    seed: int = 0,
    golden: int = 4,
    arch: list[str] | None = None,
    latency_budget_ms: float = 5.0,  # a tiny budget makes a bundle that fails the agent's health check
    data: tuple[np.ndarray, np.ndarray] | None = None,  # training frames and labels (default: the digits)
) -> bytes:
    """Return the bytes of a complete, valid int8 ONNX bundle."""
    import onnxruntime as ort

    x, y = data if data is not None else load_digits()
    w, b = train_softmax(x, y, epochs=epochs, seed=seed)
    model = quantize_int8(float_onnx(w, b), x[:200])
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    probs = sess.run(["probs"], {"input": x})[0]
    preds = probs.argmax(axis=1)
    accuracy = float((preds == y).mean())
    vectors = golden_raw_vectors(lambda batch: np.asarray(sess.run(["probs"], {"input": batch})[0]), golden)
    manifest = Manifest.from_dict(
        {
            "schema": 1,
            "name": name,
            "version": version,
            "label": f"{name} softmax int8 (epochs={epochs}, seed={seed})",
            "runtime": "onnx",
            "model_file": "model.onnx",
            "model_sha256": hashlib.sha256(model).hexdigest(),
            "inputs": [{"name": "input", "dtype": "float32", "shape": [1, N_FEATURES]}],
            "outputs": [{"name": "probs", "dtype": "float32", "shape": [1, N_CLASSES]}],
            "golden": {"vectors": vectors, "atol": 1e-4},
            "latency_budget_ms": latency_budget_ms,
            "features": DIGITS_FEATURES,
            "reference": reference_histograms(x, probs, y),
            "hardware": {"arch": arch or []},
            "lineage": {
                "dataset_sha256": hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest(),
                "code_version": "firmware_sim.modelgen",
                "training_params": {"epochs": epochs, "lr": 0.5, "seed": seed},
                "parent_version": version - 1 if version > 1 else None,
                "metrics": {"accuracy": accuracy},
            },
        }
    )
    return bundle_fmt.pack(manifest, model)


# --- LiteRT (TFLite) ----------------------------------------------------------------


def make_tflite_model(*, epochs: int = 200, seed: int = 0) -> bytes:
    """Train the same softmax regression and convert it to a full-integer int8 TFLite model.

    Uses TensorFlow's converter (the ``train`` extra; slow to import), with a
    representative dataset for calibration; input and output tensors are int8.
    """
    import tensorflow as tf

    x, y = load_digits()
    w, b = train_softmax(x, y, epochs=epochs, seed=seed)
    inputs = tf.keras.Input(shape=(N_FEATURES,), batch_size=1, name="input")
    dense = tf.keras.layers.Dense(N_CLASSES, activation="softmax", name="probs")
    model = tf.keras.Model(inputs, dense(inputs))
    dense.set_weights([w, b])

    def representative() -> Any:
        for i in range(200):
            yield [x[i : i + 1]]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    with warnings.catch_warnings():
        # The converter warns about input statistics for int8 inputs even with a representative dataset.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return bytes(conv.convert())


def make_tflite_bundle(
    model: bytes, *, version: int = 1, name: str = "digits-lite", golden: int = 4, arch: list[str] | None = None
) -> bytes:
    """Pack an int8 TFLite model with quantization parameters and golden vectors read through LiteRT."""
    from agent.runtime import litert_interpreter

    interp = litert_interpreter()(model_content=model)
    interp.allocate_tensors()
    din, dout = interp.get_input_details()[0], interp.get_output_details()[0]
    (si, zi), (so, zo) = din["quantization"], dout["quantization"]

    def run(batch: np.ndarray) -> np.ndarray:
        q = np.clip(np.round(batch / si) + zi, -128, 127).astype(np.int8)
        interp.set_tensor(din["index"], q)
        interp.invoke()
        out: np.ndarray = (np.asarray(interp.get_tensor(dout["index"])).astype(np.float32) - zo) * np.float32(so)
        return out

    x, y = load_digits()
    probs = np.concatenate([run(x[i : i + 1]) for i in range(len(x))])
    preds = probs.argmax(axis=1)
    vectors = golden_raw_vectors(run, golden)
    manifest = Manifest.from_dict(
        {
            "schema": 1,
            "name": name,
            "version": version,
            "label": f"{name} softmax full-integer int8 (TFLite)",
            "runtime": "tflite",
            "model_file": "model.tflite",
            "model_sha256": hashlib.sha256(model).hexdigest(),
            "inputs": [
                {
                    "name": "input",
                    "dtype": "int8",
                    "shape": [1, N_FEATURES],
                    "quantization": {"scale": float(si), "zero_point": int(zi)},
                }
            ],
            "outputs": [
                {
                    "name": "probs",
                    "dtype": "int8",
                    "shape": [1, N_CLASSES],
                    "quantization": {"scale": float(so), "zero_point": int(zo)},
                }
            ],
            "golden": {"vectors": vectors, "atol": 1e-6},
            "latency_budget_ms": 5.0,
            "features": DIGITS_FEATURES,
            "reference": reference_histograms(x, probs, y),
            "hardware": {"arch": arch or []},
            "lineage": {"code_version": "firmware_sim.modelgen", "metrics": {"accuracy": float((preds == y).mean())}},
        }
    )
    return bundle_fmt.pack(manifest, model)
