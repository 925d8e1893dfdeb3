"""Local inference API for applications on the device: a Unix socket.

Two framings share the socket; the first byte of each request tells them apart, so
one connection may mix them. JSON lines (a request starts with ``{``):

    {"op": "predict", "inputs": [[...]], "role": "production"}
        -> {"ok": true, "prediction_id": "...", "model": "digits", "version": 3, "outputs": {...}}
    {"op": "predict_batch", "inputs": [[[...]], [[...]]], "role": "production"}
        -> {"ok": true, "model": ..., "version": ..., "role": ...,
            "predictions": [{"prediction_id": ..., "outputs": {...}} | {"error": "..."}, ...]}
    {"op": "info"}    -> {"ok": true, "models": {"production": {...}}}
    {"op": "feedback", "prediction_id": "...", "label": 7}
        -> {"ok": true, "correct": true}      (labels feed the telemetry window's accuracy)
    {"op": "ping"}    -> {"ok": true}
    {"op": "status"}  -> {"ok": true, "device_id": ..., "broker": {...}, "ota": {...}, "models": {...}, "telemetry": {...}}

Binary tensor frames (:mod:`agent.localapi.framing`: ``b"\\x00EF1"``, u32 LE header
length, JSON header, raw little-endian arrays) for ``predict`` and ``predict_batch``:
header ``{"op", "role", "tensors": [{"name", "dtype", "shape"}, ...]}``, one tensor per
model input (for ``predict_batch`` each array has the batch as its leading axis and
the item is ``array[i]``). The answer is a frame with header ``{"ok", "prediction_id"
(or "prediction_ids"), "model", "version", "role", "tensors"}`` followed by the output
arrays (stacked on a leading batch axis for ``predict_batch``), or ``{"ok": false,
"error"}`` with no data. A frame that cannot be read (bad magic, header not JSON,
unknown dtype, bad shape, larger than ``MAX_REQUEST_BYTES``) is answered with an error
frame and the connection is closed, as the stream is out of step; a readable frame the
model rejects (wrong shape for the model) gets an error and the connection stays open.

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

import numpy as np

from agent.host import ModelHost, NoModelError
from agent.localapi import framing

log = logging.getLogger(__name__)
Feedback = Callable[[str, int], dict[str, Any]]  # (prediction_id, label) -> {"ok": ..., "correct": ...}
StatusFn = Callable[[], dict[str, Any]]  # the agent's own view: broker, OTA, models, telemetry queue
MAX_REQUEST_BYTES = 8 * 1024 * 1024  # bytes per request line or frame's data
_FRAME_START = framing.MAGIC[:1]


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        read, readline, api = self.rfile.read, self.rfile.readline, self.server.api
        while True:
            first = read(1)
            if not first:
                return
            if first == _FRAME_START:
                try:
                    frame = framing.read_frame(read, MAX_REQUEST_BYTES, magic_read=True)
                except framing.FrameError as exc:
                    self.wfile.write(framing.encode({"ok": False, "error": f"bad frame: {exc}"}))
                    return
                if frame is None:
                    return
                self.wfile.write(api.handle_frame(*frame))
                continue
            line = first + readline(MAX_REQUEST_BYTES)
            if len(line) > MAX_REQUEST_BYTES:
                self._send({"ok": False, "error": f"request larger than {MAX_REQUEST_BYTES} bytes"})
                return
            self._send(api.handle_line(line))

    def _send(self, obj: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    api: LocalApi


class LocalApi:
    """Request handling, apart from the socket, so it can be tested directly."""

    def __init__(self, host: ModelHost, feedback: Feedback | None = None, status: StatusFn | None = None) -> None:
        self.host = host
        self.status = status
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
            if op == "predict_batch":
                return self._predict_batch_json(req.get("inputs"), str(req.get("role", "production")))
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
            if op == "status" and self.status is not None:
                return {"ok": True, **self.status()}
        except NoModelError as exc:
            return {"ok": False, "error": str(exc)}
        except (ValueError, TypeError) as exc:
            return {"ok": False, "error": f"bad input: {exc}"}
        except Exception as exc:  # a runtime failure must not kill the server
            log.exception("inference failed")
            return {"ok": False, "error": f"inference failed: {exc}"}
        return {"ok": False, "error": f"unknown op {op!r}; expected predict, predict_batch, info, feedback, status or ping"}

    def _predict_batch_json(self, items: Any, role: str) -> dict[str, Any]:
        if not isinstance(items, list):
            raise ValueError("predict_batch expects 'inputs' as a list with one entry per prediction")
        model = self.host.get(role)
        preds: list[dict[str, Any]] = []
        for item in items:  # each item on its own: one bad item does not fail the others
            try:
                r = self.host.predict_arrays(item, role)
            except (ValueError, TypeError) as exc:
                preds.append({"error": f"bad input: {exc}"})
                continue
            model = r.model
            outputs = {k: v.tolist() for k, v in r.outputs.items()}
            version = r.model.manifest.version
            preds.append({"prediction_id": r.prediction_id, "role": r.role, "version": version, "outputs": outputs})
        m = model.manifest
        return {"ok": True, "model": m.name, "version": m.version, "role": role, "predictions": preds}

    def handle_frame(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
        """Answer one binary frame (already read and checked against its own header) with a frame."""
        op, role = header.get("op"), header.get("role", "production")
        try:
            if not isinstance(role, str):
                raise ValueError("role must be a string")
            inputs: Any = arrays
            if len(arrays) == 1 and "" in arrays:  # unnamed: the single input of the model
                inputs = arrays[""]
            if op == "predict":
                r = self.host.predict_arrays(inputs, role)
                m = r.model.manifest
                head = {"ok": True, "prediction_id": r.prediction_id, "model": m.name, "version": m.version, "role": r.role}
                return framing.encode(head, r.outputs.items())
            if op == "predict_batch":
                return self._predict_batch_frame(inputs, role)
            return framing.encode({"ok": False, "error": f"unknown op {op!r} in a frame; expected predict or predict_batch"})
        except NoModelError as exc:
            return framing.encode({"ok": False, "error": str(exc)})
        except (ValueError, TypeError) as exc:
            return framing.encode({"ok": False, "error": f"bad input: {exc}"})
        except Exception as exc:  # a runtime failure must not kill the server
            log.exception("inference failed")
            return framing.encode({"ok": False, "error": f"inference failed: {exc}"})

    def _predict_batch_frame(self, inputs: Any, role: str) -> bytes:
        named = inputs if isinstance(inputs, dict) else {None: inputs}
        sizes = {len(a) if a.ndim else -1 for a in named.values()}
        if len(sizes) != 1 or -1 in sizes:
            raise ValueError("predict_batch arrays need one leading batch axis of the same length")
        n = sizes.pop()
        items = [{k: a[i] for k, a in named.items()} if isinstance(inputs, dict) else inputs[i] for i in range(n)]
        preds = self.host.predict_batch_arrays(items, role)
        if not preds:
            model = self.host.get(role)
            return framing.encode(
                {"ok": True, "prediction_ids": [], "model": model.manifest.name, "version": model.manifest.version, "role": role}
            )
        m = preds[0].model.manifest
        outputs = [(name, np.stack([p.outputs[name] for p in preds])) for name in preds[0].outputs]
        head = {
            "ok": True,
            "prediction_ids": [p.prediction_id for p in preds],
            "model": m.name,
            "version": m.version,
            "role": role,
        }
        if any(p.role != role for p in preds):  # production requests routed to experiment arms
            head["roles"] = [p.role for p in preds]
            head["versions"] = [p.model.manifest.version for p in preds]
        return framing.encode(head, outputs)


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
