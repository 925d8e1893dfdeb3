"""The leader's desired-state refresh: signed desired states never lapse, and follow the public URL.

A device's retained desired state is re-signed (next counter, fresh expiry) once less
than half of ``desired_ttl_s`` is left, or when ``EDGEFLEET_PUBLIC_URL`` changed since
it was signed (its bundle URLs are rewritten). Rows are locked while the new envelope
is signed and published and until the commit, so an operator's assignment on the same
device waits and its retained message is the last one published. A crash between the
publish and the commit leaves the device with a valid envelope; the next run signs
again (idempotent: same assignments, newer expiry).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine, or_
from sqlmodel import Session, col, select

from controller.core.config import Settings
from controller.core.tables import Device
from controller.fleet.assignments import bundle_url, sign_for
from controller.fleet.director import Director
from shared.messages import Assignment

REFRESH_AT = 0.5  # re-sign once less than this fraction of desired_ttl_s is left
Publish = Callable[[str, dict[str, Any]], None]


def refresh_desired(
    engine: Engine, director: Director, settings: Settings, publish: Publish, *, now: float | None = None, batch: int = 200
) -> int:
    """Re-sign and publish every desired state due; returns how many were refreshed."""
    t = time.time() if now is None else now
    base = settings.public_url.rstrip("/")
    horizon = t + settings.desired_ttl_s * REFRESH_AT
    total = 0
    while True:
        with Session(engine) as session:
            q = (
                select(Device)
                .where(col(Device.desired_counter) > 0)
                .where(or_(col(Device.desired_expires_at) < horizon, col(Device.desired_base_url) != base))
                .order_by(col(Device.desired_expires_at))
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
            devices = list(session.exec(q).all())
            if not devices:
                return total
            out = []
            for device in devices:
                desired = {
                    r: replace(Assignment(**a), url=bundle_url(base, a["sha256"])) for r, a in (device.desired or {}).items()
                }
                out.append((device.id, sign_for(device, desired, director, settings)))
                session.add(device)
            session.flush()
            for device_id, envelope in out:
                publish(device_id, envelope)
            session.commit()
            total += len(out)
            if len(devices) < batch:
                return total


def refresh_interval_s(settings: Settings) -> float:
    """A quarter of desired_ttl_s, within [0.5 s, 5 min]."""
    return max(0.5, min(300.0, settings.desired_ttl_s / 4))
