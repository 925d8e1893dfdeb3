"""Creating a rollout: the rules a new rollout must meet, then its first stage.

::

    RolloutError        a rollout rule refused the request (status: HTTP code)
    ├── NotFound        404: no such cohort or rollout
    ├── Invalid         422: a plan that cannot run
    └── Conflict        409: overlapping rollouts, no (installable) baseline, empty cohort, illegal transition
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from sqlmodel import Session, col, select

from controller.core.security import Principal
from controller.core.tables import Cohort, Device, ModelVersion, Rollout
from controller.fleet.cohorts import member_ids
from controller.release.registry import RegistryError
from controller.rollouts.engine import OPEN, Envelopes, RolloutEngine
from controller.rollouts.plan import (
    DEFAULT_STAGES,
    PlanError,
    stages_from_list,
    thresholds_from_dict,
    thresholds_json,
    to_json,
)


class RolloutError(Exception):
    status = 400


class NotFound(RolloutError):
    status = 404


class Invalid(RolloutError):
    status = 422


class Conflict(RolloutError):
    status = 409


def baseline_of(devices: list[Device], model: str) -> int | None:
    """What the cohort runs now: the most common production version of ``model`` (reported, else desired)."""
    seen: Counter[int] = Counter()
    for d in devices:
        prod = (d.actual or {}).get("production") or (d.desired or {}).get("production")
        if prod and prod.get("model") == model:
            seen[int(prod["version"])] += 1
    return seen.most_common(1)[0][0] if seen else None


def _overlap(session: Session, cohort: str, ids: set[str], devices: list[Device]) -> None:
    for other in session.exec(select(Rollout).where(col(Rollout.state).in_(OPEN))).all():
        c = session.get(Cohort, other.cohort)
        common = ids & set(member_ids(c, devices)) if c is not None else set()
        if other.cohort == cohort or common:
            raise Conflict(
                f"rollout {other.id} ({other.model} v{other.candidate_version} on cohort {other.cohort!r}, {other.state}) "
                f"already covers {len(common)} device(s) of cohort {cohort!r}; finish or abort it first"
            )


def create(
    session: Session,
    engine: RolloutEngine,
    *,
    cohort: str,
    model: str,
    version: int,
    by: Principal,
    baseline_version: int | None = None,
    stages: list[dict[str, Any]] | None = None,
    thresholds: dict[str, Any] | None = None,
    reason: str = "",
) -> tuple[Rollout, Envelopes]:
    """Validate and start a rollout (the caller commits, then publishes the envelopes)."""
    try:
        plan = stages_from_list(stages) if stages is not None else DEFAULT_STAGES
        th = thresholds_from_dict(thresholds or {})
    except PlanError as exc:
        raise Invalid(str(exc)) from None
    c = session.get(Cohort, cohort)
    if c is None:
        raise NotFound(f"no cohort named {cohort!r}")
    devices = list(session.exec(select(Device)).all())
    ids = set(member_ids(c, devices))
    if not ids:
        raise Conflict(f"cohort {cohort!r} has no members")
    _overlap(session, cohort, ids, devices)
    engine.s.registry.assignable(session, model, version, plan[0].role if plan[0].kind == "shadow" else "canary")
    base = baseline_version or baseline_of([d for d in devices if d.id in ids], model)
    if base is None:
        raise Conflict(f"no device of cohort {cohort!r} runs {model} in production; give baseline_version")
    if base == version:
        raise Conflict(f"the cohort already runs {model} v{version}; nothing to roll out")
    _installable_baseline(session, engine, model, base, version, named=baseline_version is not None)
    now = time.time()
    r = Rollout(
        cohort=cohort,
        model=model,
        candidate_version=version,
        baseline_version=base,
        state="RUNNING",
        stages=to_json(plan),
        thresholds=thresholds_json(th),
        created_by=by.name,
        created_at=now,
        updated_at=now,
    )
    session.add(r)
    session.flush()
    engine.decide(session, r, by.name, "created", "", reason or f"roll out {model} v{version} to {cohort}", _created(r, ids))
    out = engine.start(session, r, now)
    return r, out


def _installable_baseline(session: Session, engine: RolloutEngine, model: str, base: int, candidate: int, named: bool) -> None:
    """A rollout needs a baseline its devices can go back to (ADR 0073): refuse one they may not install."""
    try:
        engine.s.registry.installable(session, model, base)
    except RegistryError as exc:
        if exc.status == 404:
            raise
        whose = "the baseline you named" if named else "the baseline (what the cohort runs in production)"
        rows = session.exec(select(ModelVersion.version).where(ModelVersion.name == model).order_by(col(ModelVersion.version)))
        ok = []
        for v in rows.all():
            try:
                if v != candidate:
                    engine.s.registry.installable(session, model, v)
                    ok.append(v)
            except RegistryError:
                pass
        hint = f" (installable now: {', '.join(f'v{v}' for v in ok[-5:])})" if ok else " (none is installable now: register one)"
        raise Conflict(
            f"{whose} cannot be rolled back to: {exc}. Give baseline_version, a version the devices may install{hint}"
        ) from None


def _created(r: Rollout, ids: set[str]) -> dict[str, Any]:
    return {
        "cohort": r.cohort,
        "model": r.model,
        "candidate": r.candidate_version,
        "baseline": r.baseline_version,
        "cohort_devices": len(ids),
        "stages": r.stages,
        "thresholds": r.thresholds,
    }
