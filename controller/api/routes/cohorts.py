"""Cohorts: static device lists and dynamic filters; membership from controller/fleet/cohorts.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status
from sqlmodel import col, select

from controller.api.deps import DirectorDep, MqttDep, Operator, RegistryDep, SessionDep, SettingsDep, needs
from controller.api.paging import PAGED, Page, PageDep, page_params
from controller.api.schemas import AssignmentRequest, CohortCreate, CohortPublic, CohortUpdate
from controller.core import audit
from controller.core.roles import Role
from controller.core.tables import Cohort, Device
from controller.fleet import assignments
from controller.fleet.cohorts import members
from shared.errors import ProtocolError
from shared.messages import validate_role
from shared.topics import validate_device_id

router = APIRouter(prefix="/v1/cohorts", tags=["cohorts"], dependencies=[needs(Role.VIEWER)])
CohortName = Annotated[str, Path(max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]


def public(session: SessionDep, c: Cohort) -> CohortPublic:
    ids = members(session, c)
    return CohortPublic(name=c.name, description=c.description, members=c.members, filter=c.filter, size=len(ids))


def get_cohort(session: SessionDep, name: str) -> Cohort:
    c = session.get(Cohort, name)
    if c is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no cohort named {name!r}")
    return c


def _check_members(ids: list[str]) -> list[str]:
    for d in ids:
        try:
            validate_device_id(d)
        except ProtocolError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"members: {exc}") from None
    return sorted(set(ids))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CohortPublic)
def create_cohort(body: CohortCreate, session: SessionDep, me: Operator) -> CohortPublic:
    if session.get(Cohort, body.name) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"cohort {body.name!r} already exists")
    c = Cohort(
        name=body.name,
        description=body.description,
        members=_check_members(body.members),
        filter=body.filter.model_dump() if body.filter else {},
    )
    session.add(c)
    audit.record(
        session,
        actor=me.name,
        action="cohort.created",
        subject=f"cohort:{c.name}",
        evidence={"members": c.members, "filter": c.filter},
    )
    session.commit()
    return public(session, c)


@router.get("", response_model=list[CohortPublic], responses=PAGED)
def list_cohorts(session: SessionDep, page: PageDep) -> list[CohortPublic]:
    return [public(session, c) for c in page.rows(session, select(Cohort).order_by(col(Cohort.name)))]


@router.get("/{name}", response_model=CohortPublic)
def show_cohort(name: CohortName, session: SessionDep) -> CohortPublic:
    return public(session, get_cohort(session, name))


@router.get("/{name}/members", response_model=list[str], responses=PAGED)
def cohort_members(name: CohortName, session: SessionDep, page: Annotated[Page, page_params(1000, 10_000)]) -> list[str]:
    """Ids of the enrolled devices in the cohort now (static members and filter matches)."""
    return page.slice(members(session, get_cohort(session, name)))


@router.patch("/{name}", response_model=CohortPublic)
def update_cohort(name: CohortName, body: CohortUpdate, session: SessionDep, me: Operator) -> CohortPublic:
    c = get_cohort(session, name)
    before = {"description": c.description, "members": c.members, "filter": c.filter}
    if body.description is not None:
        c.description = body.description
    if body.members is not None:
        c.members = _check_members(body.members)
    if "filter" in body.model_fields_set:
        c.filter = body.filter.model_dump() if body.filter else {}
    session.add(c)
    after = {"description": c.description, "members": c.members, "filter": c.filter}
    audit.record(
        session, actor=me.name, action="cohort.updated", subject=f"cohort:{name}", evidence={"before": before, "after": after}
    )
    session.commit()
    return public(session, c)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_cohort(name: CohortName, session: SessionDep, me: Operator) -> None:
    c = get_cohort(session, name)
    audit.record(
        session,
        actor=me.name,
        action="cohort.deleted",
        subject=f"cohort:{name}",
        evidence={"members": c.members, "filter": c.filter},
    )
    session.delete(c)
    session.commit()


@router.put("/{name}/desired", response_model=list[str])
def assign_cohort(
    name: CohortName,
    body: AssignmentRequest,
    session: SessionDep,
    registry: RegistryDep,
    director: DirectorDep,
    mqtt: MqttDep,
    settings: SettingsDep,
    me: Operator,
) -> list[str]:
    """Assign a version to a role on every current member; returns the device ids."""
    try:
        validate_role(body.role)
    except ProtocolError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    c = get_cohort(session, name)
    mv = registry.assignable(session, body.model, body.version, body.role)
    ids = members(session, c)
    if not ids:
        raise HTTPException(status.HTTP_409_CONFLICT, f"cohort {name!r} has no members")
    if mqtt is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "MQTT is disabled on this controller; cannot publish")
    devices = list(session.exec(select(Device).where(col(Device.id).in_(ids)).order_by(col(Device.id))).all())
    published = assignments.assign(
        session,
        devices=devices,
        mv=mv,
        role=body.role,
        by=me,
        reason=body.reason,
        director=director,
        settings=settings,
        cohort=name,
    )
    session.commit()
    for did, envelope in published:
        mqtt.publish_desired(did, envelope)
    return ids
