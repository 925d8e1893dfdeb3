"""Batch features kept by the controller: values per scope with validity times; the past never rewritten.

A value is set for ``device:<id>``, ``cohort:<name>`` or ``fleet`` and is in force from
``valid_from`` (default: now) until ``valid_to`` (default: until a newer value replaces it).
Setting is append-only and may not be backdated: a value cannot take effect before it was
recorded, because no device can have used it then. Ending a value (:func:`end_value`) moves
its ``valid_to`` to now or later, never earlier: what was in force in the past stays so. That makes the history point-in-time
correct for training: :func:`point_in_time_join` joins to each captured sample the value
that was in force (and known) when it was captured, by the rules of ``shared.features``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

from sqlmodel import Session, and_, col, or_, select

from controller.core import audit
from controller.core.tables import BatchFeature, Cohort, Device
from controller.fleet.cohorts import all_cohorts, cohorts_of
from shared.features import BatchFeatureValue, FeatureSpecError, join_batch, validate_name, validate_scope
from shared.messages import MAX_DESIRED_FEATURES

BACKDATE_TOLERANCE_S = 5.0  # seconds a valid_from may lie in the past (clock skew between operator and controller)


class FeatureValueError(ValueError):
    """A batch-feature value cannot be set; the message says why and what to do."""


class ScopeNotFoundError(LookupError):
    """The device or cohort a value is for does not exist."""


def to_value(row: BatchFeature) -> BatchFeatureValue:
    end = None if row.valid_to is None else datetime.fromtimestamp(row.valid_to, timezone.utc)
    return BatchFeatureValue(row.name, row.value, datetime.fromtimestamp(row.valid_from, timezone.utc), end, row.scope)


def set_value(
    session: Session,
    *,
    name: str,
    value: float,
    scope: str,
    actor: str,
    reason: str = "",
    valid_from: float | None = None,
    valid_to: float | None = None,
    now: float | None = None,
) -> BatchFeature:
    """Record one value (and its audit entry) in the caller's transaction; the caller commits and delivers."""
    t = time.time() if now is None else now
    try:
        validate_name(name)
        validate_scope(scope)
    except FeatureSpecError as exc:
        raise FeatureValueError(str(exc)) from None
    if isinstance(value, bool) or not math.isfinite(value):
        raise FeatureValueError(f"value: expected a finite number, got {value!r}")
    start = t if valid_from is None else valid_from
    if start < t - BACKDATE_TOLERANCE_S:
        raise FeatureValueError(
            f"valid_from {_iso(start)} is in the past (now {_iso(t)}): a batch feature value takes effect from now or "
            "later, because no device can have used it earlier and training joins values point-in-time; "
            "omit valid_from or give a future time"
        )
    if valid_to is not None and valid_to <= start:
        raise FeatureValueError(f"valid_to {_iso(valid_to)} is not after valid_from {_iso(start)}")
    kind, _, target = scope.partition(":")
    if kind == "device" and session.get(Device, target) is None:
        raise ScopeNotFoundError(f"device {target!r} is not enrolled")
    if kind == "cohort" and session.get(Cohort, target) is None:
        raise ScopeNotFoundError(f"cohort {target!r} does not exist")
    entry = audit.record(
        session,
        actor=actor,
        action="feature.set",
        subject=scope,
        reason=reason,
        evidence={
            "name": name,
            "value": value,
            "valid_from": _iso(start),
            "valid_to": None if valid_to is None else _iso(valid_to),
        },
    )
    row = BatchFeature(
        name=name,
        scope=scope,
        value=float(value),
        valid_from=start,
        valid_to=valid_to,
        recorded_at=t,
        set_by=actor,
        reason=reason,
        audit_seq=entry.seq,
    )
    session.add(row)
    session.flush()
    return row


def end_value(
    session: Session, *, value_id: int, actor: str, reason: str = "", at: float | None = None, now: float | None = None
) -> BatchFeature:
    """End a value at ``at`` (default now; not in the past), audited, in the caller's transaction.

    Only the future changes: a value that ended (or ends) earlier than ``at`` is refused, so the
    history training joins is the history devices used."""
    t = time.time() if now is None else now
    row = session.get(BatchFeature, value_id)
    if row is None:
        raise ScopeNotFoundError(f"no batch feature value with id {value_id}")
    end = t if at is None else at
    if end < t - BACKDATE_TOLERANCE_S:
        raise FeatureValueError(f"end {_iso(end)} is in the past (now {_iso(t)}): only the future of a value can change")
    if row.valid_to is not None and row.valid_to <= end:
        raise FeatureValueError(f"value {value_id} already ends at {_iso(row.valid_to)}, not after {_iso(end)}")
    end = max(end, row.valid_from)  # a value scheduled for later and ended now never comes into force
    entry = audit.record(
        session,
        actor=actor,
        action="feature.ended",
        subject=row.scope,
        reason=reason,
        evidence={
            "id": value_id,
            "name": row.name,
            "value": row.value,
            "valid_to": _iso(end),
            "was": None if row.valid_to is None else _iso(row.valid_to),
        },
    )
    row.valid_to = end
    row.audit_seq = entry.seq
    session.add(row)
    session.flush()
    return row


def history(session: Session, names: Sequence[str] | None = None, scopes: Sequence[str] | None = None) -> list[BatchFeatureValue]:
    """Every value ever set (optionally of some names or scopes), in the order the lookup rules expect."""
    q = select(BatchFeature).order_by(col(BatchFeature.valid_from), col(BatchFeature.id))
    if names is not None:
        q = q.where(col(BatchFeature.name).in_(list(names)))
    if scopes is not None:
        q = q.where(col(BatchFeature.scope).in_(list(scopes)))
    return [to_value(r) for r in session.exec(q).all()]


def point_in_time_join(
    session: Session, rows: Iterable[tuple[str, str | None, datetime]], names: Sequence[str] | None = None
) -> list[dict[str, float | None]]:
    """For training: per ``(device_id, cohort, captured_at)`` row, each batch feature's value in force
    at capture time for that device (device scope, then the cohort's, then the fleet's), None where none
    was. ``names``: the features to join (default: all). See ``shared.features.join_batch``."""
    return join_batch(rows, history(session, names), names)


def live(session: Session, now: float) -> list[BatchFeature]:
    """Values in force now or later (not lapsed, not ended before they began), oldest start first."""
    q = (
        select(BatchFeature)
        .where(
            or_(
                col(BatchFeature.valid_to).is_(None),
                and_(col(BatchFeature.valid_to) > now, col(BatchFeature.valid_to) > col(BatchFeature.valid_from)),
            )
        )
        .order_by(col(BatchFeature.valid_from), col(BatchFeature.id))
    )
    return list(session.exec(q).all())


def for_device(rows: Sequence[BatchFeature], device: Device, cohorts: Iterable[Cohort], now: float) -> list[BatchFeatureValue]:
    """What ``device`` needs of the live ``rows``: its own scope's, its cohorts' and the fleet's values,
    without those a newer open-ended value of the same scope has replaced for good (at most
    ``MAX_DESIRED_FEATURES``, the newest kept)."""
    scopes = {f"device:{device.id}", "fleet", *(f"cohort:{c}" for c in cohorts_of(device, cohorts))}
    mine = [r for r in rows if r.scope in scopes]
    kept = []
    for i, r in enumerate(mine):
        replaced = any(
            o.scope == r.scope and o.name == r.name and o.valid_to is None and r.valid_from <= o.valid_from <= now
            for o in mine[i + 1 :]
        )
        if not replaced:
            kept.append(r)
    return [to_value(r) for r in kept[-MAX_DESIRED_FEATURES:]]


def device_lists(session: Session, devices: Sequence[Device], now: float) -> None:
    """Recompute ``Device.batch_features`` (what the signed desired state carries) for ``devices``.

    Called when a value is set (for the devices it reaches) and on every assignment, so a device's
    first desired state, and one after it joined a cohort, carry what is in force for it."""
    rows = live(session, now)
    if not rows and not any(d.batch_features for d in devices):
        return  # nothing to carry, nothing to clear: no cohort query
    cohorts = all_cohorts(session)
    for device in devices:
        device.batch_features = [v.to_wire() for v in for_device(rows, device, cohorts, now)]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
