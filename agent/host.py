"""Models being served, per role. Swapping is one reference assignment.

The new model is loaded and checked beside the old one; ``swap`` then replaces
the reference, so an inference in flight finishes on the model it started with
and no request is lost.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from agent.runtime import LoadedModel


class NoModelError(LookupError):
    """No model is loaded in the requested role."""


class ModelHost:
    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()  # guards writers; readers take a snapshot

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
        outputs = model.predict(inputs)
        m = model.manifest
        return {
            "prediction_id": uuid.uuid4().hex,
            "model": m.name,
            "version": m.version,
            "role": role,
            "outputs": {k: v.tolist() for k, v in outputs.items()},
        }
