"""Why a device does not run what it should: one short reason from its state and its last problem event (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from controller.core import audit
from controller.core.tables import DesiredChange, Device, DeviceEvent


def pending_roles(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Roles whose desired model version is not the one the device reports running."""
    out = []
    for role, want in sorted(desired.items()):
        have = actual.get(role) or {}
        if (have.get("model"), have.get("version")) != (want.get("model"), want.get("version")):
            out.append(role)
    return out


def why(
    desired: Mapping[str, Any],
    actual: Mapping[str, Any],
    *,
    online: bool,
    last_seen: datetime | None,
    last_problem: tuple[str, str] | None = None,
) -> str:
    """Empty when converged; else the most useful reason: offline, the device's last warning or error, or still updating.

    ``last_problem`` is the (kind, message) of the device's latest warning or error event.
    """
    roles = pending_roles(desired, actual)
    if not roles:
        return ""
    role = roles[0]
    want = desired[role]
    target = f"{want.get('model')} v{want.get('version')} ({role})"
    if not online:
        seen = f", last seen {last_seen.isoformat(timespec='seconds')}" if last_seen else ", never seen"
        return f"offline{seen}: {target} waits for it"
    if last_problem is not None:
        kind, message = last_problem
        return f"{kind}: {message}"[:200]
    slot_reason = str((actual.get(role) or {}).get("reason") or "")
    if slot_reason:
        return slot_reason[:200]
    return f"updating to {target}"


def reasons(session: Session, devices: Sequence[Device]) -> dict[str, str]:
    """``why`` for each device of a page, with two grouped queries (last decision, last problem event)."""
    pending = [d for d in devices if pending_roles(d.desired or {}, d.actual or {})]
    ids = [d.id for d in pending if d.online]
    decided: dict[str, str] = {}
    problems: dict[str, tuple[str, str, datetime]] = {}
    if ids:
        q_at = select(DesiredChange.device_id, func.max(DesiredChange.at)).where(col(DesiredChange.device_id).in_(ids))
        decided = {did: at for did, at in session.exec(q_at.group_by(DesiredChange.device_id)).all()}
        last = (
            select(func.max(DeviceEvent.id))
            .where(col(DeviceEvent.device_id).in_(ids), col(DeviceEvent.severity).in_(("warning", "error")))
            .group_by(DeviceEvent.device_id)
        )
        for e in session.exec(select(DeviceEvent).where(col(DeviceEvent.id).in_(last))).all():
            problems[e.device_id] = (e.kind, e.message, e.received_at)
    out = {}
    for d in pending:
        p = problems.get(d.id)
        recent = p is not None and _iso(p[2]) >= decided.get(d.id, "")
        out[d.id] = why(
            d.desired, d.actual, online=d.online, last_seen=d.last_seen, last_problem=(p[0], p[1]) if p and recent else None
        )
    return out


def _iso(t: datetime) -> str:
    return audit.iso(t if t.tzinfo else t.replace(tzinfo=timezone.utc))
