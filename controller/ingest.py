"""Apply validated device messages to the database."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime, timezone

from sqlalchemy import Engine
from sqlmodel import Session

from controller.models import Device, DeviceEvent
from shared.messages import ONLINE, DeviceMessage, Event, Status
from shared.topics import Topic

log = logging.getLogger(__name__)


class Ingestor:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __call__(self, topic: Topic, message: DeviceMessage) -> None:
        with Session(self.engine) as session:
            device = session.get(Device, topic.device_id)
            if device is None:
                log.warning("message from unknown device %s ignored", topic.device_id)
                return
            if isinstance(message, Status):
                device.online = message.state == ONLINE
                if message.state == ONLINE:
                    device.actual = {role: asdict(m) for role, m in message.models.items()}
                    device.agent_version = message.agent_version
                device.last_seen = datetime.now(timezone.utc)
                session.add(device)
            elif isinstance(message, Event):
                session.add(
                    DeviceEvent(
                        device_id=message.device_id,
                        seq=message.seq,
                        kind=message.kind,
                        severity=message.severity,
                        message=message.message,
                        detail=message.detail,
                    )
                )
            session.commit()
