"""Creating an experiment: validation, arm assignment, signed desired states (the caller commits, then publishes).

A/B: each device of the cohort gets its arm by a stable hash (``assign``) and
runs that arm's version as ``production``. Bandit: every device gets every arm
in a role ``arm-<name>`` and routing weights (equal to start) in the same
signed desired state.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from controller.core import audit
from controller.core.config import Settings
from controller.core.security import Principal
from controller.core.tables import Cohort, Device, Experiment, ExperimentDevice, ModelVersion
from controller.experiments.assign import assign_arm
from controller.experiments.decide import METRICS
from controller.experiments.evidence import arm_role
from controller.experiments.state import ACTIVE, State
from controller.fleet import assignments, freshness
from controller.fleet.cohorts import members
from controller.fleet.director import Director
from controller.release.registry import Conflict, Invalid, NotFound, Registry
from shared.cadence import experiment_holder
from shared.messages import Routing

Envelopes = list[tuple[str, dict[str, Any]]]
ARM_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")
KINDS = ("ab", "bandit")


@dataclass(frozen=True)
class ArmSpec:
    name: str
    version: int
    share: float = 1.0


@dataclass(frozen=True)
class Spec:
    name: str
    cohort: str
    model: str
    arms: tuple[ArmSpec, ...]
    kind: str = "ab"
    control: str = ""  # default: the first arm
    primary_metric: str = "accuracy"
    guardrails: tuple[str, ...] = ()
    alpha: float = 0.05
    tau: float | None = None
    min_devices: int = 5
    floor: float = 0.05
    auto_promote: bool = True
    seed: int | None = None
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def validate(spec: Spec) -> None:
    """Raise ``Invalid`` (422) naming what is wrong."""
    if spec.kind not in KINDS:
        raise Invalid(f"kind must be one of {KINDS}, got {spec.kind!r}")
    if len(spec.arms) < 2:
        raise Invalid("an experiment needs at least two arms")
    names = [a.name for a in spec.arms]
    for n in names:
        if not ARM_NAME.match(n):
            raise Invalid(f"arm name {n!r} must match [a-z0-9_-]{{1,32}}")
    if len(set(names)) != len(names):
        raise Invalid(f"arm names must be unique, got {names}")
    if any(not a.share > 0 for a in spec.arms):
        raise Invalid("every arm's share must be positive")
    if spec.kind == "bandit" and len({a.version for a in spec.arms}) != len(spec.arms):
        raise Invalid("bandit arms must be different versions")
    if spec.control and spec.control not in names:
        raise Invalid(f"control {spec.control!r} is not one of the arms {names}")
    for m in (spec.primary_metric, *spec.guardrails):
        if m not in METRICS:
            raise Invalid(f"unknown metric {m!r}; expected one of {sorted(METRICS)}")
    if spec.kind == "bandit" and spec.primary_metric != "accuracy":
        raise Invalid("a bandit's reward is labelled accuracy: primary_metric must be 'accuracy'")
    if not 0 < spec.alpha < 0.5:
        raise Invalid(f"alpha must be in (0, 0.5), got {spec.alpha}")
    if spec.tau is not None and not spec.tau > 0:
        raise Invalid("tau must be positive")
    if spec.min_devices < 2:
        raise Invalid("min_devices must be at least 2 (a variance needs two devices)")
    if not 0 <= spec.floor * len(spec.arms) < 1:
        raise Invalid(f"floor {spec.floor} times {len(spec.arms)} arms must be below 1")


def create(
    session: Session, spec: Spec, *, by: Principal, registry: Registry, director: Director, settings: Settings
) -> tuple[Experiment, Envelopes]:
    validate(spec)
    if session.get(Cohort, spec.cohort) is None:
        raise NotFound(f"no cohort named {spec.cohort!r}")
    busy = session.exec(
        select(Experiment.id).where(Experiment.cohort == spec.cohort, col(Experiment.state).in_([s.value for s in ACTIVE]))
    ).first()
    if busy is not None:
        raise Conflict(f"experiment {busy} is already active on cohort {spec.cohort!r}; stop it first")
    versions = {
        a.name: registry.assignable(session, spec.model, a.version, "production" if spec.kind == "ab" else arm_role(a.name))
        for a in spec.arms
    }
    ids = members(session, session.get(Cohort, spec.cohort))  # type: ignore[arg-type]
    if not ids:
        raise Invalid(f"cohort {spec.cohort!r} has no devices")
    exp = Experiment(
        name=spec.name,
        kind=spec.kind,
        cohort=spec.cohort,
        model=spec.model,
        arms=[{"name": a.name, "version": a.version, "share": a.share} for a in spec.arms],
        control=spec.control or spec.arms[0].name,
        primary_metric=spec.primary_metric,
        guardrails=list(spec.guardrails),
        alpha=spec.alpha,
        tau=spec.tau,
        min_devices=spec.min_devices,
        floor=spec.floor,
        seed=spec.seed if spec.seed is not None else secrets.randbelow(2**31),
        auto_promote=spec.auto_promote,
        state=State.RUNNING.value,
        created_by=by.name,
    )
    if spec.kind == "bandit":
        exp.weights = {a.name: 1.0 / len(spec.arms) for a in spec.arms}
    session.add(exp)
    session.flush()
    devices = list(session.exec(select(Device).where(col(Device.id).in_(ids))).all())
    out = enrol(session, exp, devices, versions, by=by, director=director, settings=settings)
    audit.record(
        session,
        actor=by.name,
        action="experiment.created",
        subject=f"experiment:{exp.id}",
        reason=spec.reason,
        evidence={**public_fields(exp), "devices": len(devices)},
    )
    return exp, out


def enrol(
    session: Session,
    exp: Experiment,
    devices: list[Device],
    versions: dict[str, ModelVersion],
    *,
    by: Principal,
    director: Director,
    settings: Settings,
) -> Envelopes:
    """Put ``devices`` into the experiment: their arm (A/B) or every arm and the current weights (bandit).

    Their desired states also ask for fresh telemetry while the experiment runs (ADR 0076)."""
    if not devices:
        return []
    out: Envelopes = []
    assert exp.id is not None
    freshness.mark(devices, experiment_holder(exp.id))  # signed below with their arms
    if exp.kind == "ab":
        shares = [float(a["share"]) for a in exp.arms]
        groups: dict[str, list[Device]] = {}
        for d in devices:
            arm = exp.arms[assign_arm(exp.id, d.id, shares)]["name"]
            groups.setdefault(arm, []).append(d)
            session.add(ExperimentDevice(experiment_id=exp.id, device_id=d.id, arm=arm))
        for arm, group in groups.items():
            out += assignments.assign(
                session, devices=group, mv=versions[arm], role="production", by=by,
                reason=f"experiment {exp.id} arm {arm}", director=director, settings=settings, cohort=exp.cohort,
            )  # fmt: skip
        return out
    for a in exp.arms:
        assignments.assign(
            session, devices=devices, mv=versions[a["name"]], role=arm_role(a["name"]), by=by,
            reason=f"experiment {exp.id} arm {a['name']}", director=director, settings=settings, cohort=exp.cohort,
        )  # fmt: skip
    routing = routing_of(exp)
    for d in devices:  # one envelope per device: every arm and the weights (earlier ones are superseded)
        session.add(ExperimentDevice(experiment_id=exp.id, device_id=d.id, arm="*"))
        out.append(assignments.resign(session, device=d, routing=routing, director=director, settings=settings))
    return out


def routing_of(exp: Experiment) -> Routing:
    assert exp.id is not None
    return Routing(exp.id, exp.seed, {arm_role(n): float(w) for n, w in exp.weights.items()})


def public_fields(exp: Experiment) -> dict[str, Any]:
    return {
        "id": exp.id,
        "name": exp.name,
        "kind": exp.kind,
        "cohort": exp.cohort,
        "model": exp.model,
        "arms": exp.arms,
        "control": exp.control,
        "primary_metric": exp.primary_metric,
        "guardrails": exp.guardrails,
        "alpha": exp.alpha,
        "tau": exp.tau,
        "min_devices": exp.min_devices,
        "floor": exp.floor,
        "auto_promote": exp.auto_promote,
    }
