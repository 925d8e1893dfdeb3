"""Models being served, per role. Swapping is one reference assignment.

The new model is loaded and checked beside the old one; ``swap`` then replaces
the reference, so an inference in flight finishes on the model it started with
and no request is lost. A :class:`Probe` counts the live inferences one model
served (and their errors) while it is under health check. Observers (telemetry)
see every finished inference as an :class:`InferenceRecord`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from agent.routing import ArmRouter
from agent.runtime import LoadedModel

log = logging.getLogger(__name__)
_clock = time.perf_counter


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


class Prediction(NamedTuple):
    """One finished inference with its outputs as arrays (name -> array)."""

    prediction_id: str
    model: LoadedModel
    outputs: dict[str, np.ndarray]
    role: str  # the role that served it (an experiment arm's for a routed production request)


class ModelHost:
    def __init__(self, device_id: str = "") -> None:
        self.router = ArmRouter(device_id)  # bandit weights: production requests served by an arm role
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()  # guards writers; readers take a snapshot
        self._probes: dict[str, Probe] = {}
        self.observers: list[Observer] = []  # called after every predict; must be quick and must not raise
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

    def predict(self, inputs: Any, role: str = "production") -> dict[str, Any]:
        """JSON-ready: ``predict_arrays`` with the outputs as nested lists."""
        r = self.predict_arrays(inputs, role)
        m = r.model.manifest
        outputs = {name: arr.tolist() for name, arr in r.outputs.items()}
        return {"prediction_id": r.prediction_id, "model": m.name, "version": m.version, "role": r.role, "outputs": outputs}

    def predict_arrays(self, inputs: Any, role: str = "production") -> Prediction:
        """One inference: inputs as lists or arrays (a dict per input name, or one value for a
        single-input model); the outputs stay arrays. Production requests may be served by an
        experiment arm's role (``router``); the answer says which role served it."""
        if role == "production" and self.router.routing is not None:
            role = self.router.choose(self._models) or role
        model = self._models.get(role)
        if model is None:
            raise NoModelError(f"no model loaded in role {role!r}")
        return self._run(model, role, inputs)

    def predict_batch_arrays(self, items: list[Any], role: str = "production") -> list[Prediction]:
        """One inference per item; each is routed like ``predict_arrays`` (experiment arms), else
        all run on the model serving ``role`` when the batch starts."""
        if role == "production" and self.router.routing is not None:
            return [self.predict_arrays(inputs, role) for inputs in items]
        model = self._models.get(role)
        if model is None:
            raise NoModelError(f"no model loaded in role {role!r}")
        return [self._run(model, role, inputs) for inputs in items]

    def _run(self, model: LoadedModel, role: str, inputs: Any) -> Prediction:
        observed = bool(self.observers)  # a snapshot: observers attached when the call starts see it
        t0 = _clock() if observed else 0.0
        try:
            coerced = model.coerce_inputs(inputs)
        except (ValueError, TypeError) as exc:  # the caller's error: counted in telemetry, not against the model
            if observed:
                self._notify(InferenceRecord(role, model, inputs, None, (_clock() - t0) * 1000, error=exc))
            raise
        try:
            outputs = model.run_coerced_fn(coerced)
        except Exception as exc:
            probe = self._probes.get(role)
            if probe is not None and probe.model is model:
                probe.errors += 1
                probe.first_error = probe.first_error or f"{type(exc).__name__}: {exc}"
            if observed:
                self._notify(InferenceRecord(role, model, coerced, None, (_clock() - t0) * 1000, error=exc))
            raise
        latency_ms = (_clock() - t0) * 1000 if observed else 0.0
        if self._probes:  # only while an update is under health check
            probe = self._probes.get(role)
            if probe is not None and probe.model is model:
                probe.ok += 1
        pid = f"{self._id_prefix}{next(self._ids):x}"
        if observed:
            self._notify(InferenceRecord(role, model, coerced, outputs, latency_ms, pid))
        return Prediction(pid, model, outputs, role)

    def _notify(self, record: InferenceRecord) -> None:
        for observe in self.observers:
            try:
                observe(record)
            except Exception:  # an observer must never break inference
                log.exception("inference observer failed")
