"""LiteRT (TFLite) adapter: ``ai_edge_litert``, else ``tflite_runtime``, else ``tensorflow.lite``.

The first is the maintained runtime; ``tflite_runtime`` is what older Jetson and
Raspberry Pi images ship; TensorFlow is the last resort (heavy, but present on
training machines). Quantization is applied by ``LoadedModel`` from the manifest.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

import numpy as np

from shared.manifest import Manifest

# tf.lite is a lazy alias in TF 2.x; the class itself lives in tensorflow.lite.python.interpreter.
_CANDIDATES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite.python.interpreter")


def interpreter_class() -> tuple[str, Any]:
    """The first importable ``Interpreter`` class and the module it came from."""
    errors = []
    for name in _CANDIDATES:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        return name, mod.Interpreter
    raise ImportError("no LiteRT runtime found; install ai-edge-litert (tried " + "; ".join(errors) + ")")


class LiteRtRuntime:
    name = "tflite"

    def __init__(self, model: bytes, manifest: Manifest, *, threads: int = 1) -> None:
        self.module, interpreter = interpreter_class()
        self._interp = interpreter(model_content=model, num_threads=threads)
        self._interp.allocate_tensors()
        self._lock = threading.Lock()  # an Interpreter is not thread-safe
        by_name_in = {d["name"]: d for d in self._interp.get_input_details()}
        by_name_out = {d["name"]: d for d in self._interp.get_output_details()}
        # Per input: name, tensor index, dtype, current shape (a tuple: one compare per call).
        self._inputs: list[tuple[str, int, Any, tuple[int, ...]]] = []
        for t in manifest.inputs:
            d = _find(by_name_in, t.name, "input")
            self._inputs.append((t.name, d["index"], np.dtype(d["dtype"]), tuple(int(n) for n in d["shape"])))
        self._outputs = [(t.name, _find(by_name_out, t.name, "output")["index"]) for t in manifest.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            return self._run(inputs)

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for i, (name, index, dtype, shape) in enumerate(self._inputs):
            arr = inputs[name]
            if arr.dtype != dtype:
                raise ValueError(f"input {name!r}: expected dtype {dtype.name}, got {arr.dtype.name}")
            if arr.shape != shape:
                self._interp.resize_tensor_input(index, list(arr.shape))
                self._interp.allocate_tensors()
                self._inputs[i] = (name, index, dtype, arr.shape)
            self._interp.set_tensor(index, arr)
        self._interp.invoke()
        return {name: np.array(self._interp.get_tensor(index)) for name, index in self._outputs}


def _find(details: dict[str, Any], name: str, kind: str) -> Any:
    if name in details:
        return details[name]
    if len(details) == 1:  # converters rename tensors (serving_default_x:0); one tensor is unambiguous
        return next(iter(details.values()))
    raise ValueError(f"model has no {kind} tensor {name!r}; it has {sorted(details)}")
