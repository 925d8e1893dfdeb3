"""A revoked version leaves the fleet at once: the registry's release hook for every device outside a rollout.

Revoking a version delists it from the signed targets, so no device installs it again
(ADR 0073), but devices already running it would keep it until someone reassigned them.
This hook runs in the revoking transaction, after the rollout engine's (which puts the
canaries of an open rollout back on its baseline) and the experiment engine's (which
stops an experiment with an arm on the version). Every other device whose signed desired
state still names the version is re-signed in the same transaction:

- a shadow role on it is removed (it serves nothing);
- any other role goes to the newest older version the role may run (not revoked, at or
  above the floor, approved where the role needs it: ``Registry.assignable``);
- when no such version exists the device keeps its assignment, so it keeps a model,
  and the audit entry names it for an operator to assign one.

Devices of an open rollout of the model are the rollout engine's (``held``). The new
desired states are published once the revocation commits. Revocations are rare, so the
devices are found by reading each one's desired state rather than by an index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlmodel import Session, select

from controller.core import audit
from controller.core.config import Settings
from controller.core.tables import DesiredChange, Device, ModelVersion
from controller.fleet.assignments import bundle_url, sign_for
from controller.fleet.director import Director
from controller.release.registry import Registry, RegistryError, ReleaseChange
from shared.messages import Assignment

log = logging.getLogger(__name__)

SYSTEM = "system:revocation"
Envelopes = list[tuple[str, dict[str, Any]]]
PublishAll = Callable[[Sequence[tuple[str, dict[str, Any]]]], None]
Held = Callable[[Session, str], set[str]]  # (session, model) -> device ids an open rollout of the model holds


def runs_version(desired: dict[str, Any], model: str, version: int) -> list[str]:
    """The roles of a desired state that name ``model`` v``version``."""
    return sorted(r for r, a in (desired or {}).items() if a.get("model") == model and int(a.get("version", 0)) == version)


@dataclass
class RevocationSweep:
    director: Director
    settings: Settings
    registry: Registry
    publish: PublishAll | None
    held: Held = lambda _session, _model: set()

    def on_release_change(self, session: Session, change: ReleaseChange) -> None:
        if change.kind != "revoked":
            return
        out = self.sweep(session, change.name, change.version)
        if out and self.publish is not None:
            publish = self.publish

            def _publish(_s: Session) -> None:
                try:
                    publish(out)
                except Exception:  # retained desired states are re-published by the refresh job; never fail the commit
                    log.exception("publishing %d desired state(s) after a revocation failed", len(out))

            event.listen(session, "after_commit", _publish, once=True)

    def sweep(self, session: Session, model: str, version: int) -> Envelopes:
        """Re-sign every device (outside open rollouts of ``model``) whose desired state names the revoked version."""
        held = self.held(session, model)
        devices = [d for d in session.exec(select(Device)).all() if d.id not in held and runs_version(d.desired, model, version)]
        if not devices:
            return []
        fallback: dict[str, ModelVersion | None] = {}
        out: Envelopes = []
        moved: dict[str, dict[str, int | None]] = {}
        kept: list[str] = []
        changes: list[tuple[str, str, ModelVersion]] = []
        for device in devices:
            desired = {r: Assignment(**a) for r, a in (device.desired or {}).items()}
            done: dict[str, int | None] = {}
            for role in runs_version(device.desired, model, version):
                if role == "shadow":
                    del desired[role]
                    device.sampling = {k: v for k, v in (device.sampling or {}).items() if not k.startswith("shadow_")}
                    done[role] = None
                    continue
                if role not in fallback:
                    fallback[role] = self._older_assignable(session, model, version, role)
                mv = fallback[role]
                if mv is None:
                    continue
                desired[role] = Assignment(
                    model=mv.name, version=mv.version, sha256=mv.sha256, length=mv.length,
                    url=bundle_url(self.settings.public_url, mv.sha256),
                )  # fmt: skip
                done[role] = mv.version
                changes.append((device.id, role, mv))
            if not done:
                kept.append(device.id)
                continue
            out.append((device.id, sign_for(device, desired, self.director, self.settings)))
            session.add(device)
            moved[device.id] = done
        entry = audit.record(
            session,
            actor=SYSTEM,
            action="desired.revoked_replaced",
            subject=f"model:{model}:{version}",
            reason=f"{model} v{version} was revoked: devices that still had it assigned were moved off it",
            evidence={
                "model": model,
                "revoked": version,
                "replacements": {r: (mv.version if mv else None) for r, mv in sorted(fallback.items())},
                "devices": moved,
                "kept": kept,
                "kept_why": "no older version this role may run; assign one" if kept else "",
            },
        )
        for device_id, role, mv in changes:
            session.add(DesiredChange(device_id=device_id, role=role, at=entry.at, model=mv.name, version=mv.version,
                                      audit_seq=entry.seq))  # fmt: skip
        if kept:
            log.warning("%s v%s revoked: %d device(s) keep it, no older version to assign: %s", model, version, len(kept),
                        ", ".join(kept[:10]))  # fmt: skip
        log.info("%s v%s revoked: %d device(s) moved off it", model, version, len(moved))
        return out

    def _older_assignable(self, session: Session, model: str, version: int, role: str) -> ModelVersion | None:
        rows = session.exec(select(ModelVersion.version).where(ModelVersion.name == model, ModelVersion.version < version)).all()
        for v in sorted((int(x) for x in rows), reverse=True):
            try:
                return self.registry.assignable(session, model, v, role)
            except RegistryError:
                continue
        return None
