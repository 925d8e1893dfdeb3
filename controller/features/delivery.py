"""Delivering batch features: each affected device's list is recomputed and its desired state re-signed.

The device is the online store: its signed desired state carries the values in force for it
now or later (``Device.batch_features``, kept by every re-signing), and the agent joins them
to raw inputs at transform time. Devices that never received a desired state get theirs
with their first assignment. The leader's ``reconcile`` pass catches what changes without a
value being set: a device that joined or left a cohort.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from controller.core.config import Settings
from controller.core.tables import Cohort, Device
from controller.features.store import device_lists, for_device, live
from controller.fleet.assignments import Envelope, features_of, sign_for
from controller.fleet.cohorts import all_cohorts, members
from controller.fleet.director import Director
from shared.messages import Assignment

Publish = Callable[[str, dict[str, Any]], None]


def affected(session: Session, scope: str) -> list[Device]:
    """The devices a value for ``scope`` reaches."""
    kind, _, target = scope.partition(":")
    if kind == "device":
        device = session.get(Device, target)
        return [] if device is None else [device]
    if kind == "cohort":
        cohort = session.get(Cohort, target)
        ids = [] if cohort is None else members(session, cohort)
        return [d for d in (session.get(Device, i) for i in ids) if d is not None]
    return list(session.exec(select(Device)).all())


def deliver(
    session: Session, devices: list[Device], director: Director, settings: Settings, now: float | None = None
) -> list[tuple[str, Envelope]]:
    """Recompute ``devices``' batch features and re-sign the desired states that exist (caller commits, then publishes)."""
    device_lists(session, devices, time.time() if now is None else now)
    out = []
    for device in devices:
        if device.desired_counter > 0:
            desired = {r: Assignment(**a) for r, a in (device.desired or {}).items()}
            out.append((device.id, sign_for(device, desired, director, settings)))
        session.add(device)
    return out


def reconcile(
    engine: Engine, director: Director, settings: Settings, publish: Publish, *, now: float | None = None, batch: int = 500
) -> int:
    """The leader's pass: every device whose signed values differ from those in force for it now (it joined
    or left a cohort, a cohort's filter changed) gets its list recomputed and, if it has a desired state,
    re-signed and published. Returns how many desired states were re-signed. No values in force: no work.

    Rows are locked from the recompute to the commit (``skip_locked``), like the desired-state refresh,
    so an operator's assignment on the same device waits and its retained message is the last one."""
    t = time.time() if now is None else now
    total, after = 0, ""
    while True:
        with Session(engine) as session:
            rows = live(session, t)
            if not rows:
                return total
            cohorts = all_cohorts(session)
            q = (
                select(Device)
                .where(col(Device.id) > after)
                .order_by(col(Device.id))
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
            devices = list(session.exec(q).all())
            if not devices:
                return total
            out = []
            for device in devices:
                wanted = [v.to_wire() for v in for_device(rows, device, cohorts, t)]
                if wanted == [v.to_wire() for v in features_of(device, t)]:
                    continue
                device.batch_features = wanted
                if device.desired_counter > 0:
                    desired = {r: Assignment(**a) for r, a in (device.desired or {}).items()}
                    out.append((device.id, sign_for(device, desired, director, settings)))
                session.add(device)
            session.flush()
            for device_id, envelope in out:
                publish(device_id, envelope)
            session.commit()
            total += len(out)
            after = devices[-1].id
            if len(devices) < batch:
                return total
