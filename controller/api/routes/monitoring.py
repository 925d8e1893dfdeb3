"""Monitoring: drift, accuracy (with late labels), data quality, SLOs and alerts (controller/monitoring/)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status
from sqlmodel import col, select

from controller.api.deps import Operator, SessionDep, SettingsDep, needs
from controller.api.paging import PAGED, PageDep
from controller.api.schemas import (
    AccuracyPublic,
    AlertPublic,
    FeatureDriftPublic,
    LabelBatch,
    LabelsStored,
    PredictionDriftPublic,
    SloIn,
    SloPublic,
    SloStatus,
    VersionDriftPublic,
    WindowAccuracyPublic,
)
from controller.core import audit
from controller.core.roles import Role
from controller.core.tables import MonitorAlert, SloObjective
from controller.fleet.cohorts import FLEET
from controller.monitoring import service
from controller.monitoring.accuracy import LabelError, LabelIn, store_labels
from controller.monitoring.jobs import evaluate_slo
from controller.telemetry.aggregate import window_start

router = APIRouter(prefix="/v1/monitoring", tags=["monitoring"], dependencies=[needs(Role.VIEWER)])
labels_router = APIRouter(prefix="/v1/labels", tags=["monitoring"])

Model = Annotated[str, Query(max_length=128)]
Cohort = Annotated[str, Query(max_length=64, description="cohort name, or * for the whole fleet")]
RoleQ = Annotated[str, Query(max_length=40)]
Since = Annotated[int, Query(ge=0, le=2**40, description="unix seconds, first window start included")]
Until = Annotated[int, Query(ge=0, le=2**40, description="unix seconds, window starts before this")]
Version = Annotated[int | None, Query(ge=1, le=2**31 - 1)]
SloName = Annotated[str, Path(max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]


def _not_found(exc: service.NotFound) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))


@router.get("/drift", response_model=list[VersionDriftPublic], responses=PAGED)
def drift(
    session: SessionDep,
    page: PageDep,
    model: Model,
    cohort: Cohort = FLEET,
    role: RoleQ = "production",
    since: Since = 0,
    until: Until = 2**40,
    version: Version = None,
    baseline_since: Annotated[int | None, Query(ge=0, le=2**40, description="compare with this earlier period")] = None,
    baseline_until: Annotated[int | None, Query(ge=0, le=2**40)] = None,
    include_flagged: Annotated[bool, Query(description="keep windows that break data-quality rules")] = False,
) -> list[VersionDriftPublic]:
    """Drift per model version over the windows in [since, until), against the manifest's reference
    or, with ``baseline_since``/``baseline_until``, against that period of the same version."""
    if (baseline_since is None) != (baseline_until is None):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "give both baseline_since and baseline_until, or neither")
    baseline = (baseline_since, baseline_until) if baseline_since is not None and baseline_until is not None else None
    try:
        results = service.drift(
            session,
            service.Scope(model, cohort, role, since, until, version),
            baseline=baseline,
            exclude_flagged=not include_flagged,
        )
    except service.NotFound as exc:
        raise _not_found(exc) from None
    out = []
    for vd in results:
        r = vd.report
        out.append(
            VersionDriftPublic(
                model=model,
                version=vd.version,
                cohort=cohort,
                role=role,
                since=vd.since,
                until=vd.until,
                windows=vd.windows,
                device_windows=vd.device_windows,
                excluded_windows=vd.excluded_windows,
                reference=r.reference,
                drifted_features=r.drifted_features,
                drift_share=r.drift_share,
                dataset_drift=r.dataset_drift,
                thresholds=r.thresholds,
                features=[FeatureDriftPublic(**asdict(f)) for f in r.features],
                predictions=None if r.predictions is None else PredictionDriftPublic(**asdict(r.predictions)),
                quality=vd.quality,
            )
        )
    return page.slice(out)


@router.get("/accuracy", response_model=AccuracyPublic)
def accuracy(
    session: SessionDep,
    model: Model,
    cohort: Cohort = FLEET,
    role: RoleQ = "production",
    since: Since = 0,
    until: Until = 2**40,
    version: Version = None,
) -> AccuracyPublic:
    """Measured accuracy per prediction window (window labels + late labels) beside the confidence-based estimate."""
    rows, tot = service.accuracy(session, service.Scope(model, cohort, role, since, until, version))
    return AccuracyPublic(
        model=model,
        cohort=cohort,
        role=role,
        predictions=int(tot["predictions"] or 0),
        labels=int(tot["labels"] or 0),
        correct=int(tot["correct"] or 0),
        accuracy=tot["accuracy"],
        estimated=tot["estimated"],
        windows=[WindowAccuracyPublic(**asdict(r)) for r in rows],
    )


@router.get("/quality", response_model=list[dict[str, object]], responses=PAGED)
def quality(
    session: SessionDep,
    page: PageDep,
    model: Model,
    cohort: Cohort = FLEET,
    role: RoleQ = "production",
    since: Since = 0,
    until: Until = 2**40,
    version: Version = None,
) -> list[dict[str, object]]:
    """Windows that break a data-quality rule (non-finite or out-of-range inputs, a stuck feature)."""
    try:
        return page.slice(list(service.quality(session, service.Scope(model, cohort, role, since, until, version))))
    except service.NotFound as exc:
        raise _not_found(exc) from None


@labels_router.post("", response_model=LabelsStored)
def post_labels(body: LabelBatch, session: SessionDep, settings: SettingsDep, me: Operator) -> LabelsStored:
    """Ground truth for earlier predictions, by device and prediction id (a label posted again replaces the first)."""
    items = [
        LabelIn(
            device_id=x.device_id,
            prediction_id=x.prediction_id,
            model=x.model,
            version=x.version,
            window_start=window_start(x.predicted_at, settings.telemetry_window_s),
            label=x.label,
            predicted=x.predicted,
            role=x.role,
            source="api",
        )
        for x in body.labels
    ]
    try:
        n = store_labels(session, items)
    except LabelError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    session.commit()
    return LabelsStored(stored=n)


# --- SLOs and alerts ---------------------------------------------------------------------


def _slo_public(o: SloObjective) -> SloPublic:
    return SloPublic.model_validate(
        {
            "name": o.name,
            "model": o.model,
            "cohort": o.cohort,
            "kind": o.kind,
            "target": o.target,
            "threshold_ms": o.threshold_ms,
            "windows": o.windows,
        }
    )


@router.put("/slos/{name}", response_model=SloPublic)
def put_slo(name: SloName, body: SloIn, session: SessionDep, me: Operator) -> SloPublic:
    """Create or replace an objective (audited)."""
    if body.kind == "latency" and body.threshold_ms is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "a latency objective needs threshold_ms")
    for w in body.windows:
        if w.short_s > w.long_s:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"short_s {w.short_s} is longer than long_s {w.long_s}")
    row = session.get(SloObjective, name) or SloObjective(name=name, model=body.model, kind=body.kind, target=body.target)
    row.model, row.cohort, row.kind, row.target = body.model, body.cohort, body.kind, body.target
    row.threshold_ms = body.threshold_ms
    row.windows = [w.model_dump() for w in body.windows]
    row.created_by = me.name
    session.add(row)
    audit.record(session, actor=me.name, action="slo.set", subject=f"slo/{name}", evidence=body.model_dump())
    session.commit()
    return _slo_public(row)


@router.delete("/slos/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_slo(name: SloName, session: SessionDep, me: Operator) -> None:
    row = session.get(SloObjective, name)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no SLO named {name!r}")
    session.delete(row)
    audit.record(session, actor=me.name, action="slo.deleted", subject=f"slo/{name}")
    session.commit()


@router.get("/slos", response_model=list[SloStatus], responses=PAGED)
def slos(
    session: SessionDep,
    page: PageDep,
    settings: SettingsDep,
    model: Annotated[str | None, Query(max_length=128)] = None,
    cohort: Annotated[str | None, Query(max_length=64)] = None,
    at: Annotated[int | None, Query(ge=0, le=2**40, description="evaluate as of this time (unix seconds); default now")] = None,
) -> list[SloStatus]:
    """Objectives with their burn rates now, or as of ``at`` (over complete windows)."""
    q = select(SloObjective)
    if model is not None:
        q = q.where(SloObjective.model == model)
    if cohort is not None:
        q = q.where(SloObjective.cohort == cohort)
    end = int((time.time() if at is None else at) // settings.telemetry_window_s) * settings.telemetry_window_s
    out = []
    for o in page.rows(session, q.order_by(col(SloObjective.name))):
        ev = evaluate_slo(session, o, end, settings.telemetry_window_s)
        out.append(
            SloStatus(
                name=o.name,
                kind=o.kind,
                model=o.model,
                cohort=o.cohort,
                target=o.target,
                firing=ev.firing,
                severity=ev.severity if ev.firing else None,
                summary=ev.summary,
                evidence=ev.evidence(),
            )
        )
    return out


@router.get("/alerts", response_model=list[AlertPublic], responses=PAGED)
def alerts(
    session: SessionDep,
    page: PageDep,
    state: Annotated[str | None, Query(pattern="^(firing|resolved)$")] = None,
    kind: Annotated[str | None, Query(pattern="^(drift|slo|quality)$")] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
) -> list[AlertPublic]:
    """Monitoring alerts, newest first."""
    q = select(MonitorAlert)
    if state is not None:
        q = q.where(MonitorAlert.state == state)
    if kind is not None:
        q = q.where(MonitorAlert.kind == kind)
    if model is not None:
        q = q.where(MonitorAlert.model == model)
    rows = page.rows(session, q.order_by(col(MonitorAlert.id).desc()))
    return [AlertPublic.model_validate(r, from_attributes=True) for r in rows]
