"""Models being served, per role. Swapping is one reference assignment.

The new model is loaded and checked beside the old one; ``swap`` then replaces
the reference, so an inference in flight finishes on the model it started with
and no request is lost. A :class:`Probe` counts the live inferences one model
served (and their errors) while it is under health check.

Telemetry sees every inference without slowing it down: while ``recording`` is on,
each call appends one tuple (:data:`Observed`) to ``pending``, a deque (appends are
atomic, so no lock on the request path), and the telemetry thread takes them off in
bulk (``take_pending``) to bin them with numpy (ADR 0060). When ``pending`` reaches
``backlog_limit`` the call hands ``on_backlog`` the job of draining it, so a stalled
telemetry thread costs memory up to that bound and never a lost inference. Other
``observers`` (tests, tools) see every finished inference as an :class:`InferenceRecord`,
inline, and cost what they cost.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from agent.batch import BatchFeatures
from agent.routing import ArmRouter
from agent.runtime import LoadedModel

log = logging.getLogger(__name__)
_clock = time.perf_counter
_ndarray = np.ndarray
_new_tuple = tuple.__new__


class NoModelError(LookupError):
    """No model is loaded in the requested role."""


@dataclass
class Probe:
    """Live inferences served by one model since the probe started."""

    model: LoadedModel
    ok: int = 0
    errors: int = 0
    first_error: str = ""


@dataclass(frozen=True)
class InferenceRecord:
    """One finished ``predict`` call, as observers (telemetry) see it."""

    role: str
    model: LoadedModel
    inputs: Any  # tensor name -> array (as given by the caller when coercion failed)
    outputs: dict[str, Any] | None  # None when the call failed
    latency_ms: float
    prediction_id: str = ""
    error: BaseException | None = None


Observer = Callable[[InferenceRecord], None]
# role, model, inputs (the coerced arrays; the caller's raw value for a call that failed its
# input checks), outputs (None: the call failed), latency in ms, prediction id ("" on failure),
# the raw input a feature spec made the inputs from (None: the caller sent model inputs)
Observed = tuple[str, LoadedModel, Any, "dict[str, np.ndarray] | None", float, str, Any]
BACKLOG_LIMIT = 16_384  # observed calls waiting for the telemetry thread before a request drains them


class Prediction(NamedTuple):
    """One finished inference with its outputs as arrays (name -> array)."""

    prediction_id: str
    model: LoadedModel
    outputs: dict[str, np.ndarray]
    role: str  # the role that served it (an experiment arm's for a routed production request)


def _own(inputs: Any, coerced: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``coerced`` with copies of the caller's own writeable arrays (used as given by ``coerce_inputs``):
    telemetry reads them later, and the caller may reuse its buffer meanwhile. Socket inputs are
    read-only views of the request's bytes and are kept as they are."""
    if type(inputs) is np.ndarray:
        if not inputs.flags.writeable:
            return coerced
        return {k: v.copy() if v is inputs else v for k, v in coerced.items()}
    return {k: v.copy() if v is inputs.get(k) and v.flags.writeable else v for k, v in coerced.items()}


def _own_raw(raw: Any) -> Any:
    """A raw input telemetry may keep (data capture): the caller's writeable arrays copied."""
    if type(raw) is np.ndarray:
        return raw.copy() if raw.flags.writeable else raw
    if type(raw) is dict:
        return {k: v.copy() if type(v) is np.ndarray and v.flags.writeable else v for k, v in raw.items()}
    return raw  # parsed from the request: the caller cannot change it


class ModelHost:
    def __init__(self, device_id: str = "") -> None:
        self.router = ArmRouter(device_id)  # bandit weights: production requests served by an arm role
        self.sampling: dict[str, Any] = {}  # the desired state's sampling settings (e.g. shadow_rate)
        self.batch = BatchFeatures()  # batch-feature values from the signed desired state, joined to raw inputs
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()  # guards writers; readers take a snapshot
        self._probes: dict[str, Probe] = {}
        self.observers: list[Observer] = []  # called inline after every predict; must not raise
        self.pending: deque[Observed] = deque()  # calls waiting for telemetry, while ``recording``
        self.recording = False
        self.backlog_limit = BACKLOG_LIMIT
        self.on_backlog: Callable[[], None] | None = None  # drains ``pending`` (called on a request thread)
        self._id_prefix = f"{uuid.uuid4().hex[:12]}-"  # unique per agent run; a counter after it
        self._ids = itertools.count(1)

    def swap(self, role: str, model: LoadedModel) -> LoadedModel | None:
        with self._lock:
            old = self._models.get(role)
            models = dict(self._models)
            models[role] = model
            self._models = models
        return old

    def remove(self, role: str) -> LoadedModel | None:
        with self._lock:
            models = dict(self._models)
            old = models.pop(role, None)
            self._models = models
        return old

    def get(self, role: str = "production") -> LoadedModel:
        model = self._models.get(role)
        if model is None:
            raise NoModelError(f"no model loaded in role {role!r}")
        return model

    def roles(self) -> dict[str, LoadedModel]:
        return dict(self._models)

    def probe(self, role: str, model: LoadedModel) -> Probe:
        p = Probe(model)
        self._probes = {**self._probes, role: p}
        return p

    def unprobe(self, role: str) -> None:
        self._probes = {r: p for r, p in self._probes.items() if r != role}

    def predict(self, inputs: Any, role: str = "production", *, raw: bool = False) -> dict[str, Any]:
        """JSON-ready: ``predict_arrays`` with the outputs as nested lists."""
        r = self.predict_arrays(inputs, role, raw=raw)
        m = r.model.manifest
        outputs = {name: arr.tolist() for name, arr in r.outputs.items()}
        return {"prediction_id": r.prediction_id, "model": m.name, "version": m.version, "role": r.role, "outputs": outputs}

    def predict_arrays(
        self, inputs: Any, role: str = "production", *, raw: bool = False, _model: LoadedModel | None = None
    ) -> Prediction:
        """One inference: inputs as lists or arrays (a dict per input name, or one value for a
        single-input model); the outputs stay arrays. Production requests may be served by an
        experiment arm's role (``router``); the answer says which role served it. ``raw``: the
        inputs are raw, turned into model inputs by the serving model's feature spec first.

        This is the request path, kept in one frame (``_model``: the model ``predict_batch_arrays``
        pinned for the whole batch)."""
        model = _model
        if model is None:
            if role == "production" and self.router.routing is not None:
                role = self.router.choose(self._models) or role
            model = self._models.get(role)
            if model is None:
                raise NoModelError(f"no model loaded in role {role!r}")
        recording = self.recording  # a snapshot: telemetry attached when the call starts sees it
        t0 = _clock()
        fast = model.fast_path  # (input, dtype, shape, direct, single output, outputs); indexed: cheaper than names
        if fast is not None and type(inputs) is _ndarray and inputs.dtype is fast[1] and inputs.shape == fast[2] and not raw:
            coerced = {fast[0]: inputs}  # what ``coerce_inputs`` returns, without its general checks
        else:
            try:
                # raw: the serving model's feature spec first, with the batch features in force now
                coerced = model.coerce_inputs(model.featurize(inputs, self.batch.current()) if raw else inputs)
            except (ValueError, TypeError) as exc:  # the caller's error: counted in telemetry, not against the model
                self._failed(role, model, inputs, t0, exc, recording, runtime=False)
                raise
        try:
            if fast is not None and fast[3] is not None:
                out = fast[3](coerced, None)
                outputs = {fast[4]: out[0]} if fast[4] is not None else dict(zip(fast[5], out, strict=True))
            else:
                outputs = model.run_coerced_fn(coerced)
        except Exception as exc:
            self._failed(role, model, coerced, t0, exc, recording, runtime=True)
            raise
        latency_ms = (_clock() - t0) * 1000.0
        if self._probes:  # only while an update is under health check
            self._probed(role, model)
        pid = f"{self._id_prefix}{next(self._ids):x}"
        if recording:
            if type(inputs) is _ndarray:
                if inputs.flags.writeable:  # the caller may reuse its array: telemetry keeps a copy
                    one = fast is not None and len(coerced) == 1 and coerced.get(fast[0]) is inputs
                    coerced = {fast[0]: inputs.copy()} if one else _own(inputs, coerced)  # type: ignore[index]
            elif type(inputs) is dict:
                coerced = _own(inputs, coerced)
            pending = self.pending
            pending.append((role, model, coerced, outputs, latency_ms, pid, _own_raw(inputs) if raw else None))
            if len(pending) >= self.backlog_limit and self.on_backlog is not None:
                self.on_backlog()
        if self.observers:
            self._notify(InferenceRecord(role, model, coerced, outputs, latency_ms, pid))
        return _new_tuple(Prediction, (pid, model, outputs, role))  # ``Prediction(...)`` without its Python __new__

    def predict_batch_arrays(self, items: list[Any], role: str = "production", *, raw: bool = False) -> list[Prediction]:
        """One inference per item; each is routed like ``predict_arrays`` (experiment arms), else
        all run on the model serving ``role`` when the batch starts."""
        if role == "production" and self.router.routing is not None:
            return [self.predict_arrays(inputs, role, raw=raw) for inputs in items]
        model = self._models.get(role)
        if model is None:
            raise NoModelError(f"no model loaded in role {role!r}")
        return [self.predict_arrays(inputs, role, raw=raw, _model=model) for inputs in items]

    def take_pending(self) -> list[Observed]:
        """The observed calls so far, oldest first, removed from ``pending`` (safe while calls append)."""
        pending = self.pending
        return [pending.popleft() for _ in range(len(pending))]

    def _probed(self, role: str, model: LoadedModel) -> None:
        probe = self._probes.get(role)
        if probe is not None and probe.model is model:
            probe.ok += 1

    def _failed(
        self, role: str, model: LoadedModel, inputs: Any, t0: float, exc: BaseException, recording: bool, *, runtime: bool
    ) -> None:
        """A call that raised: ``runtime`` errors count against a probed model, input errors do not."""
        latency_ms = (_clock() - t0) * 1000.0
        if runtime:
            probe = self._probes.get(role)
            if probe is not None and probe.model is model:
                probe.errors += 1
                probe.first_error = probe.first_error or f"{type(exc).__name__}: {exc}"
        if recording:
            self.pending.append((role, model, inputs, None, latency_ms, "", None))
        if self.observers:
            self._notify(InferenceRecord(role, model, inputs, None, latency_ms, error=exc))

    def _notify(self, record: InferenceRecord) -> None:
        for observe in self.observers:
            try:
                observe(record)
            except Exception:  # an observer must never break inference
                log.exception("inference observer failed")
