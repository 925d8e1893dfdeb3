"""Hand a finished run over: register the blessed bundle (an approval request), then a rollout once approved.

Registration goes through the model registry like any upload (golden vectors
re-run, monotonic version, lineage, TUF hook), as the principal ``pipeline``, so
the approval must come from a human approver (the registry refuses approving
one's own registration). The run's evaluation is in the manifest's lineage and in
the ``pipeline.approval_requested`` audit entry: the evidence approvers see
(``GET /v1/approvals`` shows it). Once approved, a rollout of the new version to
the triggering cohort starts (``controller.rollouts.service.create``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import Session

from controller.core import audit
from controller.core.roles import Role
from controller.core.security import Principal
from controller.core.tables import ModelVersion, PipelineRun
from controller.pipeline import step
from controller.release.registry import Registry, RegistryError
from controller.rollouts import service as rollouts
from controller.rollouts.engine import RolloutEngine

log = logging.getLogger(__name__)
PIPELINE = Principal("pipeline", Role.OPERATOR)


def approval_evidence(lineage: dict[str, Any], run_id: int | None) -> dict[str, Any]:
    """What an approver sees: the verdict, the slices, the metrics and where the data came from."""
    found = lineage.get("evaluation")
    ev: dict[str, Any] = found if isinstance(found, dict) else {}
    return {
        "pipeline_run": run_id,
        "verdict": ev.get("verdict"),
        "slices": ev.get("slices", []),
        "metrics": lineage.get("metrics"),
        "dataset_sha256": lineage.get("dataset_sha256"),
        "feature_spec_version": lineage.get("feature_spec_version"),
        "trigger": lineage.get("trigger"),
        "parent_version": lineage.get("parent_version"),
    }


def finish(
    session: Session, registry: Registry, run: PipelineRun, folder: Path, result: dict[str, Any], now: float | None = None
) -> None:
    """Record the result of ``run`` and register its candidate when blessed (the caller commits)."""
    result = {k: v for k, v in result.items() if k != "traceback"}
    run.result = result
    run.dataset_sha256 = str(result.get("dataset_sha256") or "")
    run.finished_at = time.time() if now is None else now
    reasons = [str(r) for r in result.get("reasons", [])]
    state = str(result.get("state", "failed"))
    run.state, run.reason = (state if state in ("refused", "not_blessed", "failed") else "failed"), "; ".join(reasons)[:4096]
    if state == "blessed":
        try:
            with session.begin_nested():  # a refusal (a rule, the TUF hook) leaves nothing half-written
                mv, _ = registry.register(session, (folder / step.CANDIDATE).read_bytes(), PIPELINE)
        except (OSError, RegistryError) as exc:
            run.state, run.reason = "failed", f"registration refused: {exc}"[:4096]
        except Exception as exc:  # e.g. the image repository could not sign: the run failed, the tick goes on
            log.exception("registering pipeline run %s failed", run.id)
            run.state, run.reason = "failed", f"registration failed: {type(exc).__name__}: {exc}"[:4096]
        else:
            run.state, run.version = "registered", mv.version
            run.reason = f"{mv.name} v{mv.version} registered; waiting for an approver"
            lineage = dict(mv.manifest.get("lineage", {}))
            audit.record(
                session,
                actor=PIPELINE.name,
                action="pipeline.approval_requested",
                subject=f"model:{mv.name}:{mv.version}",
                reason="; ".join(reasons)[:4096],
                evidence=approval_evidence(lineage, run.id),
            )
    audit.record(
        session,
        actor=PIPELINE.name,
        action="pipeline.run_finished",
        subject=f"pipeline:{run.model}:{run.id}",
        reason=run.reason,
        evidence={"state": run.state, "dataset_sha256": run.dataset_sha256, "version": run.version, "gate": result.get("gate")},
    )
    session.add(run)


def rollout_starter(engine: RolloutEngine) -> Callable[[Session, PipelineRun, ModelVersion], tuple[int, Callable[[], None]]]:
    """``PipelineJob.start_rollout``: a rollout of the approved version to the run's cohort, from the incumbent."""

    def start(session: Session, run: PipelineRun, mv: ModelVersion) -> tuple[int, Callable[[], None]]:
        r, out = rollouts.create(
            session,
            engine,
            cohort=run.cohort,
            model=mv.name,
            version=mv.version,
            by=PIPELINE,
            baseline_version=run.parent_version,
            reason=f"pipeline run {run.id}: {mv.name} v{mv.version} approved by {mv.approved_by}",
        )
        return int(r.id or 0), lambda: engine.publish(out)

    return start
