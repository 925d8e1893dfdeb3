"""Desired state: assign a registered version to a role on devices, signed by the director.

One function for a device and for every device of a cohort, so the rules
(registry's ``assignable``: not revoked, not below the floor, approved beyond
canary) and the audit record are the same for both.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlmodel import Session

from controller.core import audit
from controller.core.config import Settings
from controller.core.security import Principal
from controller.core.tables import DesiredChange, Device, ModelVersion
from controller.fleet.director import Director
from shared.messages import Assignment, Routing

Envelope = dict[str, Any]


def bundle_url(public_url: str, sha256: str) -> str:
    """Where devices download a bundle: ``EDGEFLEET_PUBLIC_URL`` + the content address."""
    return f"{public_url.rstrip('/')}/v1/bundles/{sha256}"


def sign_for(device: Device, desired: dict[str, Assignment], director: Director, settings: Settings) -> Envelope:
    """Sign ``desired`` for ``device`` with the next counter, and remember when it lapses and its URLs' base."""
    device.desired_counter += 1
    envelope = director.sign_desired(
        device.id, device.desired_counter, desired, settings.desired_ttl_s, routing=routing_of(device)
    )
    device.desired = {r: a.__dict__ for r, a in desired.items()}
    device.desired_expires_at = float(envelope["signed"]["expires_at"])
    device.desired_base_url = settings.public_url.rstrip("/")
    return envelope


def routing_of(device: Device) -> Routing | None:
    """The device's bandit routing as last signed (kept by every re-signing), or None."""
    r = device.routing or {}
    return Routing(int(r["experiment"]), int(r["seed"]), dict(r["weights"])) if r.get("weights") else None


def resign(
    session: Session, *, device: Device, routing: Routing | None, director: Director, settings: Settings
) -> tuple[str, Envelope]:
    """Sign the device's current assignments with new ``routing`` (a small update: no bundle changes)."""
    device.routing = {} if routing is None else asdict(routing)
    envelope = sign_for(device, {r: Assignment(**a) for r, a in (device.desired or {}).items()}, director, settings)
    session.add(device)
    return device.id, envelope


def assign(
    session: Session,
    *,
    devices: list[Device],
    mv: ModelVersion,
    role: str,
    by: Principal,
    reason: str,
    director: Director,
    settings: Settings,
    cohort: str | None = None,
) -> list[tuple[str, Envelope]]:
    """Update desired state of ``devices`` (caller commits, then publishes the envelopes)."""
    out = []
    for device in devices:
        desired = {r: Assignment(**a) for r, a in (device.desired or {}).items()}
        desired[role] = Assignment(
            model=mv.name,
            version=mv.version,
            sha256=mv.sha256,
            length=mv.length,
            url=bundle_url(settings.public_url, mv.sha256),
        )
        envelope = sign_for(device, desired, director, settings)
        session.add(device)
        out.append((device.id, envelope))
    entry = audit.record(
        session,
        actor=by.name,
        action="desired.assigned",
        subject=f"cohort:{cohort}" if cohort else f"device:{devices[0].id}",
        reason=reason,
        evidence={
            "role": role,
            "model": mv.name,
            "version": mv.version,
            "sha256": mv.sha256,
            "approved_by": mv.approved_by,
            "devices": [d.id for d in devices],
        },
    )
    for device in devices:
        session.add(
            DesiredChange(device_id=device.id, role=role, at=entry.at, model=mv.name, version=mv.version, audit_seq=entry.seq)
        )
    return out


def unassign(
    session: Session,
    *,
    devices: list[Device],
    role: str,
    by: Principal,
    reason: str,
    director: Director,
    settings: Settings,
) -> list[tuple[str, Envelope]]:
    """Remove ``role`` from the desired state of ``devices`` that have it (caller commits, then publishes)."""
    out = []
    changed = [d for d in devices if role in (d.desired or {})]
    for device in changed:
        desired = {r: Assignment(**a) for r, a in (device.desired or {}).items() if r != role}
        device.desired_counter += 1
        envelope = director.sign_desired(device.id, device.desired_counter, desired, settings.desired_ttl_s)
        device.desired = {r: a.__dict__ for r, a in desired.items()}
        session.add(device)
        out.append((device.id, envelope))
    if changed:
        audit.record(
            session,
            actor=by.name,
            action="desired.unassigned",
            subject=f"device:{changed[0].id}" if len(changed) == 1 else "devices",
            reason=reason,
            evidence={"role": role, "devices": [d.id for d in changed]},
        )
    return out
