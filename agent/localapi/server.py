"""Local inference API for applications on the device: a Unix socket.

Two framings share the socket; the first byte of each request tells them apart, so
one connection may mix them. JSON lines (a request starts with ``{``):

    {"op": "predict", "inputs": [[...]], "role": "production"}
        -> {"ok": true, "prediction_id": "...", "model": "digits", "version": 3, "outputs": {...}}
    {"op": "predict", "raw": true, "inputs": [[...]]}   raw inputs: the serving model's feature
        spec (manifest ``features``) turns them into model inputs first, with the batch features
        in force on this device; refused when the model has none or a value is out of its range
    {"op": "predict_batch", "inputs": [[[...]], [[...]]], "role": "production"}
        -> {"ok": true, "model": ..., "version": ..., "role": ...,
            "predictions": [{"prediction_id": ..., "outputs": {...}} | {"error": "..."}, ...]}
    {"op": "features", "inputs": [[...]], "role": "production"}
        -> {"ok": true, "model": ..., "version": ..., "features_version": "...", "batch": {...}, "inputs": {...}}
        the model inputs the feature spec makes of raw inputs (no inference): what a raw predict runs
    {"op": "info"}    -> {"ok": true, "models": {"production": {...}}}
    {"op": "feedback", "prediction_id": "...", "label": 7}
        -> {"ok": true, "correct": true}      (labels feed the telemetry window's accuracy)
    {"op": "ping"}    -> {"ok": true}
    {"op": "status"}  -> {"ok": true, "device_id": ..., "broker": {...}, "ota": {...}, "models": {...}, "telemetry": {...}}

Binary tensor frames (:mod:`agent.localapi.framing`: ``b"\\x00EF1"``, u32 LE header
length, JSON header, raw little-endian arrays) for ``predict`` and ``predict_batch``:
header ``{"op", "role", "raw"?, "tensors": [{"name", "dtype", "shape"}, ...]}``, one tensor per
model input (with ``"raw": true``, the one raw input) (for ``predict_batch`` each array has the batch as its leading axis and
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

from agent.host import ModelHost, NoModelError, Prediction
from agent.localapi import framing

log = logging.getLogger(__name__)
Feedback = Callable[[str, int], dict[str, Any]]  # (prediction_id, label) -> {"ok": ..., "correct": ...}
StatusFn = Callable[[], dict[str, Any]]  # the agent's own view: broker, OTA, models, telemetry queue
SummaryFn = Callable[[dict[str, Any]], dict[str, Any]]  # an in-process application's window (agent.embedded)
MAX_REQUEST_BYTES = 8 * 1024 * 1024  # bytes per request line or frame's data
_PREFIX, _MAGIC = framing.PREFIX, framing.MAGIC


class _Handler(socketserver.BaseRequestHandler):
    """One connection: requests read into one reused buffer (``framing.StreamReader``), answers sent
    whole with one ``sendall``; no buffered file objects, no per-request thread hand-off."""

    server: _Server

    def handle(self) -> None:
        sock, api = self.request, self.server.api
        send = sock.sendall
        reader = framing.StreamReader(sock, MAX_REQUEST_BYTES)
        while True:
            try:
                req = reader.next()
            except framing.FrameError as exc:
                send(framing.encode({"ok": False, "error": f"bad frame: {exc}"}))
                return
            except framing.LineTooLong as exc:
                send(_json_line({"ok": False, "error": str(exc)}))
                return
            if req is None:
                return
            if type(req) is bytes:
                send(_json_line(api.handle_line(req)))
            else:
                send(api.handle_frame(*req))


def _json_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    api: LocalApi


class LocalApi:
    """Request handling, apart from the socket, so it can be tested directly."""

    def __init__(
        self,
        host: ModelHost,
        feedback: Feedback | None = None,
        status: StatusFn | None = None,
        summary: SummaryFn | None = None,
    ) -> None:
        self.host = host
        self.summary = summary  # where in-process applications hand their windows (the telemetry service)
        self.status = status
        self.feedback = feedback  # where true labels go (the telemetry service); None: not enabled
        self._answers: dict[str, _Answer] = {}  # per role served: the answer frame's fixed parts

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
                return {"ok": True, **self.host.predict(req.get("inputs"), role=str(role), raw=_raw_flag(req))}
            if op == "predict_batch":
                return self._predict_batch_json(req.get("inputs"), str(req.get("role", "production")), _raw_flag(req))
            if op == "features":
                model, batch, feats = self._features(req.get("inputs"), str(req.get("role", "production")))
                return {**_features_head(model, batch), "inputs": {k: a.tolist() for k, a in feats.items()}}
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
            if op == "summary":
                if self.summary is None:
                    return {"ok": False, "error": "in-process summaries are not enabled on this agent"}
                return self.summary(req)
            if op == "status" and self.status is not None:
                return {"ok": True, **self.status()}
        except NoModelError as exc:
            return {"ok": False, "error": str(exc)}
        except (ValueError, TypeError) as exc:
            return {"ok": False, "error": f"bad input: {exc}"}
        except Exception as exc:  # a runtime failure must not kill the server
            log.exception("inference failed")
            return {"ok": False, "error": f"inference failed: {exc}"}
        return {
            "ok": False,
            "error": f"unknown op {op!r}; expected predict, predict_batch, features, info, feedback, summary, status or ping",
        }

    def _features(self, raw: Any, role: str) -> tuple[Any, dict[str, float], dict[str, np.ndarray]]:
        """Raw inputs through the feature spec of the model serving ``role``, with the batch values in force."""
        model = self.host.get(role)
        batch = self.host.batch.current()
        return model, dict(batch), model.featurize(raw, batch)

    def _predict_batch_json(self, items: Any, role: str, raw: bool = False) -> dict[str, Any]:
        if not isinstance(items, list):
            raise ValueError("predict_batch expects 'inputs' as a list with one entry per prediction")
        model = self.host.get(role)
        preds: list[dict[str, Any]] = []
        for item in items:  # each item on its own: one bad item does not fail the others
            try:
                r = self.host.predict_arrays(item, role, raw=raw)
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
            raw = _raw_flag(header)
            if len(arrays) == 1 and "" in arrays:  # unnamed: the single input of the model
                inputs = arrays[""]
            if op == "predict":
                return self._predict_answer(self.host.predict_arrays(inputs, role, raw=raw))
            if op == "predict_batch":
                return self._predict_batch_frame(inputs, role, raw)
            if op == "features":
                model, batch, feats = self._features(inputs, role)
                return framing.encode(_features_head(model, batch), feats.items())
            return framing.encode(
                {"ok": False, "error": f"unknown op {op!r} in a frame; expected predict, predict_batch or features"}
            )
        except NoModelError as exc:
            return framing.encode({"ok": False, "error": str(exc)})
        except (ValueError, TypeError) as exc:
            return framing.encode({"ok": False, "error": f"bad input: {exc}"})
        except Exception as exc:  # a runtime failure must not kill the server
            log.exception("inference failed")
            return framing.encode({"ok": False, "error": f"inference failed: {exc}"})

    def _predict_answer(self, r: Prediction) -> bytes:
        """The answer frame of one prediction. Its header differs between calls only in the
        prediction id, so it is kept per role as the bytes before and after the id, valid while
        the same model serves and its outputs keep their dtypes and shapes."""
        a = self._answers.get(r.role)
        if a is None or a.model is not r.model or not a.fits(r.outputs):
            a = self._answers[r.role] = _Answer.of(r)
        if a.before is None:  # outputs the template cannot describe: the general encoder
            m = r.model.manifest
            head = {"ok": True, "prediction_id": r.prediction_id, "model": m.name, "version": m.version, "role": r.role}
            return framing.encode(head, r.outputs.items())
        pid = r.prediction_id.encode()
        return b"".join((_PREFIX.pack(_MAGIC, a.fixed + len(pid)), a.before, pid, a.after, *[o.data for o in r.outputs.values()]))

    def _predict_batch_frame(self, inputs: Any, role: str, raw: bool = False) -> bytes:
        named = inputs if isinstance(inputs, dict) else {None: inputs}
        sizes = {len(a) if a.ndim else -1 for a in named.values()}
        if len(sizes) != 1 or -1 in sizes:
            raise ValueError("predict_batch arrays need one leading batch axis of the same length")
        n = sizes.pop()
        items = [{k: a[i] for k, a in named.items()} if isinstance(inputs, dict) else inputs[i] for i in range(n)]
        preds = self.host.predict_batch_arrays(items, role, raw=raw)
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


class _Answer:
    """The fixed parts of a predict answer frame for one model in one role."""

    def __init__(self, model: Any, specs: list[tuple[str, Any, tuple[int, ...]]], before: bytes | None, after: bytes) -> None:
        self.model, self.specs, self.before, self.after = model, specs, before, after
        self.one = specs[0] if len(specs) == 1 else None
        self.fixed = (len(before) if before is not None else 0) + len(after)  # header bytes besides the id

    @classmethod
    def of(cls, r: Prediction) -> _Answer:
        specs = [(name, arr.dtype, arr.shape) for name, arr in r.outputs.items()]
        usable = all(
            type(arr) is np.ndarray and arr.flags.c_contiguous and arr.dtype in framing.DTYPES.values()
            and arr.dtype.byteorder in "=|<"
            for arr in r.outputs.values()
        )  # fmt: skip
        if not usable or not all(c.isalnum() or c in "-_.:" for c in r.prediction_id):
            return cls(r.model, specs, None, b"")
        m = r.model.manifest
        marker = "\x00"  # where the id goes (JSON writes it as \u0000)
        head = {"ok": True, "model": m.name, "version": m.version, "role": r.role, "prediction_id": marker}
        frame = framing.encode(head, r.outputs.items())
        text = frame[framing.PREFIX.size : framing.PREFIX.size + framing.PREFIX.unpack_from(frame)[1]]
        parts = text.split(b'"\\u0000"')
        if len(parts) != 2:  # the marker also appeared elsewhere
            return cls(r.model, specs, None, b"")
        return cls(r.model, specs, parts[0] + b'"', b'"' + parts[1])

    def fits(self, outputs: dict[str, np.ndarray]) -> bool:
        one = self.one
        if one is not None:  # the usual model: one output
            arr = outputs.get(one[0])
            return (
                arr is not None and len(outputs) == 1 and arr.dtype is one[1] and arr.shape == one[2] and arr.flags.c_contiguous
            )
        if len(outputs) != len(self.specs):
            return False
        for (name, dtype, shape), (got, arr) in zip(self.specs, outputs.items(), strict=True):
            if got != name or arr.dtype is not dtype or arr.shape != shape or not arr.flags.c_contiguous:
                return False
        return True


def _features_head(model: Any, batch: dict[str, float]) -> dict[str, Any]:
    m = model.manifest
    version = m.features.version if m.features is not None else None
    return {"ok": True, "model": m.name, "version": m.version, "features_version": version, "batch": batch}


def _raw_flag(req: dict[str, Any]) -> bool:
    raw = req.get("raw", False)
    if not isinstance(raw, bool):
        raise ValueError(f"'raw' must be true or false, got {raw!r:.40}")
    return raw


def _info(model: Any) -> dict[str, Any]:
    m = model.manifest
    features = None if m.features is None else {"version": m.features.version, "input": m.features.input.to_dict()}
    return {
        "model": m.name,
        "version": m.version,
        "label": m.label,
        "runtime": m.runtime,
        "sha256": model.sha256,
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in m.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in m.outputs],
        "features": features,  # what a raw input is ("raw": true), or None: send model inputs
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
