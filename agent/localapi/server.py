"""Local inference API for applications on the device: a Unix socket.

Protocol: one JSON object per line in each direction.

    {"op": "predict", "inputs": [[...]], "role": "production"}
        -> {"ok": true, "prediction_id": "...", "model": "digits", "version": 3, "outputs": {...}}
    {"op": "info"}    -> {"ok": true, "models": {"production": {...}}}
    {"op": "feedback", "prediction_id": "...", "label": 7}
        -> {"ok": true, "correct": true}      (labels feed the telemetry window's accuracy)
    {"op": "ping"}    -> {"ok": true}

Errors come back as {"ok": false, "error": "..."}; the connection stays open.
With ``http_port`` set, the same operations are served over HTTP on 127.0.0.1
(``POST /v1/predict``, ``POST /v1/feedback``, ``GET /v1/info``) by
:mod:`agent.localapi.http`, imported only then (``http.server`` is ~0.6 MB resident).
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.host import ModelHost, NoModelError

log = logging.getLogger(__name__)
Feedback = Callable[[str, int], dict[str, Any]]  # (prediction_id, label) -> {"ok": ..., "correct": ...}
MAX_REQUEST_BYTES = 8 * 1024 * 1024  # bytes per request line


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
            if not line:
                return
            if len(line) > MAX_REQUEST_BYTES:
                self._send({"ok": False, "error": f"request larger than {MAX_REQUEST_BYTES} bytes"})
                return
            self._send(self.server.api.handle_line(line))

    def _send(self, obj: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    api: LocalApi


class LocalApi:
    """Request handling, apart from the socket, so it can be tested directly."""

    def __init__(self, host: ModelHost, feedback: Feedback | None = None) -> None:
        self.host = host
        self.feedback = feedback  # where true labels go (the telemetry service); None: not enabled

    def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object")
        except ValueError as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        return self.handle(req)

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        try:
            if op == "predict":
                role = req.get("role", "production")
                return {"ok": True, **self.host.predict(req.get("inputs"), role=str(role))}
            if op == "info":
                models = {r: _info(m) for r, m in self.host.roles().items()}
                return {"ok": True, "models": models, "routing": self.host.router.snapshot()}
            if op == "feedback":
                pid, label = req.get("prediction_id"), req.get("label")
                if not isinstance(pid, str) or not isinstance(label, int) or isinstance(label, bool):
                    got = f"prediction_id {type(pid).__name__}, label {type(label).__name__}"
                    raise ValueError(f"feedback expects a string prediction_id and an integer label, got {got}")
                if self.feedback is None:
                    return {"ok": False, "error": "label feedback is not enabled on this agent"}
                return self.feedback(pid, label)
            if op == "ping":
                return {"ok": True}
        except NoModelError as exc:
            return {"ok": False, "error": str(exc)}
        except (ValueError, TypeError) as exc:
            return {"ok": False, "error": f"bad input: {exc}"}
        except Exception as exc:  # a runtime failure must not kill the server
            log.exception("inference failed")
            return {"ok": False, "error": f"inference failed: {exc}"}
        return {"ok": False, "error": f"unknown op {op!r}; expected predict, info, feedback or ping"}


def _info(model: Any) -> dict[str, Any]:
    m = model.manifest
    return {
        "model": m.name,
        "version": m.version,
        "label": m.label,
        "runtime": m.runtime,
        "sha256": model.sha256,
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in m.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in m.outputs],
    }


class SocketServer:
    def __init__(self, path: Path, api: LocalApi) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()
        self._server = _Server(str(path), _Handler)
        self._server.api = api
        os.chmod(path, 0o660)
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)
