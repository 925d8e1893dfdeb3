"""ONNX Runtime adapter (CPU)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from shared.manifest import Manifest


class OnnxRuntime:
    name = "onnx"

    def __init__(self, model: bytes, manifest: Manifest, *, threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in manifest.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, inputs), strict=True))
