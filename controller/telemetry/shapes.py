"""What a telemetry summary of a model version must look like, from its registered manifest.

The manifest is the one the release keys signed (``controller.release``), so a
summary's feature and prediction histograms have the shape the model's
reference fixes (``shared.telemetry.summary_shape``), never the shape of
whichever device reported first. Versions are immutable: a known shape is
cached for good; an unknown (model, version) is looked up again after a while
(it may be registered later).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from controller.core.tables import ModelVersion
from controller.telemetry.aggregate import SummaryError
from shared.telemetry import summary_shape

Shape = tuple[dict[str, int], int]  # {feature: bins}, predictions


class ShapeBook:
    def __init__(self, engine: Engine, retry_unknown_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._retry = retry_unknown_s
        self._clock = clock
        self._known: dict[tuple[str, int], Shape] = {}
        self._unknown: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()

    def shape(self, model: str, version: int) -> Shape | None:
        key = (model, version)
        with self._lock:
            if key in self._known:
                return self._known[key]
            seen = self._unknown.get(key)
            if seen is not None and self._clock() - seen < self._retry:
                return None
        with Session(self._engine) as s:
            manifest = s.exec(
                select(ModelVersion.manifest).where(ModelVersion.name == model, ModelVersion.version == version)
            ).first()
        with self._lock:
            if manifest is None:
                self._unknown[key] = self._clock()
                return None
            outputs = manifest.get("outputs") if isinstance(manifest, dict) else None
            first = outputs[0] if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict) else {}
            shape = summary_shape(manifest.get("reference"), first.get("shape"))
            self._known[key] = shape
            self._unknown.pop(key, None)
            return shape

    def check(self, summary: dict[str, Any], model: str, version: int) -> None:
        """Raise SummaryError unless ``summary`` has the shape of the registered ``model`` ``version``."""
        shape = self.shape(model, version)
        if shape is None:
            raise SummaryError(f"{model} v{version} is not a registered model version")
        features, n_predictions = shape
        preds = summary.get("predictions")
        if not isinstance(preds, list) or len(preds) != n_predictions:
            got = len(preds) if isinstance(preds, list) else type(preds).__name__
            raise SummaryError(f"predictions: expected {n_predictions} counts (from the manifest), got {got}")
        feats = summary.get("features")
        if not isinstance(feats, dict) or feats.keys() != features.keys():
            raise SummaryError("features: names differ from the manifest's reference")
        for name, n in features.items():
            v = feats[name]
            if not isinstance(v, list) or len(v) != n:
                raise SummaryError(f"features.{name}: expected {n} counts (from the manifest)")
        cm = summary.get("confusion")
        if cm is not None and (len(cm) != n_predictions or any(len(row) != n_predictions for row in cm)):
            raise SummaryError(f"confusion: expected {n_predictions} x {n_predictions} counts (the manifest's classes)")
