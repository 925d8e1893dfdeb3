"""Apply validated device messages to the database.

Status and events are rare and applied one by one (:class:`Ingestor`); a
status whose models differ from the last one records an ``actualchange`` row and
an audit entry. An event is stored once per (device, stream, seq) (a unique index; the
stream is new whenever the device's seq counter starts again, ADR 0080): the agent
sends it again until the controller acknowledges it (ADR 0078), and a copy that is
already stored is counted as ``duplicate`` and acknowledged again. Telemetry windows are handed to
:class:`controller.telemetry_ingest.TelemetryIngest`, which batches them.
Nothing here raises into the MQTT loop; every dropped message is counted in
``Metrics`` and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, select

from controller.core import audit
from controller.core.metrics import Metrics
from controller.core.tables import ActualChange, Device, DeviceEvent
from controller.telemetry.batch import MAX_SEQ, TelemetryIngest
from controller.telemetry.wire_windows import WireTelemetry
from shared.messages import ONLINE, DeviceMessage, Event, Status, Telemetry
from shared.topics import Topic

__all__ = ["Ingestor", "TelemetryIngest", "apply_status"]

log = logging.getLogger(__name__)

Ack = Callable[[], None]


class Ingestor:
    """Routes device messages: status and events applied now, telemetry batched."""

    def __init__(self, engine: Engine, metrics: Metrics, telemetry: TelemetryIngest | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.telemetry = telemetry

    def __call__(self, topic: Topic, message: DeviceMessage | WireTelemetry, ack: Ack) -> None:
        kind = topic.kind.value
        if isinstance(message, WireTelemetry):
            if self.telemetry is None:
                ack()
                return
            self.telemetry.submit_wire(message)
            return
        if isinstance(message, Telemetry):
            if self.telemetry is None:
                ack()
                return
            self.telemetry.submit(message, ack)
            return
        try:
            outcome = self._apply(message)
        except IntegrityError:
            if not isinstance(message, Event) or not self._stored(message):
                log.exception("integrity error applying %s from %s; message not acknowledged", kind, topic.device_id)
                self.metrics.count(kind, "failed")
                return
            outcome = "duplicate"  # sent again (no ack reached the device yet) or redelivered by the broker
        except SQLAlchemyError:
            log.exception("database error applying %s from %s; message not acknowledged", kind, topic.device_id)
            self.metrics.count(kind, "failed")
            return
        self.metrics.count(kind, outcome)
        ack()

    def _stored(self, event: Event) -> bool:
        with Session(self.engine) as session:
            q = select(DeviceEvent.id).where(
                DeviceEvent.device_id == event.device_id, DeviceEvent.stream == event.stream, DeviceEvent.seq == _event_seq(event)
            )
            return session.exec(q).first() is not None

    def _apply(self, message: Status | Event) -> str:
        with Session(self.engine) as session:
            device = session.get(Device, message.device_id)
            if device is None:
                log.warning("%s from unknown device %s ignored (not enrolled)", type(message).__name__.lower(), message.device_id)
                return "unknown_device"
            if isinstance(message, Status):
                apply_status(session, device, message)
            else:
                session.add(
                    DeviceEvent(
                        device_id=message.device_id,
                        stream=message.stream,
                        seq=_event_seq(message),
                        kind=message.kind,
                        severity=message.severity,
                        message=message.message,
                        detail=message.detail,
                    )
                )
            session.commit()
        return "accepted"


def _event_seq(event: Event) -> int:
    return min(event.seq, MAX_SEQ)


def _identity(m: dict[str, Any] | None) -> tuple[Any, ...] | None:
    return None if m is None else (m["model"], m["version"], m["sha256"])


def apply_status(session: Session, device: Device, status: Status) -> None:
    """Presence, inventory and actual state; each change of what runs is recorded and audited."""
    device.online = status.state == ONLINE
    device.last_seen = datetime.now(timezone.utc)
    if status.state == ONLINE:
        device.agent_version = status.agent_version[:64]
        if status.hardware:
            device.hardware = status.hardware
        new = {role: asdict(m) for role, m in status.models.items()}
        old = device.actual or {}
        at = audit.iso()
        for role in sorted(set(old) | set(new)):
            before, after = old.get(role), new.get(role)
            if _identity(before) == _identity(after):
                continue
            session.add(
                ActualChange(
                    device_id=device.id,
                    role=role,
                    at=at,
                    model=after["model"] if after else None,
                    version=after["version"] if after else None,
                    sha256=after["sha256"] if after else None,
                    since=after["since"] if after else None,
                    reason=(after or {}).get("reason", "")[:1024],
                )
            )
            audit.record(
                session,
                actor=f"device:{device.id}",
                action="device.actual_changed",
                subject=f"device:{device.id}",
                reason=(after or {}).get("reason", "") or ("role emptied" if after is None else "reported by the device"),
                evidence={"role": role, "before": before, "after": after, "status_seq": status.seq},
            )
        device.actual = new
    session.add(device)
