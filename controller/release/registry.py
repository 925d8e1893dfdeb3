"""The model registry: every rule about versions lives here, not in the routes.

::

    RegistryError             a registry rule refused the request (status: HTTP code)
    ├── NotFound              404: no such model, version or alias
    ├── Invalid               422: the bundle or request is malformed
    ├── Conflict              409: versions not monotonic, revoked, below the floor, not approved
    └── Forbidden             403: e.g. approving a version you registered

Release hook: :meth:`Registry.release_changed` is the one place called whenever
the set of releasable versions changes (a version registered, a version revoked
and delisted, the floor raised over revoked versions at the bottom). It runs inside the caller's transaction before commit, so
a failing hook (e.g. TUF signing in ``controller/release/imagerepo.py``) refuses the
change and nothing is half-written. Hooks are callables appended to
``Registry.hooks``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import func
from sqlmodel import Session, col, select

from controller.core import audit
from controller.core.security import Principal
from controller.core.tables import ModelAlias, ModelFloor, ModelVersion
from controller.release.blobstore import BlobStore
from shared import bundle as bundle_fmt

log = logging.getLogger(__name__)

ALIAS_NEEDING_APPROVAL = "production"


class RegistryError(Exception):
    status = 400


class NotFound(RegistryError):
    status = 404


class Invalid(RegistryError):
    status = 422


class Conflict(RegistryError):
    status = 409


class Forbidden(RegistryError):
    status = 403


@dataclass(frozen=True)
class ReleaseChange:
    """What changed in the set of releasable versions of one model."""

    name: str
    kind: str  # "registered" | "revoked"
    version: int
    floor: int  # the model's version floor after the change
    sha256: str
    length: int  # bytes


ReleaseHook = Callable[[Session, ReleaseChange], None]
AssignGate = Callable[[Session, ModelVersion], "str | None"]  # a reason the version cannot be assigned yet, or None


def beyond_canary(role: str) -> bool:
    """Roles that serve real traffic need an approved version; canary and shadow do not."""
    return role == "production" or role.startswith("arm-")


def floor_over_revoked(session: Session, name: str, floor: int) -> int:
    """The lowest version at or above ``floor`` that is not revoked (one past the latest when all are)."""
    rows = session.exec(select(ModelVersion.version, ModelVersion.revoked).where(ModelVersion.name == name)).all()
    live = [int(v) for v, revoked in rows if not revoked and v >= floor]
    return min(live) if live else max([floor, *(int(v) + 1 for v, _ in rows)])


def golden_reproduces(bundle: bundle_fmt.Bundle, sha256: str) -> None:
    """Load the model with the agent's own runtime and run its golden vectors; raise Invalid if they differ."""
    from agent.runtime import ModelLoadError, golden_check, load_model

    try:
        golden_check(load_model(bundle.manifest, bundle.model, sha256))
    except ModelLoadError as exc:
        raise Invalid(f"bundle refused: golden vectors do not reproduce on the controller: {exc}") from None


@dataclass
class Registry:
    blobs: BlobStore
    hooks: list[ReleaseHook] = field(default_factory=list)
    gates: list[AssignGate] = field(default_factory=list)  # e.g. "waiting for offline release signatures"

    # --- queries ------------------------------------------------------------

    @staticmethod
    def get(session: Session, name: str, version: int) -> ModelVersion:
        mv = session.exec(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)).first()
        if mv is None:
            raise NotFound(f"model {name!r} version {version} is not registered")
        return mv  # type: ignore[no-any-return]

    @staticmethod
    def latest(session: Session, name: str) -> int:
        v = session.exec(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)).one()
        return int(v or 0)

    @staticmethod
    def floor(session: Session, name: str) -> int:
        row = session.get(ModelFloor, name)
        return row.floor if row else 1

    @staticmethod
    def aliases(session: Session, name: str) -> dict[str, int]:
        return {a.alias: a.version for a in session.exec(select(ModelAlias).where(ModelAlias.name == name)).all()}

    def assignable(self, session: Session, name: str, version: int, role: str) -> ModelVersion:
        """The version if it may be assigned to ``role``; otherwise the rule it breaks."""
        mv = self.get(session, name, version)
        if mv.revoked:
            raise Conflict(f"{name} v{version} is revoked and cannot be assigned")
        floor = self.floor(session, name)
        if version < floor:
            raise Conflict(f"{name} v{version} is below the version floor {floor}; assign v{floor} or later")
        if beyond_canary(role) and mv.approved_by is None:
            raise Conflict(
                f"{name} v{version} is not approved; role {role!r} goes beyond canary and needs an approver's approval "
                f"(POST /v1/approvals), canary and shadow do not"
            )
        for gate in self.gates:
            reason = gate(session, mv)
            if reason is not None:
                raise Conflict(reason)
        return mv

    def installable(self, session: Session, name: str, version: int) -> ModelVersion:
        """The version if devices may install it (not revoked, not below the floor, released), approved or not:
        what a rollout may go back to. Otherwise the rule it breaks."""
        return self.assignable(session, name, version, "canary")

    # --- changes (each records an audit entry; the caller commits) -----------

    def release_changed(self, session: Session, change: ReleaseChange) -> None:
        """The hook point: runs every registered hook inside the transaction."""
        for hook in self.hooks:
            hook(session, change)

    def register(self, session: Session, data: bytes, by: Principal) -> tuple[ModelVersion, bool]:
        """Validate and register a bundle; returns (version, created). Idempotent for identical bytes."""
        try:
            b = bundle_fmt.read(data)
        except bundle_fmt.BundleError as exc:
            raise Invalid(f"invalid bundle: {exc}") from None
        m = b.manifest
        sha = hashlib.sha256(data).hexdigest()
        existing = session.exec(
            select(ModelVersion).where(ModelVersion.name == m.name, ModelVersion.version == m.version)
        ).first()
        if existing is not None:
            if existing.sha256 == sha:
                return existing, False
            raise Conflict(f"{m.name} v{m.version} already exists with different content (sha256 {existing.sha256[:12]}…)")
        latest = self.latest(session, m.name)
        if m.version <= latest:
            raise Conflict(f"{m.name}: versions are monotonic; expected a version greater than {latest}, got {m.version}")
        parent = m.lineage.get("parent_version")
        if parent is not None and (not isinstance(parent, int) or isinstance(parent, bool) or not 1 <= parent < m.version):
            raise Invalid(
                f"manifest.lineage.parent_version: expected an integer from 1 to {m.version - 1} or null, got {parent!r}"
            )
        golden_reproduces(b, sha)
        self.blobs.put(data, session)
        mv = ModelVersion(
            name=m.name,
            version=m.version,
            label=m.label,
            runtime=m.runtime,
            sha256=sha,
            length=len(data),
            manifest=m.to_dict(),
            parent_version=parent,
            registered_by=by.name,
        )
        session.add(mv)
        session.flush()
        audit.record(
            session,
            actor=by.name,
            action="model.registered",
            subject=f"model:{m.name}:{m.version}",
            reason=m.label,
            evidence={"sha256": sha, "length": len(data), "lineage": m.lineage, "golden_vectors": len(m.golden)},
        )
        self.release_changed(session, ReleaseChange(m.name, "registered", m.version, self.floor(session, m.name), sha, len(data)))
        return mv, True

    def approve(self, session: Session, name: str, version: int, by: Principal, reason: str) -> ModelVersion:
        mv = self.get(session, name, version)
        if mv.revoked:
            raise Conflict(f"{name} v{version} is revoked; it cannot be approved")
        if mv.registered_by == by.name:
            raise Forbidden(f"{by.name!r} registered {name} v{version} and cannot approve it; another approver must")
        if mv.approved_by is not None:
            raise Conflict(f"{name} v{version} was already approved by {mv.approved_by!r}")
        mv.approved_by, mv.approved_at = by.name, datetime.now(timezone.utc)
        session.add(mv)
        audit.record(
            session,
            actor=by.name,
            action="model.approved",
            subject=f"model:{name}:{version}",
            reason=reason,
            evidence={
                "sha256": mv.sha256,
                "registered_by": mv.registered_by,
                "metrics": mv.manifest.get("lineage", {}).get("metrics"),
            },
        )
        return mv

    def set_alias(self, session: Session, name: str, alias: str, version: int, by: Principal, reason: str) -> None:
        role = "production" if alias == ALIAS_NEEDING_APPROVAL else "canary"
        self.assignable(session, name, version, role)
        row = session.get(ModelAlias, (name, alias))
        previous = row.version if row else None
        if row is None:
            row = ModelAlias(name=name, alias=alias, version=version)
        row.version, row.updated_at = version, datetime.now(timezone.utc)
        session.add(row)
        audit.record(
            session,
            actor=by.name,
            action="model.alias_set",
            subject=f"model:{name}",
            reason=reason,
            evidence={"alias": alias, "version": version, "previous": previous},
        )

    def delete_alias(self, session: Session, name: str, alias: str, by: Principal, reason: str) -> None:
        row = session.get(ModelAlias, (name, alias))
        if row is None:
            raise NotFound(f"model {name!r} has no alias {alias!r}")
        session.delete(row)
        audit.record(
            session,
            actor=by.name,
            action="model.alias_deleted",
            subject=f"model:{name}",
            reason=reason,
            evidence={"alias": alias, "version": row.version},
        )

    def revoke(self, session: Session, name: str, version: int, by: Principal, reason: str) -> int:
        """Revoke one version: never assignable again, and devices refuse it (it leaves the signed targets).

        The floor rises over the revoked versions at the bottom only (every version below the floor is
        revoked), so older good versions stay installable: rolling back means assigning one (ADR 0073).
        Returns the new floor."""
        mv = self.get(session, name, version)
        if mv.revoked:
            raise Conflict(f"{name} v{version} is already revoked")
        mv.revoked = True
        session.add(mv)
        session.flush()
        row = session.get(ModelFloor, name) or ModelFloor(name=name, floor=1)
        old = row.floor
        row.floor, row.updated_at = floor_over_revoked(session, name, row.floor), datetime.now(timezone.utc)
        session.add(row)
        dropped = [
            a
            for a in session.exec(select(ModelAlias).where(ModelAlias.name == name)).all()
            if a.version == version or a.version < row.floor
        ]
        for a in dropped:
            session.delete(a)
        audit.record(
            session,
            actor=by.name,
            action="model.revoked",
            subject=f"model:{name}:{version}",
            reason=reason,
            evidence={"floor": row.floor, "previous_floor": old, "aliases_dropped": {a.alias: a.version for a in dropped}},
        )
        self.release_changed(session, ReleaseChange(name, "revoked", version, row.floor, mv.sha256, mv.length))
        return row.floor

    @staticmethod
    def lineage(session: Session, name: str, version: int, max_depth: int = 100) -> list[ModelVersion]:
        """The version and its ancestors (via lineage.parent_version), newest first."""
        chain = [Registry.get(session, name, version)]
        while len(chain) < max_depth and chain[-1].parent_version is not None:
            parent = session.exec(
                select(ModelVersion).where(ModelVersion.name == name, col(ModelVersion.version) == chain[-1].parent_version)
            ).first()
            if parent is None:
                break
            chain.append(parent)
        return chain
