"""Devices: register, inspect, assign a model version (signed desired state)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from sqlmodel import col, select

from controller.api.deps import Authenticated, DirectorDep, MqttDep, SessionDep, SettingsDep
from controller.models import AssignmentRequest, Device, DeviceCreate, DeviceEvent, DevicePublic, EventPublic, ModelVersion
from shared.errors import ProtocolError
from shared.messages import Assignment, validate_role
from shared.topics import validate_device_id

router = APIRouter(prefix="/v1/devices", tags=["devices"], dependencies=[Authenticated])


def _get_device(session: SessionDep, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id!r} is not registered")
    return device


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DevicePublic)
def register_device(body: DeviceCreate, session: SessionDep) -> Device:
    try:
        validate_device_id(body.id)
    except ProtocolError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if session.get(Device, body.id) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"device {body.id!r} already registered")
    device = Device(id=body.id, arch=body.arch)
    session.add(device)
    session.commit()
    session.refresh(device)
    return device


@router.get("", response_model=list[DevicePublic])
def list_devices(session: SessionDep) -> list[Device]:
    return list(session.exec(select(Device).order_by(Device.id)).all())  # type: ignore[arg-type]


@router.get("/{device_id}", response_model=DevicePublic)
def get_device(device_id: str, session: SessionDep) -> Device:
    return _get_device(session, device_id)


@router.get("/{device_id}/events", response_model=list[EventPublic])
def device_events(device_id: str, session: SessionDep, limit: int = 100) -> list[DeviceEvent]:
    _get_device(session, device_id)
    q = (
        select(DeviceEvent)
        .where(DeviceEvent.device_id == device_id)
        .order_by(col(DeviceEvent.id).desc())
        .limit(min(max(limit, 1), 1000))
    )
    return list(session.exec(q).all())


@router.put("/{device_id}/desired", response_model=DevicePublic)
def assign(
    device_id: str, body: AssignmentRequest, session: SessionDep, director: DirectorDep, mqtt: MqttDep, settings: SettingsDep
) -> Device:
    """Assign a model version to a role; signs and publishes the desired state (retained)."""
    try:
        validate_role(body.role)
    except ProtocolError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    device = _get_device(session, device_id)
    mv = session.exec(select(ModelVersion).where(ModelVersion.name == body.model, ModelVersion.version == body.version)).first()
    if mv is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {body.model} v{body.version} is not registered")
    if mqtt is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "MQTT is disabled on this controller; cannot publish")
    desired = {role: Assignment(**a) for role, a in (device.desired or {}).items()}
    desired[body.role] = Assignment(
        model=mv.name,
        version=mv.version,
        sha256=mv.sha256,
        length=mv.length,
        url=f"{settings.public_url.rstrip('/')}/v1/bundles/{mv.sha256}",
    )
    device.desired_counter += 1
    envelope = director.sign_desired(device.id, device.desired_counter, desired, settings.desired_ttl_s)
    device.desired = {role: a.__dict__ for role, a in desired.items()}
    session.add(device)
    session.commit()
    session.refresh(device)
    mqtt.publish_desired(device.id, envelope)
    return device
