"""Experiments: A/B tests and on-device bandits over a cohort (controller/experiments/).

Reading an experiment runs a fresh look (always-valid intervals may be read at
any time); decisions are taken by the leader's job and recorded in the audit log.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from sqlmodel import col, select

from controller.api.deps import DirectorDep, Operator, RegistryDep, RowId, SessionDep, SettingsDep, needs
from controller.api.paging import PAGED, PageDep
from controller.api.schemas import ExperimentAction, ExperimentCreate, ExperimentPublic
from controller.core.roles import Role
from controller.core.tables import Experiment
from controller.experiments import service, state
from controller.experiments.engine import ExperimentEngine

router = APIRouter(prefix="/v1/experiments", tags=["experiments"], dependencies=[needs(Role.VIEWER)])
ExperimentId = RowId


def _engine(request: Request) -> ExperimentEngine:
    return request.app.state.experiments  # type: ignore[no-any-return]


def _get(session: SessionDep, experiment_id: int) -> Experiment:
    exp = session.get(Experiment, experiment_id)
    if exp is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no experiment {experiment_id}")
    return exp


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ExperimentPublic)
def create_experiment(
    body: ExperimentCreate,
    session: SessionDep,
    registry: RegistryDep,
    director: DirectorDep,
    settings: SettingsDep,
    me: Operator,
    request: Request,
) -> Experiment:
    """Start an experiment: devices get their arm (A/B) or every arm and equal weights (bandit), signed and published.

    Without MQTT the signed desired states are written and go out with the next publication.
    """
    spec = service.Spec(
        name=body.name, cohort=body.cohort, model=body.model,
        arms=tuple(service.ArmSpec(a.name, a.version, a.share) for a in body.arms),
        kind=body.kind, control=body.control, primary_metric=body.primary_metric, guardrails=tuple(body.guardrails),
        alpha=body.alpha, tau=body.tau, min_devices=body.min_devices, floor=body.floor,
        auto_promote=body.auto_promote, seed=body.seed, reason=body.reason,
    )  # fmt: skip
    exp, out = service.create(session, spec, by=me, registry=registry, director=director, settings=settings)
    session.commit()
    session.refresh(exp)
    _engine(request).publish(out)
    return exp


@router.get("", response_model=list[ExperimentPublic], responses=PAGED)
def list_experiments(session: SessionDep, page: PageDep) -> list[Experiment]:
    return page.rows(session, select(Experiment).order_by(col(Experiment.id).desc()))


@router.get("/{experiment_id}", response_model=ExperimentPublic)
def show_experiment(experiment_id: ExperimentId, session: SessionDep, request: Request) -> Experiment:
    """The experiment with a fresh look (arms, intervals, SRM check, what the decision would be now) while it runs."""
    exp = _get(session, experiment_id)
    if exp.state in (state.State.RUNNING.value, state.State.PAUSED.value):
        exp.evaluation = _engine(request).look(session, exp).evidence()
        session.expunge(exp)  # shown, not stored: the leader's looks are the record
    return exp


@router.post("/{experiment_id}/actions", response_model=ExperimentPublic)
def act(experiment_id: ExperimentId, body: ExperimentAction, session: SessionDep, me: Operator, request: Request) -> Experiment:
    """pause | resume | stop (a bandit's routing is cleared) | promote ARM (stops if needed; the arm becomes production)."""
    _get(session, experiment_id)
    events: dict[str, state.Event] = {
        "pause": state.Pause(),
        "resume": state.Resume(),
        "stop": state.Stop(body.reason),
        "promote": state.Promote(body.arm),
    }
    if body.action not in events:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"action must be one of {sorted(events)}")
    if body.action == "promote" and not body.arm:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "promote needs the arm to promote")
    try:
        return _engine(request).act(request.app.state.engine, experiment_id, events[body.action], me, body.reason)
    except state.IllegalTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
