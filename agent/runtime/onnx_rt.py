"""ONNX Runtime adapter (CPU)."""

from __future__ import annotations

import functools
from typing import Any

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
        self._single = self._outputs[0] if len(self._outputs) == 1 else None
        # ``InferenceSession.run`` re-checks in Python, on every call, what the agent already
        # guarantees (every manifest input present, plain arrays, no GPU graph capture), and
        # the C++ session validates the feed again anyway; calling the session core directly
        # saves ~1 µs a call. Falls back to the public method if a release renames it.
        core = getattr(self._session, "_sess", None)
        self._run: Any = core.run if core is not None and hasattr(core, "run") else self._session.run
        # ``direct(feed, None)``: the outputs as a list in manifest order, no Python frame of ours
        # in between (``LoadedModel.fast_path``; the hot path of ``ModelHost``).
        self.direct: Any = functools.partial(self._run, self._outputs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._run(self._outputs, inputs, None)
        if self._single is not None and len(results) == 1:
            return {self._single: results[0]}
        return dict(zip(self._outputs, results, strict=True))
