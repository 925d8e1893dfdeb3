"""Rollouts: create, read, and the operator's controls (pause, resume, promote, abort)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from sqlmodel import Session, col, select

from controller.api.deps import Operator, RowId, SessionDep, needs
from controller.api.paging import PAGED, PageDep
from controller.api.schemas import RolloutAction, RolloutCreate, RolloutDecisionPublic, RolloutPublic, RolloutRebase
from controller.core.roles import Role
from controller.core.security import Principal
from controller.core.tables import Rollout, RolloutDecision, RolloutDevice
from controller.rollouts import service, state
from controller.rollouts.engine import Busy, RolloutEngine

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"], dependencies=[needs(Role.VIEWER)])
RolloutId = RowId


def get_rollouts(request: Request) -> RolloutEngine:
    return request.app.state.rollouts  # type: ignore[no-any-return]


EngineDep = Annotated[RolloutEngine, Depends(get_rollouts)]


def public(session: Session, r: Rollout, decisions: bool = False) -> RolloutPublic:
    devices = session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id)).all()
    stage = r.stages[r.stage] if r.stages else {}
    out = RolloutPublic(
        id=r.id or 0,
        cohort=r.cohort,
        model=r.model,
        candidate_version=r.candidate_version,
        baseline_version=r.baseline_version,
        state=r.state,
        stage=r.stage + 1,
        stage_kind=str(stage.get("kind", "")),
        stage_share=float(stage.get("share", 0.0)),
        waiting=r.waiting,
        stage_passed=r.stage_passed,
        reason=r.reason,
        stages=r.stages,
        thresholds=r.thresholds,
        stage_started_at=r.stage_started_at,
        deadline_at=r.deadline_at,
        created_by=r.created_by,
        created_at=r.created_at,
        devices={
            "on_candidate": sum(1 for d in devices if d.arm == "canary" and not d.reverted),
            "reverted": sum(1 for d in devices if d.reverted),
            "skipped_hardware": sum(1 for d in devices if d.arm == "skipped"),
        },
        last_analysis=r.last_analysis,
    )
    if decisions:
        rows = session.exec(
            select(RolloutDecision).where(RolloutDecision.rollout_id == r.id).order_by(col(RolloutDecision.id))
        ).all()
        out.decisions = [RolloutDecisionPublic.model_validate(d, from_attributes=True) for d in rows]
    return out


def _get(session: Session, rollout_id: int) -> Rollout:
    r = session.get(Rollout, rollout_id)
    if r is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rollout {rollout_id}")
    return r


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RolloutPublic)
def create_rollout(body: RolloutCreate, request: Request, session: SessionDep, engine: EngineDep, me: Operator) -> RolloutPublic:
    """Start a rollout: the first stage's devices get the candidate now; the leader analyses each interval."""
    r, out = service.create(
        session,
        engine,
        cohort=body.cohort,
        model=body.model,
        version=body.version,
        by=me,
        baseline_version=body.baseline_version,
        stages=body.stages,
        thresholds=body.thresholds,
        reason=body.reason,
    )
    session.commit()
    engine.publish(out)
    return public(session, r, decisions=True)


@router.get("", response_model=list[RolloutPublic], responses=PAGED)
def list_rollouts(
    session: SessionDep, page: PageDep, state_: Annotated[str | None, Query(alias="state", max_length=16)] = None
) -> list[RolloutPublic]:
    """Newest first; ``state`` filters (RUNNING, PAUSED, HALTED, COMPLETED, ROLLED_BACK)."""
    q = select(Rollout).order_by(col(Rollout.id).desc())
    if state_:
        q = q.where(Rollout.state == state_.upper())
    return [public(session, r) for r in page.rows(session, q)]


@router.get("/{rollout_id}", response_model=RolloutPublic)
def show_rollout(rollout_id: RolloutId, session: SessionDep) -> RolloutPublic:
    """The rollout with every decision and the evidence behind it."""
    return public(session, _get(session, rollout_id), decisions=True)


def _control(make: Callable[[Principal, bool, str], state.Event]) -> Callable[..., RolloutPublic]:
    def handler(
        rollout_id: RolloutId, body: RolloutAction, request: Request, session: SessionDep, engine: EngineDep, me: Operator
    ) -> RolloutPublic:
        r = _get(session, rollout_id)
        mv = engine.s.registry.get(session, r.model, r.candidate_version)
        session.rollback()
        event = make(me, mv.approved_by is not None, body.reason)
        try:
            engine.act(request.app.state.engine, rollout_id, event, me.name, body.reason)
        except (state.IllegalTransition, Busy) as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, f"rollout {rollout_id}: {exc}") from None
        session.expire_all()
        return public(session, _get(session, rollout_id), decisions=True)

    return handler


router.post("/{rollout_id}/pause", response_model=RolloutPublic, summary="Pause: no further stage until resumed")(
    _control(lambda me, _ok, why: state.Pause(me.name, why))
)
router.post("/{rollout_id}/resume", response_model=RolloutPublic, summary="Resume a paused rollout")(
    _control(lambda me, ok, _why: state.Resume(me.name, ok))
)
router.post("/{rollout_id}/promote", response_model=RolloutPublic, summary="Promote to the next stage now")(
    _control(lambda me, ok, _why: state.Promote(me.name, ok))
)
router.post("/{rollout_id}/abort", response_model=RolloutPublic, summary="Abort: every device back on the baseline")(
    _control(lambda me, _ok, why: state.Abort(me.name, why))
)


@router.post("/{rollout_id}/baseline", response_model=RolloutPublic, summary="Name another baseline")
def rebase_rollout(
    rollout_id: RolloutId, body: RolloutRebase, request: Request, session: SessionDep, engine: EngineDep, me: Operator
) -> RolloutPublic:
    """Name the version a failure rolls back to: one the devices may install, not the candidate. A HALTED
    rollout (it had to roll back to a revoked baseline) rolls back to it now; a running or paused one keeps it
    for later (paused for its revoked baseline: then resume)."""
    _get(session, rollout_id)
    session.rollback()
    try:
        engine.rebase(request.app.state.engine, rollout_id, body.version, me.name, body.reason)
    except (state.IllegalTransition, Busy) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"rollout {rollout_id}: {exc}") from None
    session.expire_all()
    return public(session, _get(session, rollout_id), decisions=True)
