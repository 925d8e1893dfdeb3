"""The experiment engine: one look per running experiment, decisions, promotion, bandit weights.

``tick`` is the leader's periodic job. Each step is one transaction: the
evaluation (``decide.evaluate`` on ``evidence.arms``) is stored as the latest
look; a ``ship`` or ``stop_harm`` decision moves the experiment to DECIDED
with the evaluation as evidence in the audit log and, with ``auto_promote``,
promotes at once (the winner, or the control after harm, becomes production on
every device of the experiment; a bandit's routing is cleared). A ``blocked``
look (sample-ratio mismatch) is audited when it starts. A running bandit gets
new Thompson weights from the arms' labelled rewards; when they move by at least
``MIN_CHANGE`` every device gets a new signed desired state carrying them (its
assignments unchanged: nothing to download). Envelopes are published after the
commit, retained, so an offline device gets the latest when it returns and
uses its last weights meanwhile. Steps are idempotent: a repeated look stores
the same evaluation, a decided experiment is not decided again. A running or
paused experiment's devices publish fresh telemetry (enrolment asks them,
``controller.fleet.freshness``, ADR 0076); once it is decided or stopped they
go back to batching.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event
from sqlmodel import Session, col, select

from controller.core import audit
from controller.core.config import Settings
from controller.core.leader import LeaderContext
from controller.core.roles import Role
from controller.core.security import Principal
from controller.core.tables import Cohort, Device, Experiment, ExperimentDevice, utcnow
from controller.experiments import evidence, state
from controller.experiments.bandit import thompson_weights
from controller.experiments.decide import BLOCKED, SHIP, STOP_HARM, Evaluation, evaluate
from controller.experiments.service import Envelopes, enrol, routing_of
from controller.fleet import assignments, freshness
from controller.fleet.cohorts import members
from controller.fleet.director import Director
from controller.release.registry import Invalid, Registry, ReleaseChange
from shared.cadence import experiment_holder

log = logging.getLogger(__name__)
Publish = Callable[[str, dict[str, Any]], None]
MIN_CHANGE = 0.02  # smallest weight change worth a new signed desired state
FRESH = (state.State.RUNNING.value, state.State.PAUSED.value)  # states whose devices publish fresh telemetry
LEADER = Principal("experiments", Role.OPERATOR)


@dataclass
class Services:
    director: Director
    settings: Settings
    registry: Registry
    publish: Publish | None  # None: MQTT disabled; desired states are still written


class ExperimentEngine:
    def __init__(self, services: Services) -> None:
        self.s = services

    def job(self, ctx: LeaderContext) -> None:
        self.tick(ctx.engine, still_leader=ctx.still_leader)

    def tick(self, engine: Engine, still_leader: Callable[[], bool] = lambda: True) -> None:
        with Session(engine) as session:
            ids = session.exec(select(Experiment.id).where(Experiment.state == state.State.RUNNING.value)).all()
        for eid in ids:
            if not still_leader():
                return
            try:
                self.step(engine, int(eid or 0))
            except Exception:  # one broken experiment must not stop the others
                log.exception("experiment %s step failed", eid)

    def step(self, engine: Engine, experiment_id: int) -> Evaluation | None:
        with Session(engine) as session:
            exp = session.get(Experiment, experiment_id)
            if exp is None or exp.state != state.State.RUNNING.value:
                return None
            out = self._enrol_newcomers(session, exp)
            ev = self.look(session, exp)
            before = exp.evaluation.get("decision")
            exp.evaluation = ev.evidence()
            exp.looks += 1
            if ev.decision in (SHIP, STOP_HARM) and ev.arm is not None:
                exp.state = state.transition(state.State(exp.state), state.Decide(ev.decision, ev.arm)).value
                exp.decision = ev.evidence()
                audit.record(
                    session, actor=LEADER.name, action="experiment.decided", subject=f"experiment:{exp.id}",
                    reason="; ".join(ev.reasons), evidence=ev.evidence(),
                )  # fmt: skip
                if exp.auto_promote:
                    out += self._promote(session, exp, ev.arm if ev.decision == SHIP else exp.control, LEADER, "decided")
            elif ev.decision == BLOCKED and before != BLOCKED:
                audit.record(
                    session, actor=LEADER.name, action="experiment.blocked", subject=f"experiment:{exp.id}",
                    reason="; ".join(ev.reasons), evidence=ev.evidence(),
                )  # fmt: skip
            elif exp.kind == "bandit" and ev.decision != BLOCKED:
                out += self._update_weights(session, exp, ev)
            if exp.state not in FRESH:
                out += self._let_go(session, exp)
            session.add(exp)
            session.commit()
        self.publish(out)
        return ev

    def look(self, session: Session, exp: Experiment) -> Evaluation:
        return evaluate(
            evidence.arms(session, exp),
            control=exp.control,
            primary=exp.primary_metric,
            guardrails=exp.guardrails,
            alpha=exp.alpha,
            tau=exp.tau,
            min_devices=exp.min_devices,
        )

    def act(self, engine: Engine, experiment_id: int, event: state.Event, by: Principal, reason: str) -> Experiment:
        """An operator's pause, resume, stop or promote (``Promote`` also from RUNNING or PAUSED: it stops first)."""
        with Session(engine) as session:
            exp = session.get(Experiment, experiment_id)
            if exp is None:
                raise LookupError(experiment_id)
            current = state.State(exp.state)
            out: Envelopes = []
            if isinstance(event, state.Promote):
                if event.arm not in [a["name"] for a in exp.arms]:
                    raise Invalid(f"{event.arm!r} is not an arm of experiment {exp.id}")
                if current is not state.State.DECIDED:
                    exp.state = state.transition(current, state.Stop(reason)).value  # raises if final
                    exp.ended_at = utcnow()
                    audit.record(session, actor=by.name, action="experiment.stopped", subject=f"experiment:{exp.id}",
                                 reason=reason, evidence={"evaluation": exp.evaluation})  # fmt: skip
                out = self._promote(session, exp, event.arm, by, reason)
            else:
                exp.state = state.transition(current, event).value
                if exp.state in (s.value for s in state.FINAL):
                    exp.ended_at = utcnow()
                if isinstance(event, state.Stop) and exp.kind == "bandit":
                    out = self._clear_routing(session, exp)
                name = {state.Pause: "paused", state.Resume: "resumed", state.Stop: "stopped"}[type(event)]
                audit.record(session, actor=by.name, action=f"experiment.{name}", subject=f"experiment:{exp.id}",
                             reason=reason, evidence={"evaluation": exp.evaluation})  # fmt: skip
            if exp.state not in FRESH:
                out += self._let_go(session, exp)
            exp.reason = reason[:1024]
            session.add(exp)
            session.commit()
            session.refresh(exp)
        self.publish(out)
        return exp

    def on_release_change(self, session: Session, change: ReleaseChange) -> None:
        """The registry's release hook, inside the revoking transaction: an active experiment with an arm on the
        revoked version stops (audited; a bandit's routing is cleared), so it never assigns that version again.
        Its devices still on the version are moved off it by the fleet's revocation sweep, which runs next."""
        if change.kind != "revoked":
            return
        active = [s.value for s in state.ACTIVE]
        rows = session.exec(select(Experiment).where(Experiment.model == change.name, col(Experiment.state).in_(active))).all()
        out: Envelopes = []
        for exp in rows:
            arms = [a["name"] for a in exp.arms if int(a["version"]) == change.version]
            if not arms:
                continue
            why = f"arm {', '.join(arms)}: {exp.model} v{change.version} was revoked"
            exp.state = state.transition(state.State(exp.state), state.Stop(why)).value
            exp.ended_at = utcnow()
            exp.reason = why[:1024]
            if exp.kind == "bandit":
                out += self._clear_routing(session, exp)
            out += self._let_go(session, exp)
            audit.record(session, actor=LEADER.name, action="experiment.stopped", subject=f"experiment:{exp.id}",
                         reason=why, evidence={"revoked_version": change.version, "arms": arms,
                                               "evaluation": exp.evaluation})  # fmt: skip
            session.add(exp)
        if out:
            event.listen(session, "after_commit", lambda _s: self.publish(out), once=True)

    # --- what the decisions do ---------------------------------------------------

    def _devices(self, session: Session, exp: Experiment) -> list[Device]:
        ids = session.exec(select(ExperimentDevice.device_id).where(ExperimentDevice.experiment_id == exp.id)).all()
        return list(session.exec(select(Device).where(col(Device.id).in_(ids)).order_by(col(Device.id))).all())

    def _promote(self, session: Session, exp: Experiment, arm: str, by: Principal, reason: str) -> Envelopes:
        version = next(int(a["version"]) for a in exp.arms if a["name"] == arm)
        mv = self.s.registry.assignable(session, exp.model, version, "production")
        devices = self._devices(session, exp)
        if exp.kind == "bandit":
            for d in devices:
                d.routing = {}
        out = assignments.assign(
            session, devices=devices, mv=mv, role="production", by=by, reason=f"experiment {exp.id}: promote {arm}",
            director=self.s.director, settings=self.s.settings, cohort=exp.cohort,
        ) if devices else []  # fmt: skip
        if state.State(exp.state) is state.State.DECIDED:
            exp.state = state.transition(state.State.DECIDED, state.Promote(arm)).value
            exp.ended_at = utcnow()
        exp.decision = {**exp.decision, "promoted": arm, "promoted_version": version}
        audit.record(
            session, actor=by.name, action="experiment.promoted", subject=f"experiment:{exp.id}", reason=reason,
            evidence={"arm": arm, "model": exp.model, "version": version, "devices": [d.id for d in devices]},
        )  # fmt: skip
        return out

    def _let_go(self, session: Session, exp: Experiment) -> Envelopes:
        """The experiment no longer reads its devices' telemetry: they go back to batching it."""
        holder = experiment_holder(exp.id or 0)
        s = self.s
        return freshness.sync(session, holder, (), self._devices(session, exp), director=s.director, settings=s.settings)

    def _clear_routing(self, session: Session, exp: Experiment) -> Envelopes:
        s = self.s
        return [
            assignments.resign(session, device=d, routing=None, director=s.director, settings=s.settings)
            for d in self._devices(session, exp)
        ]

    def _enrol_newcomers(self, session: Session, exp: Experiment) -> Envelopes:
        """Devices that joined the cohort since the last look get the same rule as the first ones."""
        cohort = session.get(Cohort, exp.cohort)
        if cohort is None:
            return []
        known = set(session.exec(select(ExperimentDevice.device_id).where(ExperimentDevice.experiment_id == exp.id)).all())
        new = [d for d in members(session, cohort) if d not in known]
        if not new:
            return []
        versions = {
            a["name"]: self.s.registry.assignable(
                session, exp.model, int(a["version"]), "production" if exp.kind == "ab" else evidence.arm_role(a["name"])
            )
            for a in exp.arms
        }
        devices = list(session.exec(select(Device).where(col(Device.id).in_(new))).all())
        return enrol(session, exp, devices, versions, by=LEADER, director=self.s.director, settings=self.s.settings)

    def _update_weights(self, session: Session, exp: Experiment, ev: Evaluation) -> Envelopes:
        names = [a["name"] for a in exp.arms]
        arms = evidence.arms(session, exp)
        succ = [sum(d.correct for d in arm.devices) for arm in arms]
        trials = [sum(d.labels for d in arm.devices) for arm in arms]
        w = thompson_weights(succ, trials, exp.floor, seed=exp.seed * 1_000_003 + exp.weights_version)
        new = dict(zip(names, (round(x, 4) for x in w), strict=True))
        if max(abs(new[n] - float(exp.weights.get(n, 0.0))) for n in names) < MIN_CHANGE:
            return []
        exp.weights = new
        exp.weights_version += 1
        audit.record(
            session, actor=LEADER.name, action="experiment.weights", subject=f"experiment:{exp.id}",
            reason=f"Thompson sampling update {exp.weights_version}",
            evidence={"weights": new, "successes": dict(zip(names, succ, strict=True)),
                      "trials": dict(zip(names, trials, strict=True))},
        )  # fmt: skip
        routing = routing_of(exp)
        return [
            assignments.resign(session, device=d, routing=routing, director=self.s.director, settings=self.s.settings)
            for d in self._devices(session, exp)
        ]

    def publish(self, out: Envelopes) -> None:
        if self.s.publish is None:
            return
        last: dict[str, dict[str, Any]] = {}
        for did, envelope in out:
            last[did] = envelope  # only the newest desired state of each device matters
        for did, envelope in last.items():
            try:
                self.s.publish(did, envelope)
            except Exception:  # retained desired state is re-published by the next change; never break the step
                log.exception("publishing desired state to %s failed", did)
