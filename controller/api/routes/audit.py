"""Audit log: read it, verify the hash chain, and ask what ran where at a given time."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from sqlmodel import col, select

from controller.api.deps import SessionDep, needs
from controller.api.paging import PAGED, PageDep
from controller.api.routes.cohorts import get_cohort
from controller.api.schemas import AuditPublic, AuditVerification, RoleState, StateAt
from controller.core import audit
from controller.core.roles import Role
from controller.core.tables import ActualChange, AuditEntry, DesiredChange, Device
from controller.fleet.cohorts import members

router = APIRouter(prefix="/v1/audit", tags=["audit"], dependencies=[needs(Role.VIEWER)])
MAX_STATE_DEVICES = 10_000


@router.get("", response_model=list[AuditPublic], responses=PAGED)
def list_entries(
    session: SessionDep,
    page: PageDep,
    subject: Annotated[str | None, Query(max_length=256)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> list[AuditEntry]:
    """Entries in order, from ``after`` (a seq) on; filter by subject (e.g. ``device:pi-1``), action, actor."""
    q = select(AuditEntry).where(col(AuditEntry.seq) > after).order_by(col(AuditEntry.seq))
    if subject is not None:
        q = q.where(AuditEntry.subject == subject)
    if action is not None:
        q = q.where(AuditEntry.action == action)
    if actor is not None:
        q = q.where(AuditEntry.actor == actor)
    return page.rows(session, q)


@router.get("/verify", response_model=AuditVerification)
def verify(session: SessionDep) -> AuditVerification:
    """Recompute the hash chain: ``ok`` is false if any entry was edited or deleted."""
    v = audit.verify(session)
    return AuditVerification(ok=v.ok, entries=v.entries, head_seq=v.head_seq, head_hash=v.head_hash, problems=v.problems)


@router.get("/state", response_model=StateAt)
def state_at(
    session: SessionDep,
    at: Annotated[str, Query(max_length=40, description="ISO 8601 time, e.g. 2026-11-27T13:00:00Z")],
    device: Annotated[str | None, Query(max_length=64)] = None,
    cohort: Annotated[str | None, Query(max_length=64)] = None,
) -> StateAt:
    """What ran on a device (or on each current member of a cohort) at time ``at``, and who decided it.

    "Ran" is what the device reported (its actual state), as first learned by
    the controller; the decision is the latest assignment to that role before
    ``at``, with its audit entry. Cohort membership is taken as of now.
    """
    try:
        t = audit.parse_iso(at)
    except (ValueError, OverflowError):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"at: expected an ISO 8601 time, got {at!r}") from None
    if (device is None) == (cohort is None):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "give exactly one of device or cohort")
    if device is not None:
        if session.get(Device, device) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device!r} is not enrolled")
        ids = [device]
    else:
        assert cohort is not None
        ids = members(session, get_cohort(session, cohort))[:MAX_STATE_DEVICES]
    actual: dict[tuple[str, str], ActualChange] = {}
    desired: dict[tuple[str, str], DesiredChange] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        for a in session.exec(
            select(ActualChange)
            .where(col(ActualChange.device_id).in_(chunk), col(ActualChange.at) <= t)
            .order_by(col(ActualChange.at), col(ActualChange.id))
        ).all():
            actual[(a.device_id, a.role)] = a
        for d in session.exec(
            select(DesiredChange)
            .where(col(DesiredChange.device_id).in_(chunk), col(DesiredChange.at) <= t)
            .order_by(col(DesiredChange.at), col(DesiredChange.id))
        ).all():
            desired[(d.device_id, d.role)] = d
    seqs = {d.audit_seq for d in desired.values()}
    entries = {e.seq: e for e in session.exec(select(AuditEntry).where(col(AuditEntry.seq).in_(seqs))).all()} if seqs else {}
    out = []
    for key in sorted(set(actual) | set(desired)):
        a, d = actual.get(key), desired.get(key)
        e = entries.get(d.audit_seq) if d else None
        out.append(
            RoleState(
                device_id=key[0],
                role=key[1],
                model=a.model if a else None,
                version=a.version if a else None,
                sha256=a.sha256 if a else None,
                running_since=a.at if a and a.model else None,
                reason=a.reason if a else "",
                desired_model=d.model if d else None,
                desired_version=d.version if d else None,
                decided_by=e.actor if e else None,
                decided_at=e.at if e else None,
                decision_reason=e.reason if e else None,
                decision_audit_seq=e.seq if e else None,
            )
        )
    return StateAt(at=t, devices=out)
