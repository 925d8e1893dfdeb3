"""Devices: enrol, inventory, desired vs actual state, history, events.

A device must be enrolled here before the controller accepts anything it
publishes (messages from unknown devices are counted and dropped).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status
from sqlmodel import col, select

from controller.api.deps import DirectorDep, MqttDep, Operator, RegistryDep, SessionDep, SettingsDep, needs
from controller.api.paging import PAGED, Page, PageDep, page_params
from controller.api.schemas import ActualChangePublic, AssignmentRequest, DeviceCreate, DevicePublic, DeviceUpdate, EventPublic
from controller.core import audit
from controller.core.roles import Role
from controller.core.tables import ActualChange, Device, DeviceEvent
from controller.fleet import assignments, convergence
from shared.errors import ProtocolError
from shared.messages import validate_role
from shared.topics import validate_device_id

router = APIRouter(prefix="/v1/devices", tags=["devices"], dependencies=[needs(Role.VIEWER)])
DeviceId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


def get_device(session: SessionDep, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id!r} is not enrolled")
    return device


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DevicePublic)
def enrol_device(body: DeviceCreate, session: SessionDep, me: Operator) -> Device:
    """Enrol a device; until then its messages are ignored."""
    try:
        validate_device_id(body.id)
    except ProtocolError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if session.get(Device, body.id) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"device {body.id!r} is already enrolled")
    device = Device(id=body.id, arch=body.arch, hardware_class=body.hardware_class, region=body.region, tags=body.tags)
    session.add(device)
    audit.record(session, actor=me.name, action="device.enrolled", subject=f"device:{body.id}", evidence=body.model_dump())
    session.commit()
    session.refresh(device)
    return device


@router.get("", response_model=list[DevicePublic], responses=PAGED)
def list_devices(
    session: SessionDep,
    page: Annotated[Page, page_params(1000, 10_000)],
    region: Annotated[str | None, Query(max_length=64)] = None,
    hardware_class: Annotated[str | None, Query(max_length=64)] = None,
    online: bool | None = None,
    after: Annotated[str, Query(max_length=64)] = "",
) -> list[DevicePublic]:
    """Devices ordered by id; page with ``offset`` (the ``Link`` header) or ``after`` (the last id seen)."""
    q = select(Device).where(col(Device.id) > after).order_by(col(Device.id))
    if region is not None:
        q = q.where(Device.region == region)
    if hardware_class is not None:
        q = q.where(Device.hardware_class == hardware_class)
    if online is not None:
        q = q.where(Device.online == online)
    return with_reasons(session, page.rows(session, q))


def with_reasons(session: SessionDep, devices: list[Device]) -> list[DevicePublic]:
    why = convergence.reasons(session, devices)
    return [DevicePublic.model_validate(d, update={"why": why.get(d.id, "")}) for d in devices]


@router.get("/{device_id}", response_model=DevicePublic)
def show_device(device_id: DeviceId, session: SessionDep) -> DevicePublic:
    return with_reasons(session, [get_device(session, device_id)])[0]


@router.patch("/{device_id}", response_model=DevicePublic)
def update_device(device_id: DeviceId, body: DeviceUpdate, session: SessionDep, me: Operator) -> Device:
    """Change inventory fields used by cohort filters (hardware class, region, tags)."""
    device = get_device(session, device_id)
    changes = body.model_dump(exclude_none=True)
    before = {k: getattr(device, k) for k in changes}
    for k, v in changes.items():
        setattr(device, k, v)
    session.add(device)
    audit.record(
        session,
        actor=me.name,
        action="device.updated",
        subject=f"device:{device_id}",
        evidence={"before": before, "after": changes},
    )
    session.commit()
    session.refresh(device)
    return device


@router.get("/{device_id}/events", response_model=list[EventPublic], responses=PAGED)
def device_events(device_id: DeviceId, session: SessionDep, page: PageDep) -> list[DeviceEvent]:
    """What the device reported (OTA transitions, rollbacks and rejections with reasons), newest first."""
    get_device(session, device_id)
    q = select(DeviceEvent).where(DeviceEvent.device_id == device_id).order_by(col(DeviceEvent.id).desc())
    return page.rows(session, q)


@router.get("/{device_id}/history", response_model=list[ActualChangePublic], responses=PAGED)
def device_history(device_id: DeviceId, session: SessionDep, page: PageDep) -> list[ActualChange]:
    """Changes of what the device reported running, newest first."""
    get_device(session, device_id)
    q = select(ActualChange).where(ActualChange.device_id == device_id).order_by(col(ActualChange.id).desc())
    return page.rows(session, q)


@router.put("/{device_id}/desired", response_model=DevicePublic)
def assign(
    device_id: DeviceId,
    body: AssignmentRequest,
    session: SessionDep,
    registry: RegistryDep,
    director: DirectorDep,
    mqtt: MqttDep,
    settings: SettingsDep,
    me: Operator,
) -> Device:
    """Assign a model version to a role; signs and publishes the desired state (retained).

    Beyond canary (production, experiment arms) the version must be approved.
    """
    try:
        validate_role(body.role)
    except ProtocolError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    device = get_device(session, device_id)
    mv = registry.assignable(session, body.model, body.version, body.role)
    if mqtt is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "MQTT is disabled on this controller; cannot publish")
    published = assignments.assign(
        session, devices=[device], mv=mv, role=body.role, by=me, reason=body.reason, director=director, settings=settings
    )
    session.commit()
    session.refresh(device)
    for did, envelope in published:
        mqtt.publish_desired(did, envelope)
    return device
