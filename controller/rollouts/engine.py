"""The rollout engine: applies events to a rollout and does what the new state asks.

One transaction per rollout step: the ``rollout`` row is claimed first (a
compare-and-set on ``revision``, which also takes the row or database lock),
then the state machine (``controller.rollouts.state``) decides, and the engine
acts on the difference: devices put on the candidate for a new stage, every
candidate device put back on the baseline after a failure, an abort or a
revocation. The decision, its evidence and the new desired states commit
together; envelopes are published after the commit (retained, so an offline
device gets them when it returns). While a rollout is running or paused, every
device it reads (the candidate devices and the cohort's baseline devices) is
asked for fresh telemetry in its desired state (``controller.fleet.freshness``,
ADR 0076); the rollout lets go of them when it ends, halts or rolls back.

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

from sqlalchemy import Engine, event, update
from sqlmodel import Session, col, select

from controller.core import audit
from controller.core.config import Settings
from controller.core.leader import LeaderContext
from controller.core.roles import Role
from controller.core.security import Principal
from controller.core.tables import Cohort, Device, Rollout, RolloutDecision, RolloutDevice
from controller.fleet import assignments, freshness
from controller.fleet.cohorts import member_ids
from controller.fleet.director import Director
from controller.release.registry import Registry, RegistryError, ReleaseChange
from controller.rollouts import analysis, evidence, selection, state
from controller.rollouts.plan import SHADOW, approval_from, stages_from_list, thresholds_from_dict
from controller.rollouts.state import RolloutRecord, Waiting
from shared.cadence import rollout_holder

log = logging.getLogger(__name__)

Envelopes = list[tuple[str, dict[str, Any]]]
PublishAll = Callable[[Envelopes], None]  # every envelope sent before any acknowledgement is awaited
ACTIVE = (state.State.RUNNING.value, state.State.PAUSED.value)  # analysed every interval
OPEN = (*ACTIVE, state.State.HALTED.value)  # not over: holds its devices, follows revocations


class Busy(Exception):
    """The rollout changed under this step (another replica or request); retry."""


@dataclass
class Services:
    director: Director
    settings: Settings
    registry: Registry
    publish: PublishAll | None  # None: MQTT disabled; desired states are still written


def record_of(r: Rollout, baseline_problem: str = "") -> RolloutRecord:
    stages = stages_from_list(r.stages)
    return RolloutRecord(
        id=r.id or 0,
        baseline_problem=baseline_problem,
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

    def watch(self, ctx: LeaderContext) -> None:
        """The leader's quick look between analyses (job ``rollouts.watch``, a quarter of the interval)."""
        self.quick(ctx.engine, still_leader=ctx.still_leader)

    def quick(self, engine: Engine, now: float | None = None, still_leader: Callable[[], bool] = lambda: True) -> None:
        """Fail now what may be failed at any moment: an agent's rollback of the candidate, or an always-valid test.

        Everything else (the per-look tests, passing, holding, new devices) waits for the interval,
        whose error rates assume one look per interval (ADR 0066). A read-only look first; a rollout
        is claimed only when it fails."""
        now = time.time() if now is None else now
        with Session(engine) as session:
            rows = list(session.exec(select(Rollout).where(col(Rollout.state).in_(ACTIVE)).order_by(col(Rollout.id))).all())
            failing = [r.id for r in rows if analysis.fails_at_any_look(self._verdict(session, r, now)[1])]
        for rid in failing:
            if not still_leader():
                return
            try:
                self.step(engine, rid, now, only_failure=True)
            except Busy:
                log.info("rollout %s changed during a quick look; next look", rid)

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

    def step(self, engine: Engine, rollout_id: int | None, now: float | None = None, only_failure: bool = False) -> None:
        now = time.time() if now is None else now
        out: Envelopes = []
        with Session(engine) as session:
            r = self._claim(session, rollout_id, now)
            if r.state in ACTIVE:
                out = self._analyse(session, r, now, only_failure)
            if r.state in ACTIVE:  # devices that joined the cohort, or whose request for fresh telemetry was lost
                out += self._hold(session, r)
            session.commit()
        self.publish(out)

    def act(self, engine: Engine, rollout_id: int, event: state.Event, actor: str, reason: str) -> None:
        """An operator's event (pause, resume, promote, abort); raises state.IllegalTransition.

        Retried when the leader's analysis changed the rollout meanwhile; the event is then
        judged against the new state."""

        def step(session: Session, r: Rollout) -> Envelopes:
            ev = {"event": type(event).__name__}
            return self._apply(session, r, event, time.time(), actor=actor, reason=reason, evidence=ev)

        self._claimed(engine, rollout_id, step)

    def rebase(self, engine: Engine, rollout_id: int, version: int, actor: str, reason: str) -> None:
        """An operator names another baseline: one the devices may install (registry: not revoked, not below
        the floor, released), never the candidate. A halted rollout then rolls back to it.
        Raises registry errors, state.IllegalTransition or Busy."""

        def step(session: Session, r: Rollout) -> Envelopes:
            if version == r.candidate_version:
                raise state.IllegalTransition(f"v{version} is the candidate; name a version to go back to")
            self.s.registry.installable(session, r.model, version)
            ev = {"event": "Rebase", "baseline": {"from": r.baseline_version, "to": version}}
            r.baseline_version = version
            return self._apply(session, r, state.Rebase(actor, version, reason), time.time(), actor=actor, evidence=ev)

        self._claimed(engine, rollout_id, step)

    def _claimed(self, engine: Engine, rollout_id: int, step: Callable[[Session, Rollout], Envelopes]) -> None:
        """Run ``step`` on the claimed rollout in one transaction and publish what it returns; retried when the
        leader's analysis changed the rollout meanwhile (the step is then judged against the new state)."""
        for attempt in range(5):
            try:
                with Session(engine) as session:
                    out = step(session, self._claim(session, rollout_id, time.time()))
                    session.commit()
                self.publish(out)
                return
            except Busy:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def on_release_change(self, session: Session, change: ReleaseChange) -> None:
        """The registry's release hook, inside the revoking transaction. An open rollout of the revoked version
        is rolled back in that same transaction (its devices back on the baseline, the decision audited; halted
        instead when the baseline cannot be installed either); one whose baseline was revoked pauses, so that
        no failure ever assigns it. New desired states are published once the revocation commits."""
        if change.kind != "revoked":
            return
        rows = session.exec(
            select(Rollout).where(Rollout.model == change.name, col(Rollout.state).in_(OPEN)).order_by(col(Rollout.id))
        ).all()
        out: Envelopes = []
        for r in rows:
            if change.version not in (r.candidate_version, r.baseline_version) and r.baseline_version >= change.floor:
                continue
            self._claim_within(session, r, time.time())
            if r.state not in OPEN:
                continue
            ev: dict[str, Any] = {"revoked": True, "revoked_version": change.version, "floor": change.floor}
            if change.version == r.candidate_version:
                why = f"{r.model} v{r.candidate_version} was revoked"
                out += self._apply(session, r, state.Revoked(why), time.time(), evidence={**ev, "event": "Revoked"})
            else:
                why = f"the baseline {r.model} v{r.baseline_version} " + (
                    "was revoked" if change.version == r.baseline_version else f"is below the version floor {change.floor}"
                )
                ev["event"] = "BaselineRevoked"
                out += self._apply(session, r, state.BaselineRevoked(why), time.time(), evidence=ev)
        if out:
            event.listen(session, "after_commit", lambda _s: self.publish(out), once=True)

    @staticmethod
    def devices_held(session: Session, model: str) -> set[str]:
        """Devices an open rollout of ``model`` put on its candidate: the engine decides where they go."""
        rows = session.exec(
            select(RolloutDevice.device_id)
            .join(Rollout, col(Rollout.id) == RolloutDevice.rollout_id)
            .where(Rollout.model == model, col(Rollout.state).in_(OPEN))
        ).all()
        return set(rows)

    def start(self, session: Session, r: Rollout, now: float) -> Envelopes:
        """First assignment of a new rollout (the caller added ``r`` and commits)."""
        self._enter_stage(r, now)
        return self._reconcile(session, r, now) + self._hold(session, r)

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

    def _claim_within(self, session: Session, r: Rollout, now: float, attempts: int = 20) -> None:
        """The compare-and-set of :meth:`_claim` inside a caller's transaction that must not be rolled back:
        when another step changed the row first, read it again and retry."""
        for _ in range(attempts):
            res = session.execute(
                update(Rollout)
                .where(col(Rollout.id) == r.id, col(Rollout.revision) == r.revision)
                .values(revision=r.revision + 1, updated_at=now)
            )
            session.refresh(r)
            if res.rowcount == 1:  # type: ignore[attr-defined]
                return
        raise Busy(f"rollout {r.id} kept changing; try again")

    def _verdict(self, session: Session, r: Rollout, now: float) -> tuple[analysis.Observation, analysis.Verdict]:
        stage = stages_from_list(r.stages)[r.stage]
        obs = evidence.observe(session, r, stage, self._members(session, r), now, final=stage.share >= 1.0)
        return obs, analysis.analyse(obs, stage, thresholds_from_dict(r.thresholds))

    def _analyse(self, session: Session, r: Rollout, now: float, only_failure: bool = False) -> Envelopes:
        cand = self.s.registry.get(session, r.model, r.candidate_version)
        if cand.revoked:
            return self._apply(
                session, r, state.Revoked(f"{r.model} v{r.candidate_version} was revoked"), now, evidence={"revoked": True}
            )
        out: Envelopes = []
        if r.state == state.State.RUNNING.value and not only_failure:
            out += self._reconcile(session, r, now)
        stage = stages_from_list(r.stages)[r.stage]
        obs, verdict = self._verdict(session, r, now)
        if only_failure and not analysis.fails_at_any_look(verdict):
            return out
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
        problem = self.baseline_problem(session, r)
        before = record_of(r, problem)
        after = state.transition(before, event)  # raises IllegalTransition and changes nothing
        r.state, r.stage, r.waiting = after.state.value, after.stage, after.waiting.value
        explained = after.waiting is Waiting.BASELINE  # the reason says what happened and the way out
        r.stage_passed, r.reason = after.stage_passed, (after.reason if explained else reason or after.reason)[:2048]
        out: Envelopes = []
        if after.state is state.State.ROLLED_BACK:
            out = self._revert(session, r)
        elif after.state is state.State.HALTED:
            out = self._halt(session, r)
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
        if problem:
            ev["baseline_problem"] = problem
        if out:
            ev["devices_changed"] = sorted({d for d, _ in out})
        if after.state is state.State.HALTED:
            ev["devices_kept_on_candidate"] = self._on_candidate(session, r)
        self.decide(session, r, actor, action, verdict, r.reason, ev)
        if r.state not in ACTIVE:  # no more analysis: its devices go back to batching their telemetry
            out += self._hold(session, r)
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
            [selection.Candidate(d.id, _arch(d)) for d in members],
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
            sampling={"shadow_rate": stage.sample_rate} if stage.kind == SHADOW else None,
        )
        for d in devices:
            row = rows.get(d.id) or RolloutDevice(
                rollout_id=r.id or 0, device_id=d.id, bucket=selection.bucket(r.id or 0, d.id), arm="canary"
            )
            row.arm, row.role, row.stage, row.assigned_at, row.reverted = "canary", stage.role, r.stage, now, False
            session.add(row)
        return out

    def _hold(self, session: Session, r: Rollout) -> Envelopes:
        """Ask every device the rollout reads for fresh telemetry while it is running or paused (the candidate
        devices and the cohort's baseline devices, not those whose hardware the candidate does not support);
        ask none once it is over. Re-signs only the devices whose request changes."""
        everyone = list(session.exec(select(Device)).all())
        wanted: set[str] = set()
        if r.state in ACTIVE:
            hardware = self.s.registry.get(session, r.model, r.candidate_version).manifest.get("hardware") or {}
            cohort = session.get(Cohort, r.cohort)
            members = set(member_ids(cohort, everyone)) if cohort is not None else set()
            wanted = {d.id for d in everyone if d.id in members and selection.supports(hardware, _arch(d))}
            rows = session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id, RolloutDevice.arm == "canary"))
            wanted |= {row.device_id for row in rows.all() if not row.reverted}
        s = self.s
        return freshness.sync(session, rollout_holder(r.id or 0), wanted, everyone, director=s.director, settings=s.settings)

    def baseline_problem(self, session: Session, r: Rollout) -> str:
        """Why the rollout's devices may not go back to its baseline ("": they may): the registry's
        ``installable`` (not revoked, not below the floor, released)."""
        try:
            self.s.registry.installable(session, r.model, r.baseline_version)
        except RegistryError as exc:
            return f"baseline {exc}"
        return ""

    def _on_candidate(self, session: Session, r: Rollout) -> list[str]:
        rows = session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id, RolloutDevice.arm == "canary"))
        return sorted(x.device_id for x in rows.all() if x.role == "production" and not x.reverted)

    def _halt(self, session: Session, r: Rollout) -> Envelopes:
        """Must roll back, cannot: nothing is assigned. Only the candidate's shadow role goes (that installs
        nothing); devices running the candidate in production keep it until a human names a baseline."""
        rows = [
            row
            for row in session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id)).all()
            if row.role == "shadow" and not row.reverted
        ]
        devices = list(session.exec(select(Device).where(col(Device.id).in_([x.device_id for x in rows]))).all())
        out = self._unassign(session, r, devices, "shadow", f"rollout {r.id} halted: {r.reason}"[:4096])
        for x in rows:
            x.reverted = True
            session.add(x)
        return out

    def _revert(self, session: Session, r: Rollout) -> Envelopes:
        """Every device of the rollout back on the baseline: production to the baseline, shadow removed.

        Only ever called with a baseline the devices may install (the state machine halts otherwise);
        ``installable`` checks it once more, so a revoked version is never assigned."""
        rows = [
            row
            for row in session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id)).all()
            if row.arm in ("canary", "done") and not row.reverted
        ]
        devices = {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_([x.device_id for x in rows]))).all()}
        base = self.s.registry.installable(session, r.model, r.baseline_version)
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
        """All of a step's desired states in one batch, right after its commit (a rollback reaches every device
        at once, not one acknowledgement after another)."""
        if self.s.publish is None or not out:
            return
        newest = dict(out)  # a device signed twice in one step (e.g. fresh telemetry, then the candidate): the last
        try:
            self.s.publish(list(newest.items()))
        except Exception:  # retained desired state is re-published by the next change; never break the step
            log.exception("publishing %d desired state(s) failed", len(out))


def _arch(d: Device) -> str:
    return d.arch or str(d.hardware.get("arch", ""))


def _action(event: state.Event, before: RolloutRecord, after: RolloutRecord) -> str:
    """The decision's name in the audit log (``rollout.<action>``)."""
    if after.state is state.State.ROLLED_BACK:
        return "rolled_back"
    if after.state is state.State.HALTED:
        return "halted"
    if after.state is state.State.COMPLETED:
        return "completed"
    if isinstance(event, state.Rebase):
        return "rebased"
    if isinstance(event, state.Promote):
        return "promoted"
    if after.state is state.State.PAUSED:
        return "paused"
    return "advanced" if after.stage != before.stage else "resumed"
