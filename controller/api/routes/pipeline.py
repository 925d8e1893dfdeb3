"""Pipeline: the retraining policy's decisions, runs, and an operator's trigger (through the same policy)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from sqlmodel import col, select

from controller.api.deps import Operator, RowId, SessionDep, SettingsDep, needs
from controller.api.paging import PAGED, PageDep
from controller.api.schemas import PipelineDecisionPublic, PipelinePolicyPublic, PipelineRunCreate, PipelineRunPublic
from controller.core.roles import Role
from controller.core.tables import Cohort, PipelineDecision, PipelineRun
from controller.pipeline import step
from controller.pipeline.job import PipelineJob, RunRefused

router = APIRouter(prefix="/v1/pipeline", tags=["pipeline"], dependencies=[needs(Role.VIEWER)])
RunId = RowId


def get_pipeline(request: Request) -> PipelineJob:
    return request.app.state.pipeline  # type: ignore[no-any-return]


PipelineDep = Annotated[PipelineJob, Depends(get_pipeline)]


def public(job: PipelineJob, r: PipelineRun, detail: bool = False) -> PipelineRunPublic:
    out = PipelineRunPublic.model_validate(r, from_attributes=True, update={"progress": []})
    out.id = int(r.id or 0)
    if not detail:
        out.spec, out.result = {}, {}
    else:
        out.progress = step.progress_lines(job.run_dir(out.id))
    return out


@router.get("/policy", response_model=PipelinePolicyPublic)
def policy(job: PipelineDep, settings: SettingsDep) -> PipelinePolicyPublic:
    """The retraining policy in force (settings ``EDGEFLEET_PIPELINE_*``)."""
    return PipelinePolicyPublic(
        enabled=settings.pipeline_enabled,
        interval_s=settings.pipeline_interval_s,
        runner=job.runner.name,
        window_s=job.window_s,
        min_device_samples=job.min_device_samples,
        policy=job.config.to_dict(),
        training=job.params.to_dict(),
        bless=job.bless.to_dict(),
    )


@router.get("/decisions", response_model=list[PipelineDecisionPublic], responses=PAGED)
def decisions(
    session: SessionDep,
    page: PageDep,
    model: Annotated[str | None, Query(max_length=128)] = None,
    cohort: Annotated[str | None, Query(max_length=64)] = None,
) -> list[PipelineDecision]:
    """Every decision to retrain or not, newest first, with its evidence."""
    q = select(PipelineDecision).order_by(col(PipelineDecision.id).desc())
    if model:
        q = q.where(PipelineDecision.model == model)
    if cohort:
        q = q.where(PipelineDecision.cohort == cohort)
    return page.rows(session, q)


@router.get("/runs", response_model=list[PipelineRunPublic], responses=PAGED)
def runs(
    session: SessionDep,
    page: PageDep,
    job: PipelineDep,
    model: Annotated[str | None, Query(max_length=128)] = None,
    state_: Annotated[str | None, Query(alias="state", max_length=16)] = None,
) -> list[PipelineRunPublic]:
    """Runs, newest first (``GET /v1/pipeline/runs/{id}`` has the gate, evaluation and lineage)."""
    q = select(PipelineRun).order_by(col(PipelineRun.id).desc())
    if model:
        q = q.where(PipelineRun.model == model)
    if state_:
        q = q.where(PipelineRun.state == state_)
    return [public(job, r) for r in page.rows(session, q)]


@router.get("/runs/{run_id}", response_model=PipelineRunPublic)
def show_run(run_id: RunId, session: SessionDep, job: PipelineDep) -> PipelineRunPublic:
    r = session.get(PipelineRun, run_id)
    if r is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no pipeline run {run_id}")
    return public(job, r, detail=True)


@router.post("/runs", status_code=status.HTTP_201_CREATED, response_model=PipelineRunPublic)
def trigger(body: PipelineRunCreate, request: Request, session: SessionDep, job: PipelineDep, me: Operator) -> PipelineRunPublic:
    """Ask for a run now: the policy still applies (one run at a time per model, cooldown); 409 says why not."""
    if body.cohort != "*" and session.get(Cohort, body.cohort) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no cohort named {body.cohort!r}; give a cohort or * for the fleet")
    try:
        r = job.request(request.app.state.engine, body.model, body.cohort, body.reason, me.name)
    except RunRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return public(job, r, detail=True)
