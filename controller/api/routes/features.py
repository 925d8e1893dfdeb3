"""Batch features: per-device, per-cohort or fleet-wide values with validity times (controller/features/).

Setting a value re-signs the desired state of every device it reaches, which carries the
values in force for it now or later; the agent joins them to raw inputs (docs/features.md).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from sqlmodel import col, select

from controller.api.deps import DirectorDep, MqttDep, Operator, RowId, SessionDep, SettingsDep, needs
from controller.api.paging import PAGED, PageDep
from controller.api.schemas import BatchFeatureEnd, BatchFeaturePublic, BatchFeatureSet
from controller.core.roles import Role
from controller.core.tables import BatchFeature
from controller.features.delivery import affected, deliver
from controller.features.store import FeatureValueError, ScopeNotFoundError, end_value, set_value

router = APIRouter(prefix="/v1/features", tags=["features"], dependencies=[needs(Role.VIEWER)])


def _ts(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


def public(row: BatchFeature, delivered_to: int | None = None) -> BatchFeaturePublic:
    assert row.id is not None
    return BatchFeaturePublic(
        id=row.id,
        name=row.name,
        scope=row.scope,
        value=row.value,
        valid_from=_dt(row.valid_from),
        valid_to=None if row.valid_to is None else _dt(row.valid_to),
        recorded_at=_dt(row.recorded_at),
        set_by=row.set_by,
        reason=row.reason,
        audit_seq=row.audit_seq,
        delivered_to=delivered_to,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=BatchFeaturePublic)
def set_feature(
    body: BatchFeatureSet, session: SessionDep, director: DirectorDep, mqtt: MqttDep, settings: SettingsDep, me: Operator
) -> BatchFeaturePublic:
    """Record a value (audited) and deliver it: the desired state of every device it reaches is re-signed and published."""
    try:
        row = set_value(
            session,
            name=body.name,
            value=body.value,
            scope=body.scope,
            actor=me.name,
            reason=body.reason,
            valid_from=_ts(body.valid_from),
            valid_to=_ts(body.valid_to),
        )
    except FeatureValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except ScopeNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    if mqtt is None:  # after the checks: bad input is named first; nothing is written
        session.rollback()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "MQTT is disabled on this controller; cannot deliver")
    devices = affected(session, row.scope)
    published = deliver(session, devices, director, settings)
    session.commit()
    session.refresh(row)
    for device_id, envelope in published:
        mqtt.publish_desired(device_id, envelope)
    return public(row, len(devices))


@router.get("", response_model=list[BatchFeaturePublic], responses=PAGED)
def list_features(
    session: SessionDep,
    page: PageDep,
    name: Annotated[str | None, Query(max_length=64)] = None,
    scope: Annotated[str | None, Query(max_length=200)] = None,
    at: Annotated[datetime | None, Query(description="only values in force at this time")] = None,
) -> list[BatchFeaturePublic]:
    """The values set, newest first; filter by name, scope, or those in force at a time."""
    q = select(BatchFeature).order_by(col(BatchFeature.valid_from).desc(), col(BatchFeature.id).desc())
    if name is not None:
        q = q.where(BatchFeature.name == name)
    if scope is not None:
        q = q.where(BatchFeature.scope == scope)
    t = _ts(at)
    if t is not None:
        q = q.where(col(BatchFeature.valid_from) <= t).where(
            (col(BatchFeature.valid_to).is_(None)) | (col(BatchFeature.valid_to) > t)
        )
    return [public(r) for r in page.rows(session, q)]


@router.post("/{value_id}/end", response_model=BatchFeaturePublic)
def end_feature(
    value_id: RowId,
    body: BatchFeatureEnd,
    session: SessionDep,
    director: DirectorDep,
    mqtt: MqttDep,
    settings: SettingsDep,
    me: Operator,
) -> BatchFeaturePublic:
    """End a value now (or at a later time): from then on the next value by the lookup rules is in force
    (a device's own value ended: its cohort's). The past is never changed."""
    try:
        row = end_value(session, value_id=value_id, actor=me.name, reason=body.reason, at=_ts(body.at))
    except FeatureValueError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except ScopeNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    if mqtt is None:
        session.rollback()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "MQTT is disabled on this controller; cannot deliver")
    devices = affected(session, row.scope)
    published = deliver(session, devices, director, settings)
    session.commit()
    session.refresh(row)
    for device_id, envelope in published:
        mqtt.publish_desired(device_id, envelope)
    return public(row, len(devices))
