"""A tiny client for the agent's Unix-socket API, for applications and tests."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


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

    def predict(self, inputs: Any, role: str = "production") -> dict[str, Any]:
        return self.call({"op": "predict", "inputs": inputs, "role": role})

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
