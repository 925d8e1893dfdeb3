"""Accuracy per window and version, with labels that arrive late.

Two sources of ground truth, both attributed to the **prediction's** window and
model version (never to the label's arrival):

- the window summary's ``labels`` counts: labels a device joined to predictions
  of that same window;
- ``PredictionLabel`` rows: labels for earlier predictions, sent by devices in a
  telemetry message's ``labels`` list (the device kept the prediction's context
  on disk) or posted by a back office with ``POST /v1/labels`` by prediction id.

Beside the measured accuracy each window gets the confidence-based estimate
(``controller.monitoring.estimate``), so windows without labels still have a
figure, and windows with both show how far the estimate is from the truth.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from controller.core.tables import PredictionLabel
from controller.monitoring.estimate import estimate_accuracy
from controller.monitoring.summary import part
from controller.monitoring.windows import Window, cohort_devices
from controller.telemetry.labels import LabelError, LabelIn, store_labels

__all__ = ["LabelError", "LabelIn", "late_labels", "overall", "store_labels", "window_accuracy"]


@dataclass
class LabelCounts:
    count: int = 0
    correct: int = 0


def late_labels(
    session: Session, model: str, cohort: str, role: str, since: int, until: int, version: int | None = None
) -> dict[tuple[int, int], LabelCounts]:
    """Label rows of devices in ``cohort``, counted per (window_start, version) of the prediction."""
    q = select(PredictionLabel).where(
        PredictionLabel.model == model,
        PredictionLabel.role == role,
        col(PredictionLabel.window_start) >= since,
        col(PredictionLabel.window_start) < until,
    )
    if version is not None:
        q = q.where(PredictionLabel.version == version)
    members = cohort_devices(session, cohort)
    out: dict[tuple[int, int], LabelCounts] = defaultdict(LabelCounts)
    for row in session.exec(q).all():
        if members is not None and row.device_id not in members:
            continue
        c = out[(row.window_start, row.version)]
        c.count += 1
        c.correct += int(row.predicted is not None and row.predicted == row.label)
    return out


@dataclass
class WindowAccuracy:
    version: int
    window_start: int
    predictions: int
    labels: int
    correct: int
    accuracy: float | None  # measured (None without labels)
    estimated: float | None  # from confidence (None without a confidence histogram)
    estimated_stderr: float | None


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def window_accuracy(
    windows: list[Window], late: dict[tuple[int, int], LabelCounts], calib: dict[int, list[float]]
) -> list[WindowAccuracy]:
    """Per window: measured accuracy (window labels + late labels) and the estimate.

    ``calib`` maps a version to its confidence calibration; windows with only late labels
    (telemetry expired or never sent) are listed too.
    """
    rows: dict[tuple[int, int], WindowAccuracy] = {}
    for w in windows:
        lab = part(w.summary, "labels")
        n, k = _int(lab.get("count")), _int(lab.get("correct"))
        est = estimate_accuracy(w.summary.get("confidence"), calib[w.version]) if w.version in calib else None
        rows[(w.window_start, w.version)] = WindowAccuracy(
            w.version,
            w.window_start,
            _int(w.summary.get("samples")) or _int(w.summary.get("count")),
            n,
            k,
            None,
            est.accuracy if est else None,
            est.stderr if est else None,
        )
    for (ws, ver), c in late.items():
        r = rows.setdefault((ws, ver), WindowAccuracy(ver, ws, 0, 0, 0, None, None, None))
        r.labels += c.count
        r.correct += c.correct
    for r in rows.values():
        r.accuracy = r.correct / r.labels if r.labels else None
    return [rows[k] for k in sorted(rows)]


def overall(rows: list[WindowAccuracy]) -> dict[str, float | int | None]:
    """Totals over windows: measured accuracy, and the estimate weighted by predictions."""
    labels = sum(r.labels for r in rows)
    correct = sum(r.correct for r in rows)
    est_rows = [r for r in rows if r.estimated is not None and r.predictions]
    n_est = sum(r.predictions for r in est_rows)
    return {
        "predictions": sum(r.predictions for r in rows),
        "labels": labels,
        "correct": correct,
        "accuracy": correct / labels if labels else None,
        "estimated": sum(r.estimated * r.predictions for r in est_rows if r.estimated is not None) / n_est if n_est else None,
    }
