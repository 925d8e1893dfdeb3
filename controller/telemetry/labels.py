"""Labels for earlier predictions, stored by (device, prediction id) with the prediction's window and version.

Written by telemetry ingestion (late labels joined on the device, in a window
message's ``labels``) and by ``POST /v1/labels`` (a back office, by prediction
id); read by ``controller.monitoring.accuracy``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, tuple_
from sqlmodel import Session, col, select

from controller.core.tables import Device, PredictionLabel

MAX_LABELS_PER_REQUEST = 10_000


@dataclass(frozen=True)
class LabelIn:
    device_id: str
    prediction_id: str
    model: str
    version: int
    window_start: int  # unix seconds aligned to the window grid: the prediction's window
    label: int
    predicted: int | None
    role: str = "production"
    source: str = "api"


class LabelError(ValueError):
    """A label that cannot be stored (e.g. an unknown device)."""


def store_labels(session: Session, labels: Iterable[LabelIn], now: float | None = None) -> int:
    """Insert or replace labels by (device, prediction id); the caller commits. Returns rows written."""
    items = {(x.device_id, x.prediction_id): x for x in labels}  # the last of duplicates wins
    if not items:
        return 0
    devices = {d for d, _ in items}
    known = set(session.exec(select(Device.id).where(col(Device.id).in_(devices))).all())
    unknown = devices - known
    if unknown:
        raise LabelError(f"unknown device(s): {', '.join(sorted(unknown)[:5])}; register the device first")
    keys = list(items)
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        session.execute(
            delete(PredictionLabel).where(tuple_(col(PredictionLabel.device_id), col(PredictionLabel.prediction_id)).in_(chunk))
        )
    t = time.time() if now is None else now
    session.add_all(
        PredictionLabel(
            device_id=x.device_id,
            prediction_id=x.prediction_id,
            model=x.model,
            version=x.version,
            role=x.role,
            window_start=x.window_start,
            predicted=x.predicted,
            label=x.label,
            source=x.source,
            received_at=t,
        )
        for x in items.values()
    )
    return len(items)
