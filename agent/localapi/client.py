"""A tiny client for the agent's Unix-socket API, for applications and tests.

``predict``/``feedback``/``info`` speak JSON lines; ``predict_array`` and ``predict_batch``
send binary tensor frames (:mod:`agent.localapi.framing`) and return numpy arrays.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import numpy as np

from agent.localapi import framing

MAX_ANSWER_BYTES = 64 * 1024 * 1024


def _raw(raw: bool) -> dict[str, Any]:
    return {"raw": True} if raw else {}


class AgentClient:
    def __init__(self, path: Path | str, timeout: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except OSError:
            self._sock.close()
            raise
        self._file = self._sock.makefile("rb")

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        self._sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        line = self._file.readline()
        if not line:
            raise ConnectionError("agent closed the connection")
        result: dict[str, Any] = json.loads(line)
        return result

    def predict(self, inputs: Any, role: str = "production", *, raw: bool = False) -> dict[str, Any]:
        """``raw``: ``inputs`` are raw; the agent applies the model's feature spec first."""
        return self.call({"op": "predict", "inputs": inputs, "role": role, **_raw(raw)})

    def predict_array(
        self, inputs: np.ndarray | dict[str, np.ndarray], role: str = "production", *, raw: bool = False
    ) -> dict[str, Any]:
        """One prediction over a binary frame: an array for a single-input model, or a dict of
        arrays per input name. The answer's ``outputs`` are arrays (name -> array)."""
        return self._frame({"op": "predict", "role": role, **_raw(raw)}, inputs)

    def predict_batch(
        self, inputs: np.ndarray | dict[str, np.ndarray], role: str = "production", *, raw: bool = False
    ) -> dict[str, Any]:
        """Several predictions in one round trip: ``inputs[i]`` (or each array's ``[i]``) is one
        item. The answer has ``prediction_ids`` and ``outputs`` stacked on a leading batch axis."""
        return self._frame({"op": "predict_batch", "role": role, **_raw(raw)}, inputs)

    def features(self, raw: np.ndarray, role: str = "production") -> dict[str, Any]:
        """The model inputs the agent's feature spec makes of ``raw`` (no inference), as arrays in ``inputs``."""
        answer = self._frame({"op": "features", "role": role}, raw)
        if answer.get("ok"):
            answer["inputs"] = answer.pop("outputs")
        return answer

    def _frame(self, header: dict[str, Any], inputs: np.ndarray | dict[str, np.ndarray]) -> dict[str, Any]:
        arrays = inputs.items() if isinstance(inputs, dict) else (("", inputs),)
        self._sock.sendall(framing.encode(header, ((k, np.asarray(v)) for k, v in arrays)))
        try:
            frame = framing.read_frame(self._file.read, MAX_ANSWER_BYTES)
        except framing.FrameError as exc:
            raise ConnectionError(f"bad answer frame from the agent: {exc}") from exc
        if frame is None:
            raise ConnectionError("agent closed the connection")
        head, outputs = frame
        head.pop("tensors", None)
        if head.get("ok"):
            head["outputs"] = outputs
        return head

    def feedback(self, prediction_id: str, label: Any) -> dict[str, Any]:
        """Report the true label of an earlier prediction (for accuracy monitoring)."""
        return self.call({"op": "feedback", "prediction_id": prediction_id, "label": label})

    def info(self) -> dict[str, Any]:
        return self.call({"op": "info"})

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
