"""The leader's pipeline job: decide whether to retrain, start runs, register results, hand over.

Each tick (``pipeline_interval_s``):

1. export new capture batches to the Parquet partitions;
2. finish runs whose folder has a ``result.json`` (register the blessed ones:
   an approval request); a run without a result after ``pipeline_run_timeout_s``
   has failed;
3. hand over: a registered run whose version an approver approved gets a rollout
   to its cohort (``pipeline_auto_rollout``);
4. for every (model, cohort) with production telemetry, gather the signals
   (``signals``), let the policy decide (``policy.decide``), record the decision
   and start a run when it says retrain.

Decisions are recorded (table ``pipelinedecision`` and the audit log) when they
differ from the last one recorded for the same model and cohort (decision,
trigger and rule), so a standing condition is one record, not one per tick.
Operators trigger runs through the same policy (:meth:`PipelineJob.request`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from controller.core import audit
from controller.core.config import Settings
from controller.core.leader import LeaderContext
from controller.core.tables import Cohort, Device, ModelVersion, PipelineDecision, PipelineRun, PredictionLabel
from controller.features import store as features_store
from controller.fleet.cohorts import cohorts_of
from controller.pipeline import compaction, datasets, policy, register, signals, step
from controller.pipeline.evaluate import BlessRules
from controller.pipeline.policy import Decision, PolicyConfig, Signals
from controller.pipeline.run import REFERENCE_MIN_ROWS, RunSpec
from controller.pipeline.runner import InProcessRunner, KubernetesRunner, Runner, RunnerError
from controller.pipeline.signals import Incumbent
from controller.pipeline.train import TrainParams
from controller.release.registry import Registry
from shared.canonical import canonical_json
from shared.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)
LOOKBACK_S = 86400  # (model, cohort) pairs with production telemetry this recent are watched
BatchHistory = Callable[[Session, str], pa.Table]  # model -> batch feature values (datasets.BATCH_SCHEMA)


def batch_history(session: Session, model: str) -> pa.Table:
    """Every batch-feature value the controller has recorded (``controller.features``), for the
    point-in-time join of a snapshot (the join keeps only the names the query asks for)."""
    return datasets.batch_table(features_store.history(session))


@dataclass
class CompactionJob:
    """The leader's ``pipeline.compact`` job (ADR 0081): export what is not exported yet, then merge the small sample
    files of closed or crowded partitions. Exporting first matters: a batch whose export stopped before its marker is
    written again by name, and must be before its first files are merged away."""

    pipeline: PipelineJob
    rules: compaction.Rules = field(default_factory=compaction.Rules)
    on_report: Callable[[compaction.Report], None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, pipeline: PipelineJob) -> CompactionJob:
        rules = compaction.Rules(
            small_bytes=settings.pipeline_compact_small_bytes,
            target_bytes=settings.pipeline_compact_target_bytes,
            max_open_files=settings.pipeline_compact_max_open_files,
            closed_after_s=settings.pipeline_compact_closed_after_s,
        )
        return cls(pipeline, rules)

    def job(self, ctx: LeaderContext) -> None:
        self.run(ctx.engine, still_leader=ctx.still_leader)

    def run(self, engine: Engine, now: float | None = None, still_leader: Callable[[], bool] = lambda: True) -> compaction.Report:
        with Session(engine) as session:
            self.pipeline.export(session)
        t0 = time.monotonic()
        rep = compaction.compact(self.pipeline.datasets_root, now, self.rules, go_on=still_leader)
        if rep.inputs or rep.recovered or rep.refused or rep.more:
            log.info(
                "pipeline compaction: %d files merged into %d in %d partitions (%d rows, %d -> %d bytes) in %.1f s; "
                "%d interrupted merges finished%s",
                rep.inputs,
                rep.outputs,
                rep.partitions,
                rep.rows,
                rep.bytes_in,
                rep.bytes_out,
                time.monotonic() - t0,
                rep.recovered,
                "; more left for the next run" if rep.more else "",
            )
        for reason in rep.refused:
            log.warning("pipeline compaction left a partition as it is: %s", reason)
        if self.on_report is not None:
            self.on_report(rep)
        return rep


class RunRefused(Exception):
    """A requested run the policy refused; ``decision`` says why."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision


@dataclass
class PipelineJob:
    data_dir: Path
    registry: Registry
    config: PolicyConfig
    runner: Runner
    window_s: float = 3600.0
    min_device_samples: int = 30
    run_timeout_s: float = 6 * 3600.0
    params: TrainParams = field(default_factory=TrainParams)
    gate: dict[str, Any] = field(default_factory=dict)
    bless: BlessRules = field(default_factory=BlessRules)
    recent_s: float = 86400.0
    reference_min_rows: int = REFERENCE_MIN_ROWS
    auto_rollout: bool = True
    enabled: bool = True  # the policy decides; when False, only operators start runs (finishing and hand-over go on)
    start_rollout: Callable[[Session, PipelineRun, ModelVersion], tuple[int, Callable[[], None]]] | None = None
    batch_history: BatchHistory | None = None

    @classmethod
    def from_settings(cls, settings: Settings, registry: Registry) -> PipelineJob:
        runner: Runner = (
            KubernetesRunner(
                image=settings.pipeline_k8s_image,
                namespace=settings.pipeline_k8s_namespace,
                data_claim=settings.pipeline_k8s_data_claim,
                data_dir=settings.data_dir,
            )
            if settings.pipeline_runner == "kubernetes"
            else InProcessRunner()
        )
        return cls(
            data_dir=settings.data_dir,
            registry=registry,
            config=PolicyConfig(
                drift_device_share=settings.pipeline_drift_device_share,
                drift_windows=settings.pipeline_drift_windows,
                accuracy_drop=settings.pipeline_accuracy_drop,
                min_new_labels=settings.pipeline_min_new_labels,
                schedule_s=settings.pipeline_schedule_s,
                cooldown_s=settings.pipeline_cooldown_s,
                backoff_max_s=settings.pipeline_backoff_max_s,
            ),
            runner=runner,
            window_s=settings.pipeline_window_s,
            min_device_samples=settings.pipeline_min_device_samples,
            run_timeout_s=settings.pipeline_run_timeout_s,
            params=TrainParams(epochs=settings.pipeline_epochs, seed=settings.pipeline_seed),
            gate={"min_labelled": settings.pipeline_min_labelled},
            bless=BlessRules(tolerance=settings.pipeline_bless_tolerance, alpha=settings.pipeline_bless_alpha),
            recent_s=settings.pipeline_recent_s,
            reference_min_rows=settings.pipeline_reference_min_rows,
            auto_rollout=settings.pipeline_auto_rollout,
            enabled=settings.pipeline_enabled,
            batch_history=batch_history,
        )

    # --- folders -------------------------------------------------------------------------

    @property
    def datasets_root(self) -> Path:
        return self.data_dir / "datasets"

    def run_dir(self, run_id: int) -> Path:
        return self.data_dir / "pipeline" / "runs" / str(run_id)

    # --- the leader's tick -----------------------------------------------------------------

    def job(self, ctx: LeaderContext) -> None:
        self.tick(ctx.engine, still_leader=ctx.still_leader)

    def tick(self, engine: Engine, now: float | None = None, still_leader: Callable[[], bool] = lambda: True) -> list[Decision]:
        t = time.time() if now is None else now
        with Session(engine) as session:
            self.export(session)
            self.collect(session, t)
            after = self.hand_over(session)
            session.commit()
        for publish in after:
            publish()
        decisions: list[Decision] = []
        if not self.enabled:
            return decisions
        with Session(engine) as session:
            pairs = signals.watched(session, t - LOOKBACK_S)
        for model, cohort in pairs:
            if not still_leader():
                break
            try:
                with Session(engine) as session:
                    d = self.consider(session, model, cohort, t)
            except Exception:  # one model's bad data must not stop the others' decisions
                log.exception("pipeline decision for %s in %s failed", model, cohort)
                continue
            if d is not None:
                decisions.append(d)
        return decisions

    def export(self, session: Session) -> datasets.ExportReport:
        cohorts = list(session.exec(select(Cohort)).all())
        devices = {
            d.id: datasets.DeviceInfo(tuple(sorted(cohorts_of(d, cohorts))), d.hardware_class)
            for d in session.exec(select(Device)).all()
        }
        rep = datasets.export_captures(self.data_dir / "capture", self.datasets_root, devices)
        if rep.skipped:
            log.warning("pipeline export: %d capture lines skipped: %s", sum(rep.skipped.values()), rep.skipped)
        return rep

    def collect(self, session: Session, now: float, only: int | None = None) -> None:
        """Finish running runs that have a result (or timed out); each is claimed with a compare-and-set on its
        state, so a run finished by its runner's thread and by the leader's tick is registered once."""
        q = select(PipelineRun).where(PipelineRun.state == "running")
        if only is not None:
            q = q.where(PipelineRun.id == only)
        for run in session.exec(q).all():
            folder = self.run_dir(int(run.id or 0))
            result = step.read_result(folder)
            if result is None:
                if now - run.started_at > self.run_timeout_s:
                    result = {"state": "failed", "reasons": [f"no result after {self.run_timeout_s:.0f} s; the runner was lost"]}
                else:
                    continue
            claim = update(PipelineRun).where(col(PipelineRun.id) == run.id, col(PipelineRun.state) == "running")
            if session.execute(claim.values(state="finishing")).rowcount != 1:  # type: ignore[attr-defined]
                continue  # another replica or thread is finishing it
            register.finish(session, self.registry, run, folder, result, now)
            log.info("pipeline run %s of %s: %s (%s)", run.id, run.model, run.state, run.reason)

    def hand_over(self, session: Session) -> list[Callable[[], None]]:
        """Approved versions of registered runs get their rollout; returns what to publish after commit."""
        after: list[Callable[[], None]] = []
        for run in session.exec(select(PipelineRun).where(PipelineRun.state == "registered")).all():
            mv = session.exec(
                select(ModelVersion).where(ModelVersion.name == run.model, ModelVersion.version == run.version)
            ).first()
            if mv is None or mv.approved_by is None:
                continue
            if not self.auto_rollout or self.start_rollout is None or run.cohort in ("", signals.FLEET):
                run.state, run.reason = "approved", f"v{run.version} approved by {mv.approved_by}; start its rollout by hand"
            else:
                try:
                    rollout_id, publish = self.start_rollout(session, run, mv)
                except Exception as exc:  # a rule of the rollouts (overlap, cohort gone): say so and stop trying
                    run.state, run.reason = "approved", f"v{run.version} approved; the rollout was refused: {exc}"[:4096]
                else:
                    run.state, run.rollout_id = "rolled_out", rollout_id
                    run.reason = f"v{run.version} approved by {mv.approved_by}; rollout {rollout_id} to {run.cohort} started"
                    after.append(publish)
            audit.record(
                session,
                actor=register.PIPELINE.name,
                action="pipeline.handed_over",
                subject=f"pipeline:{run.model}:{run.id}",
                reason=run.reason,
                evidence={"version": run.version, "rollout": run.rollout_id, "cohort": run.cohort},
            )
            session.add(run)
        return after

    # --- deciding ----------------------------------------------------------------------------

    def signals(self, session: Session, model: str, cohort: str, now: float, manual: str | None = None) -> tuple[Signals, Any]:
        end = (now // self.window_s) * self.window_s  # complete windows only
        period = end - self.config.drift_windows * self.window_s  # the windows the policy judges
        inc = signals.incumbent(session, model, cohort, now - LOOKBACK_S, recent=period)
        last, running, streak = signals.runs(session, model)
        drift = (
            signals.device_drift(
                self.datasets_root, model, cohort, inc, end, self.window_s, self.config.drift_windows, self.min_device_samples
            )
            if inc is not None
            else []
        )
        acc, source = signals.cohort_accuracy(session, model, cohort, period, end)
        labels_since = last.started_at if last is not None else (inc.registered_at if inc is not None else 0.0)
        # A scan of every sample partition: only when the data trigger is on (it is the only reader)
        new_labels = signals.new_labels(session, self.datasets_root, model, labels_since) if self.config.min_new_labels > 0 else 0
        sig = Signals(
            model=model,
            cohort=cohort,
            now=now,
            drift=drift,
            accuracy=acc,
            accuracy_source=source,
            baseline_accuracy=inc.accuracy if inc is not None else None,
            new_labels=new_labels,
            last_run=last,
            running=running,
            unsuccessful_streak=streak,
            manual=manual,
        )
        return sig, inc

    def consider(
        self, session: Session, model: str, cohort: str, now: float, manual: str | None = None, actor: str = "leader"
    ) -> Decision | None:
        """Decide for one (model, cohort); record the decision when it is new; start a run on retrain."""
        sig, inc = self.signals(session, model, cohort, now, manual)
        d = policy.decide(sig, self.config)
        run = None
        if d.action == "retrain":
            if inc is None:
                d = Decision(
                    "skip",
                    d.trigger,
                    f"{d.reason}: but no registered version of {model} to start from",
                    "no_incumbent",
                    d.evidence,
                )
            else:
                run = self._create_run(session, model, cohort, d, inc, now)
        recorded = self._record(session, model, cohort, d, now, run, actor, force=manual is not None)
        session.commit()
        if run is not None:
            self._start(session, run)
        return d if recorded or manual is not None else None

    def request(self, engine: Engine, model: str, cohort: str, reason: str, actor: str, now: float | None = None) -> PipelineRun:
        """An operator's manual trigger: the same policy (one run at a time, cooldown); RunRefused says why not."""
        t = time.time() if now is None else now
        with Session(engine) as session:
            self.export(session)  # the samples captured up to now
            d = self.consider(session, model, cohort, t, manual=reason, actor=actor)
            assert d is not None
            if d.action != "retrain":
                raise RunRefused(d)
            run: PipelineRun | None = session.exec(
                select(PipelineRun).where(PipelineRun.model == model).order_by(col(PipelineRun.id).desc())
            ).first()
            assert run is not None
            return run

    def _record(
        self, session: Session, model: str, cohort: str, d: Decision, now: float, run: PipelineRun | None, actor: str, force: bool
    ) -> bool:
        last = session.exec(
            select(PipelineDecision)
            .where(PipelineDecision.model == model, PipelineDecision.cohort == cohort)
            .order_by(col(PipelineDecision.id).desc())
        ).first()
        same = last is not None and (last.decision, last.trigger, last.evidence.get("rule")) == (d.action, d.trigger, d.rule)
        if same and run is None and not force:
            return False
        if last is None and d.action == "none" and not force:
            return False  # nothing ever fired: nothing to say
        evidence = {**d.evidence, "rule": d.rule, **({"not_before": d.not_before} if d.not_before else {})}
        entry = audit.record(
            session,
            actor=actor,
            action=f"pipeline.{d.action}",
            subject=f"pipeline:{model}:{cohort}",
            reason=d.reason[:4096],
            evidence={**evidence, "run": run.id if run else None},
        )
        session.add(
            PipelineDecision(
                model=model,
                cohort=cohort,
                at=now,
                decision=d.action,
                trigger=d.trigger,
                reason=d.reason[:4096],
                evidence=evidence,
                run_id=run.id if run else None,
                actor=actor,
                audit_seq=entry.seq,
            )
        )
        log.info("pipeline decision for %s in %s: %s", model, cohort, d.reason)
        return True

    def _create_run(self, session: Session, model: str, cohort: str, d: Decision, inc: Incumbent, now: float) -> PipelineRun:
        n_classes = len(inc.manifest.get("reference", {}).get("predictions", {}).get("classes", [])) or int(
            (inc.manifest.get("outputs") or [{"shape": [1, 2]}])[0]["shape"][-1]
        )
        spec = RunSpec(
            model=model,
            version=self.registry.latest(session, model) + 1,
            parent_version=inc.version,
            n_classes=n_classes,
            cohort=None if cohort == signals.FLEET else cohort,
            trigger={"kind": d.trigger, "reason": d.reason, "decided_at": now},
            params=self.params,
            gate=self.gate,
            bless=self.bless,
            recent_s=self.recent_s,
            reference_min_rows=self.reference_min_rows,
            drift_since=policy.drift_since(d, self.window_s),
            until=now,  # what was captured before the decision: a rerun of this spec sees the same samples
        )
        run = PipelineRun(
            model=model,
            cohort=cohort,
            trigger=d.trigger,
            state="running",
            runner=self.runner.name,
            spec=spec.to_dict(),
            parent_version=inc.version,
            started_at=now,
            reason=d.reason[:4096],
        )
        session.add(run)
        session.flush()
        labels = datasets.labels_table(
            (r.device_id, r.prediction_id, r.label)
            for r in session.exec(select(PredictionLabel).where(PredictionLabel.model == model)).all()
        )
        batch = self.batch_history(session, model) if self.batch_history else datasets.batch_table([])
        mv = self.registry.get(session, model, inc.version)
        path = self.registry.blobs.local_path(mv.sha256)
        step.prepare(self.run_dir(int(run.id or 0)), spec.to_dict(), labels, batch, path.read_bytes() if path else None)
        return run

    def _start(self, session: Session, run: PipelineRun) -> None:
        run_id = int(run.id or 0)

        def progress(line: str) -> None:
            log.info("pipeline run %d: %s", run_id, line)

        engine = session.get_bind()

        def done() -> None:  # register at once rather than at the leader's next tick
            with Session(engine) as s:
                self.collect(s, time.time(), only=run_id)
                s.commit()

        try:
            self.runner.start(run_id, self.run_dir(run_id), self.datasets_root, progress, done)
        except RunnerError as exc:  # recorded as the run's result; the next tick finishes it as failed
            atomic_write_bytes(
                self.run_dir(run_id) / step.RESULT, canonical_json({"state": "failed", "reasons": [f"runner: {exc}"]})
            )
