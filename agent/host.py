"""Models being served, per role. Swapping is one reference assignment.

The new model is loaded and checked beside the old one; ``swap`` then replaces
the reference, so an inference in flight finishes on the model it started with
and no request is lost.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.runtime import LoadedModel

log = logging.getLogger(__name__)


class NoModelError(LookupError):
    """No model is loaded in the requested role."""


@dataclass(frozen=True)
class InferenceRecord:
    """One finished ``predict`` call, as observers (telemetry) see it."""

    role: str
    model: LoadedModel
    inputs: Any
    outputs: dict[str, Any] | None  # None when the call failed
    latency_ms: float
    prediction_id: str = ""
    error: BaseException | None = None


Observer = Callable[[InferenceRecord], None]


class ModelHost:
    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()  # guards writers; readers take a snapshot
        self.observers: list[Observer] = []  # called after every predict; must be quick and must not raise

    def swap(self, role: str, model: LoadedModel) -> LoadedModel | None:
        with self._lock:
            old = self._models.get(role)
            models = dict(self._models)
            models[role] = model
            self._models = models
        return old

    def get(self, role: str = "production") -> LoadedModel:
        model = self._models.get(role)
        if model is None:
            raise NoModelError(f"no model loaded in role {role!r}")
        return model

    def roles(self) -> dict[str, LoadedModel]:
        return dict(self._models)

    def predict(self, inputs: Any, role: str = "production") -> dict[str, Any]:
        model = self.get(role)
        t0 = time.perf_counter()
        try:
            outputs = model.predict(inputs)
        except Exception as exc:
            self._notify(InferenceRecord(role, model, inputs, None, (time.perf_counter() - t0) * 1000, error=exc))
            raise
        latency_ms = (time.perf_counter() - t0) * 1000
        m = model.manifest
        prediction_id = uuid.uuid4().hex
        result = {
            "prediction_id": prediction_id,
            "model": m.name,
            "version": m.version,
            "role": role,
            "outputs": {k: v.tolist() for k, v in outputs.items()},
        }
        self._notify(InferenceRecord(role, model, inputs, outputs, latency_ms, prediction_id))
        return result

    def _notify(self, record: InferenceRecord) -> None:
        for observe in self.observers:
            try:
                observe(record)
            except Exception:  # an observer must never break inference
                log.exception("inference observer failed")
