"""The rollout engine: applies events to a rollout and does what the new state asks.

One transaction per rollout step: the ``rollout`` row is claimed first (a
compare-and-set on ``revision``, which also takes the row or database lock),
then the state machine (``controller.rollouts.state``) decides, and the engine
acts on the difference: devices put on the candidate for a new stage, every
candidate device put back on the baseline after a failure, an abort or a
revocation. The decision, its evidence and the new desired states commit
together; envelopes are published after the commit (retained, so an offline
device gets them when it returns).

``tick`` is the leader's periodic job: for every running or paused rollout it
runs the analysis (``controller.rollouts.analysis``) and feeds the verdict in.
It is idempotent: a device already on its arm is not assigned again, and a hold
that says what the previous one said is not recorded twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from controller.core import audit
from controller.core.config import Settings
from controller.core.leader import LeaderContext
from controller.core.roles import Role
from controller.core.security import Principal
from controller.core.tables import Cohort, Device, ModelVersion, Rollout, RolloutDecision, RolloutDevice
from controller.fleet import assignments
from controller.fleet.cohorts import member_ids
from controller.fleet.director import Director
from controller.release.registry import Registry
from controller.rollouts import analysis, evidence, selection, state
from controller.rollouts.plan import SHADOW, approval_from, stages_from_list, thresholds_from_dict
from controller.rollouts.state import RolloutRecord, Waiting

log = logging.getLogger(__name__)

Publish = Callable[[str, dict[str, Any]], None]
Envelopes = list[tuple[str, dict[str, Any]]]
ACTIVE = (state.State.RUNNING.value, state.State.PAUSED.value)


class Busy(Exception):
    """The rollout changed under this step (another replica or request); retry."""


@dataclass
class Services:
    director: Director
    settings: Settings
    registry: Registry
    publish: Publish | None  # None: MQTT disabled; desired states are still written


def record_of(r: Rollout) -> RolloutRecord:
    stages = stages_from_list(r.stages)
    return RolloutRecord(
        state=state.State(r.state),
        stage=r.stage,
        n_stages=len(stages),
        approval_from=approval_from(stages),
        gates=frozenset(i for i, s in enumerate(stages) if s.pause_after),
        waiting=Waiting(r.waiting),
        stage_passed=r.stage_passed,
        reason=r.reason,
    )


def _principal(r: Rollout) -> Principal:
    return Principal(f"rollout:{r.id}", Role.OPERATOR)


class RolloutEngine:
    def __init__(self, services: Services) -> None:
        self.s = services

    # --- entry points ----------------------------------------------------------

    def job(self, ctx: LeaderContext) -> None:
        """The leader job: analyse every running or paused rollout once, while still leading."""
        self.tick(ctx.engine, still_leader=ctx.still_leader)

    def tick(self, engine: Engine, now: float | None = None, still_leader: Callable[[], bool] = lambda: True) -> None:
        """Analyse every running or paused rollout once."""
        with Session(engine) as session:
            ids = list(session.exec(select(Rollout.id).where(col(Rollout.state).in_(ACTIVE)).order_by(col(Rollout.id))).all())
        for rid in ids:
            if not still_leader():
                return
            try:
                self.step(engine, rid, now)
            except Busy:
                log.info("rollout %s changed during analysis; next interval", rid)

    def step(self, engine: Engine, rollout_id: int | None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        out: Envelopes = []
        with Session(engine) as session:
            r = self._claim(session, rollout_id, now)
            if r.state in ACTIVE:
                out = self._analyse(session, r, now)
            session.commit()
        self.publish(out)

    def act(self, engine: Engine, rollout_id: int, event: state.Event, actor: str, reason: str) -> None:
        """An operator's event (pause, resume, promote, abort); raises state.IllegalTransition.

        Retried when the leader's analysis changed the rollout meanwhile; the event is then
        judged against the new state."""
        for attempt in range(5):
            try:
                with Session(engine) as session:
                    r = self._claim(session, rollout_id, time.time())
                    ev = {"event": type(event).__name__}
                    out = self._apply(session, r, event, time.time(), actor=actor, reason=reason, evidence=ev)
                    session.commit()
                self.publish(out)
                return
            except Busy:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def start(self, session: Session, r: Rollout, now: float) -> Envelopes:
        """First assignment of a new rollout (the caller added ``r`` and commits)."""
        self._enter_stage(r, now)
        return self._reconcile(session, r, now)

    # --- one step ----------------------------------------------------------------

    def _claim(self, session: Session, rollout_id: int | None, now: float) -> Rollout:
        r = session.get(Rollout, rollout_id)
        if r is None:
            raise LookupError(f"no rollout {rollout_id}")
        res = session.execute(
            update(Rollout)
            .where(col(Rollout.id) == r.id, col(Rollout.revision) == r.revision)
            .values(revision=r.revision + 1, updated_at=now)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            raise Busy(f"rollout {rollout_id} changed concurrently; try again")
        session.refresh(r)
        return r

    def _analyse(self, session: Session, r: Rollout, now: float) -> Envelopes:
        cand = self.s.registry.get(session, r.model, r.candidate_version)
        if cand.revoked:
            return self._apply(
                session, r, state.Revoked(f"{r.model} v{r.candidate_version} was revoked"), now, evidence={"revoked": True}
            )
        out: Envelopes = []
        if r.state == state.State.RUNNING.value:
            out += self._reconcile(session, r, now)
        stages = stages_from_list(r.stages)
        stage = stages[r.stage]
        members = self._members(session, r)
        obs = evidence.observe(session, r, stage, members, now, final=stage.share >= 1.0)
        verdict = analysis.analyse(obs, stage, thresholds_from_dict(r.thresholds))
        ev = {"stage": r.stage + 1, "share": stage.share, "kind": stage.kind, **verdict.evidence()}
        ev["devices"] = {"candidate_reporting": len(obs.canary), "candidate_assigned": obs.assigned}
        ev["devices"] |= {"candidate_offline": obs.offline + obs.offline_before, "baseline_reporting": len(obs.baseline)}
        ev["devices"] |= {"baseline_devices": obs.baseline_devices, "skipped_hardware": self._skipped(session, r)}
        previous_held = r.last_analysis.get("held")
        r.last_analysis = {"at": audit.iso(), **ev}
        session.add(r)
        reason = "; ".join(verdict.reasons)
        if verdict.outcome == analysis.FAIL:
            return out + self._apply(session, r, state.Failed(f"stage {r.stage + 1} failed: {reason}"), now, evidence=ev)
        if r.state != state.State.RUNNING.value:
            return out
        if verdict.outcome == analysis.PASS:
            return out + self._apply(session, r, state.Passed(approved=cand.approved_by is not None), now, evidence=ev)
        if now >= r.deadline_at:
            why = f"stage {r.stage + 1} inconclusive past its deadline; a human must decide (resume, promote or abort): {reason}"
            return out + self._apply(session, r, state.DeadlinePassed(why), now, evidence=ev)
        held = [r.stage, list(verdict.reasons)]
        r.last_analysis = {**r.last_analysis, "held": held}
        if previous_held != held:  # a hold is recorded when what it waits for changes, not every interval
            self.decide(session, r, "rollout", "held", "inconclusive", f"stage {r.stage + 1} holds: {reason}", ev)
        return out

    def _apply(
        self,
        session: Session,
        r: Rollout,
        event: state.Event,
        now: float,
        *,
        actor: str = "rollout",
        reason: str = "",
        evidence: dict[str, Any] | None = None,
    ) -> Envelopes:
        before = record_of(r)
        after = state.transition(before, event)  # raises IllegalTransition and changes nothing
        r.state, r.stage, r.waiting = after.state.value, after.stage, after.waiting.value
        r.stage_passed, r.reason = after.stage_passed, (reason or after.reason)[:2048]
        out: Envelopes = []
        if after.state is state.State.ROLLED_BACK:
            out = self._revert(session, r)
        elif after.stage != before.stage and after.state is state.State.RUNNING:
            self._enter_stage(r, now)
            out = self._reconcile(session, r, now)
        elif isinstance(event, state.Resume) and before.waiting is Waiting.HUMAN:
            r.deadline_at = now + stages_from_list(r.stages)[r.stage].max_duration_s
        session.add(r)
        action = _action(event, before, after)
        verdict = {state.Failed: "fail", state.Passed: "pass", state.DeadlinePassed: "inconclusive"}.get(type(event), "")
        ev = {**(evidence or {}), "from": {"state": before.state.value, "stage": before.stage + 1}}
        ev["to"] = {"state": after.state.value, "stage": after.stage + 1, "waiting": after.waiting.value}
        if out:
            ev["devices_changed"] = sorted({d for d, _ in out})
        self.decide(session, r, actor, action, verdict, r.reason, ev)
        return out

    # --- devices ------------------------------------------------------------------

    def _members(self, session: Session, r: Rollout) -> list[Device]:
        cohort = session.get(Cohort, r.cohort)
        if cohort is None:
            return []
        devices = list(session.exec(select(Device)).all())
        ids = set(member_ids(cohort, devices))
        return [d for d in devices if d.id in ids]

    def _skipped(self, session: Session, r: Rollout) -> int:
        rows = session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id, RolloutDevice.arm == "skipped"))
        return len(rows.all())

    def _enter_stage(self, r: Rollout, now: float) -> None:
        stage = stages_from_list(r.stages)[r.stage]
        r.stage_started_at, r.deadline_at = now, now + stage.max_duration_s

    def _reconcile(self, session: Session, r: Rollout, now: float) -> Envelopes:
        """Put the stage's devices on the candidate (new stage, or devices that joined the cohort)."""
        stages = stages_from_list(r.stages)
        stage = stages[r.stage]
        members = self._members(session, r)
        by_id = {d.id: d for d in members}
        rows = {d.device_id: d for d in session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id)).all()}
        out: Envelopes = []
        if stage.kind != SHADOW:  # past the shadow stage: the candidate stops running as shadow
            shadowed = [d for d, row in rows.items() if row.role == "shadow" and not row.reverted]
            out += self._unassign(session, r, [by_id[d] for d in shadowed if d in by_id], "shadow", "shadow stage over")
            for d in shadowed:
                rows[d].role, rows[d].arm = "", "done"
                session.add(rows[d])
        cand = self.s.registry.get(session, r.model, r.candidate_version)
        sel = selection.select(
            r.id or 0,
            [selection.Candidate(d.id, d.arch or str(d.hardware.get("arch", ""))) for d in members],
            [d for d, row in rows.items() if row.arm == "canary" and not row.reverted],
            stage.share,
            stage.min_devices,
            cand.manifest.get("hardware") or {},
            keep_baseline=stage.min_devices,
        )
        for did in sel.skipped:
            if did not in rows:
                bucket = selection.bucket(r.id or 0, did)
                session.add(RolloutDevice(rollout_id=r.id or 0, device_id=did, bucket=bucket, arm="skipped"))
        retry = evidence.rejected_since(
            session, r, {d: row.assigned_at for d, row in rows.items() if row.arm == "canary" and not row.reverted}
        )
        chosen = [*sel.chosen, *(d for d in retry if d in by_id and d not in sel.chosen)]
        if not chosen:
            return out
        rule_role = stage.role if stage.kind == SHADOW else ("canary" if r.stage < approval_from(stages) else "production")
        mv = self.s.registry.assignable(session, r.model, r.candidate_version, rule_role)
        devices = [by_id[d] for d in chosen]
        out += assignments.assign(
            session,
            devices=devices,
            mv=mv,
            role=stage.role,
            by=_principal(r),
            reason=f"rollout {r.id} stage {r.stage + 1} ({stage.kind} {stage.share:.0%})"
            + (f"; again for {', '.join(retry)} (refused before installing)" if retry else ""),
            director=self.s.director,
            settings=self.s.settings,
            cohort=r.cohort,
        )
        for d in devices:
            row = rows.get(d.id) or RolloutDevice(
                rollout_id=r.id or 0, device_id=d.id, bucket=selection.bucket(r.id or 0, d.id), arm="canary"
            )
            row.arm, row.role, row.stage, row.assigned_at, row.reverted = "canary", stage.role, r.stage, now, False
            session.add(row)
        return out

    def _revert(self, session: Session, r: Rollout) -> Envelopes:
        """Every device of the rollout back on the baseline: production to the baseline, shadow removed."""
        rows = [
            row
            for row in session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id)).all()
            if row.arm in ("canary", "done") and not row.reverted
        ]
        devices = {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_([x.device_id for x in rows]))).all()}
        base = session.exec(
            select(ModelVersion).where(ModelVersion.name == r.model, ModelVersion.version == r.baseline_version)
        ).one()
        prod = [devices[x.device_id] for x in rows if x.role == "production" and x.device_id in devices]
        shadow = [devices[x.device_id] for x in rows if x.role == "shadow" and x.device_id in devices]
        out: Envelopes = []
        why = f"rollout {r.id} rolled back: {r.reason}"
        if prod:
            out += assignments.assign(
                session,
                devices=prod,
                mv=base,
                role="production",
                by=_principal(r),
                reason=why[:4096],
                director=self.s.director,
                settings=self.s.settings,
                cohort=r.cohort,
            )
        out += self._unassign(session, r, shadow, "shadow", why)
        for x in rows:
            x.reverted = True
            session.add(x)
        return out

    def _unassign(self, session: Session, r: Rollout, devices: list[Device], role: str, why: str) -> Envelopes:
        if not devices:
            return []
        return assignments.unassign(
            session, devices=devices, role=role, by=_principal(r), reason=why, director=self.s.director, settings=self.s.settings
        )

    # --- records --------------------------------------------------------------------

    def decide(
        self, session: Session, r: Rollout, actor: str, action: str, verdict: str, reason: str, ev: dict[str, Any]
    ) -> None:
        subject = f"rollout:{r.id}"
        entry = audit.record(session, actor=actor, action=f"rollout.{action}", subject=subject, reason=reason[:4096], evidence=ev)
        session.add(
            RolloutDecision(
                rollout_id=r.id or 0,
                at=entry.at,
                stage=r.stage + 1,
                actor=actor,
                action=action,
                verdict=verdict,
                reason=reason[:4096],
                evidence=ev,
                audit_seq=entry.seq,
            )
        )

    def publish(self, out: Envelopes) -> None:
        if self.s.publish is None:
            return
        for did, envelope in out:
            try:
                self.s.publish(did, envelope)
            except Exception:  # retained desired state is re-published by the next change; never break the step
                log.exception("publishing desired state to %s failed", did)


def _action(event: state.Event, before: RolloutRecord, after: RolloutRecord) -> str:
    """The decision's name in the audit log (``rollout.<action>``)."""
    if after.state is state.State.ROLLED_BACK:
        return "rolled_back"
    if after.state is state.State.COMPLETED:
        return "completed"
    if isinstance(event, state.Promote):
        return "promoted"
    if after.state is state.State.PAUSED:
        return "paused"
    return "advanced" if after.stage != before.stage else "resumed"
