"""What the retraining policy looks at, read from the database and the sample partitions.

- Per-device drift: each device's captured production model inputs in a policy
  window (what its model saw, as monitoring bins them), over the incumbent's reference edges
  and tested with monitoring's own drift statistics (``controller.monitoring.drift``:
  PSI and JS with sample-size-aware thresholds). A device with fewer than
  ``min_device_samples`` samples in a window is not judged in it.
- Accuracy: monitoring's measured accuracy of the cohort (labels, late ones
  included), else its estimate from confidence histograms; the baseline is the
  incumbent's accuracy recorded at registration (``lineage.metrics``).
- New labels: labelled samples captured, and labels posted through the API, since
  the model's last run started (before any run: since the incumbent was registered).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session, col, func, select

from controller.core.tables import Cohort, Device, ModelAlias, ModelVersion, PipelineRun, PredictionLabel, TelemetryAggregate
from controller.fleet.cohorts import is_member
from controller.monitoring.drift import ReferenceError, drift_report, reference_from_manifest
from controller.monitoring.service import Scope, accuracy
from controller.pipeline import datasets
from controller.pipeline.policy import UNSUCCESSFUL, DriftWindow, RunInfo

FLEET = "*"
EVIDENCE_DEVICES = 20  # drifted device ids kept per window in a decision's evidence
MIN_MEASURED_LABELS = 30  # fewer labels in the period: the accuracy estimate is used


@dataclass(frozen=True)
class Incumbent:
    version: int
    manifest: dict[str, Any]
    registered_at: float = 0.0  # unix seconds

    @property
    def accuracy(self) -> float | None:
        m = self.manifest.get("lineage", {}).get("metrics", {})
        v = m.get("accuracy_int8", m.get("accuracy")) if isinstance(m, dict) else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def watched(session: Session, since: float) -> list[tuple[str, str]]:
    """(model, cohort) pairs with production telemetry since ``since``; the whole fleet is cohort ``*``."""
    q = (
        select(TelemetryAggregate.model, TelemetryAggregate.cohort)
        .where(TelemetryAggregate.role == "production", col(TelemetryAggregate.window_start) >= since)
        .distinct()
    )
    return sorted(session.exec(q).all())


def running_now(session: Session, model: str, cohort: str) -> int | None:
    """The version most of the cohort's devices last reported running in production (their status), or None."""
    devices = list(session.exec(select(Device)).all())
    if cohort != FLEET:
        row = session.get(Cohort, cohort)
        if row is None:
            return None
        devices = [d for d in devices if is_member(row, d)]
    counts = Counter(
        int(a["version"])
        for d in devices
        if isinstance(a := (d.actual or {}).get("production"), dict) and a.get("model") == model
    )
    return max(counts, key=lambda v: (counts[v], v)) if counts else None


def incumbent(session: Session, model: str, cohort: str, since: float, recent: float | None = None) -> Incumbent | None:
    """The version the cohort runs now: what most of its devices report running in production; without reports,
    the one with the most production windows since ``recent`` (the policy's last windows), else since ``since``,
    else the ``production`` alias, else the newest approved, else the newest.

    Now first: a cohort that finished a rollout an hour ago runs the new version, however many more windows the
    old one has over the day, and its windows may still be on the devices (ADR 0076 batches them); the candidate
    is compared with it and its drift reference is the one that counts."""
    version = running_now(session, model, cohort)
    for start in [] if version is not None else [t for t in (recent, since) if t is not None]:
        q = (
            select(TelemetryAggregate.version, func.sum(TelemetryAggregate.windows))
            .where(
                TelemetryAggregate.model == model,
                TelemetryAggregate.cohort == cohort,
                TelemetryAggregate.role == "production",
                col(TelemetryAggregate.window_start) >= start,
            )
            .group_by(col(TelemetryAggregate.version))
        )
        seen = sorted(session.exec(q).all(), key=lambda r: (-(r[1] or 0), -r[0]))
        if seen:
            version = seen[0][0]
            break
    rows = list(session.exec(select(ModelVersion).where(ModelVersion.name == model, col(ModelVersion.revoked).is_(False))).all())
    if version is None:
        alias = session.get(ModelAlias, (model, "production"))
        version = alias.version if alias is not None else None
    if version is None:
        approved = [r for r in rows if r.approved_by is not None]
        pick = max(approved or rows, key=lambda r: r.version, default=None)
        version = pick.version if pick else None
    row = next((r for r in rows if r.version == version), None)
    if row is None:
        return None
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=timezone.utc)
    return Incumbent(row.version, dict(row.manifest), created.timestamp())


def device_drift(
    root: Path, model: str, cohort: str, inc: Incumbent, end: float, window_s: float, windows: int, min_device_samples: int
) -> list[DriftWindow]:
    """Per window (oldest first), how many of the cohort's devices with enough samples drifted."""
    try:
        ref = reference_from_manifest(inc.manifest.get("reference", {}))
    except ReferenceError:
        return []
    if not ref.features or not (root / "samples" / f"model={model}").exists():
        return []
    since = end - windows * window_s
    cohort_sql = "" if cohort == FLEET else "AND cohort = $cohort "
    params: dict[str, Any] = {"model": model, "since": since, "end": end, "w": window_s}
    if cohort != FLEET:
        params["cohort"] = cohort
    rows = datasets.sql(
        root,
        # each sample once (datasets.SAMPLE_KEY: a sample in two cohorts, a prediction captured again with its label)
        "SELECT device_id, floor((min(ts) - $since) / $w)::BIGINT AS k, any_value(inputs) FROM samples "  # noqa: S608
        f"WHERE model = $model AND role = 'production' {cohort_sql}"
        f"GROUP BY {datasets.SAMPLE_KEY} HAVING min(ts) >= $since AND min(ts) < $end",
        params,
    )
    groups: dict[tuple[int, str], list[np.ndarray]] = {}
    for device, k, inputs in rows:
        groups.setdefault((int(k), device), []).append(np.asarray(inputs, dtype=np.float32))
    out = []
    for k in range(windows):
        judged, drifted = 0, []
        for (kk, device), xs in sorted(groups.items()):
            if kk != k or len(xs) < min_device_samples:
                continue
            if len({x.size for x in xs}) != 1:
                continue
            x = np.stack(xs).astype(np.float64)
            feats = {}
            for i, f in enumerate(ref.features):
                if i >= x.shape[1]:
                    break
                idx = np.searchsorted(f.edges, x[:, i], side="right")
                idx[x[:, i] == f.edges[-1]] = len(f.edges) - 1
                feats[f.name] = np.bincount(idx, minlength=len(f.edges) + 1).astype(int).tolist()
            judged += 1
            if drift_report(ref, {"features": feats}).dataset_drift:
                drifted.append(device)
        out.append(DriftWindow(since + k * window_s, judged, len(drifted), drifted[:EVIDENCE_DEVICES]))
    return out


def cohort_accuracy(session: Session, model: str, cohort: str, since: float, until: float) -> tuple[float | None, str]:
    _, tot = accuracy(session, Scope(model, cohort, "production", int(since), int(until)))
    labels, correct = int(tot.get("labels") or 0), int(tot.get("correct") or 0)
    if labels >= MIN_MEASURED_LABELS:
        return correct / labels, "measured"
    est = tot.get("estimated")
    return (float(est), "estimated") if isinstance(est, float) else (None, "")


def runs(session: Session, model: str) -> tuple[RunInfo | None, RunInfo | None, int]:
    """The model's latest run, a run still running, and how many runs in a row (newest back) found no blessed model."""
    rows = list(session.exec(select(PipelineRun).where(PipelineRun.model == model).order_by(col(PipelineRun.id).desc())).all())

    def info(r: PipelineRun) -> RunInfo:
        return RunInfo(int(r.id or 0), r.state, r.started_at, r.cohort)

    running = next((info(r) for r in rows if r.state == "running"), None)
    streak = 0
    for r in rows:
        if r.state == "running":
            continue
        if r.state not in UNSUCCESSFUL:
            break
        streak += 1
    return (info(rows[0]) if rows else None), running, streak


def new_labels(session: Session, root: Path, model: str, since: float) -> int:
    api = session.exec(
        select(func.count())
        .select_from(PredictionLabel)
        .where(PredictionLabel.model == model, PredictionLabel.source == "api", col(PredictionLabel.received_at) >= since)
    ).one()
    captured = 0
    if (root / "samples" / f"model={model}").exists():
        captured = int(
            datasets.sql(
                root,
                f"SELECT count(*) FROM (SELECT DISTINCT {datasets.SAMPLE_KEY} FROM samples "  # noqa: S608  (each sample once)
                "WHERE model = $m AND label IS NOT NULL AND ts >= $s)",
                {"m": model, "s": since},
            )[0][0]
        )
    return int(api or 0) + captured
