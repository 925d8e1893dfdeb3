"""Desired state: assign a registered version to a role on devices, signed by the director.

One function for a device and for every device of a cohort, so the rules
(registry's ``assignable``: not revoked, not below the floor, approved beyond
canary) and the audit record are the same for both.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from sqlmodel import Session

from controller.core import audit
from controller.core.config import Settings
from controller.core.security import Principal
from controller.core.tables import DesiredChange, Device, ModelVersion
from controller.features.store import device_lists
from controller.fleet.director import Director
from shared.features import BatchFeatureValue
from shared.messages import Assignment, Routing

Envelope = dict[str, Any]


def bundle_url(public_url: str, sha256: str) -> str:
    """Where devices download a bundle: ``EDGEFLEET_PUBLIC_URL`` + the content address."""
    return f"{public_url.rstrip('/')}/v1/bundles/{sha256}"


def sign_for(device: Device, desired: dict[str, Assignment], director: Director, settings: Settings) -> Envelope:
    """Sign ``desired`` for ``device`` with the next counter, and remember when it lapses and its URLs' base.

    The device's routing and batch-feature values (``Device.batch_features``, lapsed ones left out)
    go in too, so every re-signing keeps them."""
    device.desired_counter += 1
    envelope = director.sign_desired(
        device.id,
        device.desired_counter,
        desired,
        settings.desired_ttl_s,
        sampling=device.sampling,
        routing=routing_of(device),
        features=features_of(device, time.time()),
    )
    device.desired = {r: a.__dict__ for r, a in desired.items()}
    device.desired_expires_at = float(envelope["signed"]["expires_at"])
    device.desired_base_url = settings.public_url.rstrip("/")
    return envelope


def features_of(device: Device, now: float) -> list[BatchFeatureValue]:
    """The device's batch-feature values as last computed (``controller.features``), without lapsed ones."""
    out = []
    for f in device.batch_features or []:
        if f.get("valid_to") is None or f["valid_to"] > now:
            out.append(BatchFeatureValue.from_wire(f))
    return out


def routing_of(device: Device) -> Routing | None:
    """The device's bandit routing as last signed (kept by every re-signing), or None."""
    r = device.routing or {}
    return Routing(int(r["experiment"]), int(r["seed"]), dict(r["weights"])) if r.get("weights") else None


def resign(
    session: Session, *, device: Device, routing: Routing | None, director: Director, settings: Settings
) -> tuple[str, Envelope]:
    """Sign the device's current assignments with new ``routing`` (a small update: no bundle changes)."""
    device.routing = {} if routing is None else asdict(routing)
    return resign_as_is(session, device, director, settings)


def resign_as_is(session: Session, device: Device, director: Director, settings: Settings) -> tuple[str, Envelope]:
    """Sign the device's current assignments, routing and sampling settings again, e.g. after one of them changed."""
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
    sampling: dict[str, Any] | None = None,
) -> list[tuple[str, Envelope]]:
    """Update desired state of ``devices`` (caller commits, then publishes the envelopes).

    ``sampling`` settings (e.g. ``{"shadow_rate": 0.2}``) are merged into each device's and
    signed with its desired state from now on."""
    out = []
    device_lists(session, devices, time.time())  # the batch features in force for them go in too
    for device in devices:
        if sampling:
            device.sampling = {**(device.sampling or {}), **sampling}
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
    """Remove ``role`` from the desired state of ``devices`` that have it (caller commits, then publishes).

    The routing and the other sampling settings stay; a role's own settings (``shadow_rate``) go with it."""
    out = []
    changed = [d for d in devices if role in (d.desired or {})]
    for device in changed:
        desired = {r: Assignment(**a) for r, a in (device.desired or {}).items() if r != role}
        device.sampling = {k: v for k, v in (device.sampling or {}).items() if not k.startswith(f"{role}_")}
        envelope = sign_for(device, desired, director, settings)
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
