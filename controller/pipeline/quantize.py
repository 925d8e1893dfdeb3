"""A trained Keras model as int8 for the devices: TFLite full integer, and ONNX.

- ``tflite_int8``: TensorFlow's converter with a representative sample for
  calibration; every op int8, input and output tensors int8 (LiteRT on the device).
- ``tflite_float``: the same model unquantized, only to measure what int8 saves.
- ``onnx_int8``: tf2onnx does not support the pinned TensorFlow (2.21), so the
  ONNX model is written from the Keras weights directly (dense, ReLU, softmax:
  the layers ``train`` makes; anything else is refused with the layer named) and
  quantized by onnxruntime's static quantization (QDQ, int8) on the same sample
  (ONNX Runtime on the device).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


class QuantizeError(Exception):
    """The model cannot be converted; the message says which layer or step refused."""


def _converter(model: Any) -> Any:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model)


def _convert(conv: Any) -> bytes:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints the saved model's signature
            return bytes(conv.convert())


def tflite_float(model: Any) -> bytes:
    return _convert(_converter(model))


def tflite_int8(model: Any, representative: np.ndarray) -> bytes:
    """Full-integer int8 TFLite, calibrated on ``representative`` (rows of model inputs)."""
    import tensorflow as tf

    rows = representative.astype(np.float32)

    def samples() -> Iterator[list[np.ndarray]]:
        for i in range(len(rows)):
            yield [rows[i : i + 1]]

    conv = _converter(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = samples
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return _convert(conv)


def onnx_float(model: Any) -> bytes:
    """The Keras dense stack as an ONNX graph (``input`` -> ``probs``), from its weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    current = "input"
    n_in = int(model.inputs[0].shape[-1])
    width = n_in
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("InputLayer", "Dropout"):
            continue
        if kind != "Dense":
            raise QuantizeError(f"layer {layer.name!r} is a {kind}; the ONNX export handles Dense layers only")
        w, b = (np.asarray(v, dtype=np.float32) for v in layer.get_weights())
        act = layer.get_config().get("activation")
        inits += [numpy_helper.from_array(w, f"{layer.name}_W"), numpy_helper.from_array(b, f"{layer.name}_B")]
        nodes.append(helper.make_node("MatMul", [current, f"{layer.name}_W"], [f"{layer.name}_mm"]))
        nodes.append(helper.make_node("Add", [f"{layer.name}_mm", f"{layer.name}_B"], [f"{layer.name}_z"]))
        current = f"{layer.name}_z"
        if act == "relu":
            nodes.append(helper.make_node("Relu", [current], [f"{layer.name}_a"]))
            current = f"{layer.name}_a"
        elif act == "softmax":
            nodes.append(helper.make_node("Softmax", [current], ["probs"], axis=1))
            current = "probs"
        elif act != "linear":
            raise QuantizeError(f"layer {layer.name!r} has activation {act!r}; the ONNX export handles relu, softmax, linear")
        width = w.shape[1]
    if current != "probs":
        raise QuantizeError("the model must end in a softmax dense layer for the ONNX export")
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_in])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, width])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgefleet-pipeline")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return bytes(m.SerializeToString())


def onnx_int8(model: Any, representative: np.ndarray) -> bytes:
    """``onnx_float`` quantized to int8 (QDQ) by onnxruntime, calibrated on ``representative``."""
    return quantize_onnx(onnx_float(model), representative)


def quantize_onnx(float_model: bytes, representative: np.ndarray) -> bytes:
    """A float ONNX model (one input named ``input``) quantized to int8 QDQ, calibrated row by row."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rows = representative.astype(np.float32)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(rows[i : i + 1] for i in range(len(rows)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {"input": batch}

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static gives advice on the root logger
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "f32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(float_model)
            quantize_static(
                str(src),
                str(dst),
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
            )
            return dst.read_bytes()
    finally:
        root.setLevel(level)
