"""Which cohorts each device is in, cached for the ingester (cohort edits show within ``ttl_s``)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select as sa_select
from sqlmodel import Session, col

from controller.core.tables import Device
from controller.fleet.cohorts import FLEET, CohortSnapshot, DeviceSnapshot, all_cohorts, cohorts_of


class MembershipCache:
    def __init__(self, ttl_s: float = 120.0) -> None:
        self.membership_ttl_s = ttl_s
        self._members: dict[str, tuple[float, tuple[str, ...] | None]] = {}  # device -> (loaded_at, cohorts or None)
        self._cohorts: tuple[float, list[Any]] = (0.0, [])

    def cohorts_for(self, session: Session, device_ids: set[str]) -> dict[str, tuple[str, ...] | None]:
        """Per device: the fleet and its cohorts, or None for a device that is not enrolled."""
        now = time.monotonic()
        if now - self._cohorts[0] > self.membership_ttl_s:
            self._cohorts = (now, [CohortSnapshot(c.name, list(c.members), dict(c.filter)) for c in all_cohorts(session)])
            self._members.clear()
        missing = [d for d in device_ids if d not in self._members or now - self._members[d][0] > self.membership_ttl_s]
        for i in range(0, len(missing), 500):
            chunk = missing[i : i + 500]
            cols: list[Any] = [Device.id, Device.hardware_class, Device.region, Device.tags, Device.agent_version]
            rows = session.execute(sa_select(*cols).where(col(Device.id).in_(chunk))).all()
            found = {r[0]: DeviceSnapshot(*r) for r in rows}
            for did in chunk:
                dev = found.get(did)
                self._members[did] = (now, None if dev is None else (FLEET, *cohorts_of(dev, self._cohorts[1])))
        return {d: self._members[d][1] for d in device_ids}
