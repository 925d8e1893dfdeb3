"""Model registry: upload bundles, versions, lineage, aliases, revoke.

The rules live in ``controller/release/registry.py``; these handlers translate HTTP.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlmodel import col, select

from controller.api.deps import Approver, Operator, RegistryDep, SessionDep, SettingsDep, needs
from controller.api.paging import PAGED, PageDep
from controller.api.schemas import AliasRequest, ModelSummary, ModelVersionDetail, ModelVersionPublic, ReasonRequest
from controller.core.roles import Role
from controller.core.tables import ModelVersion
from controller.release.registry import NotFound, Registry

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[needs(Role.VIEWER)])
Name = Annotated[str, Path(max_length=128, pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$")]
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]
AliasName = Annotated[str, Path(max_length=64, pattern=r"^[a-z][a-z0-9_-]{0,63}$")]

_BUNDLE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "the bundle file (tar with manifest.json and the model)",
    }
}


def detail(mv: ModelVersion) -> ModelVersionDetail:
    m = mv.manifest
    return ModelVersionDetail(
        **ModelVersionPublic.model_validate(mv).model_dump(),
        lineage=m.get("lineage", {}),
        latency_budget_ms=float(m.get("latency_budget_ms", 0.0)),
        hardware=m.get("hardware", {}),
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelVersionPublic, openapi_extra=_BUNDLE_BODY)
async def upload_bundle(
    request: Request, response: Response, session: SessionDep, registry: RegistryDep, settings: SettingsDep, me: Operator
) -> ModelVersion:
    """Register a model bundle (the raw bundle file as the request body).

    Refused unless the manifest validates, the version is greater than every
    earlier version of the name, and the golden vectors reproduce when the
    controller runs the model. Uploading identical bytes again returns the
    existing version (200).
    """
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > settings.max_bundle_bytes:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"bundle exceeds {settings.max_bundle_bytes} bytes")
    mv, created = await run_in_threadpool(registry.register, session, bytes(data), me)
    session.commit()
    session.refresh(mv)
    if not created:
        response.status_code = status.HTTP_200_OK
    return mv


@router.get("", response_model=list[ModelVersionPublic], responses=PAGED)
def list_versions(session: SessionDep, page: PageDep) -> list[ModelVersion]:
    """Every registered version, by name then version."""
    return page.rows(session, select(ModelVersion).order_by(col(ModelVersion.name), col(ModelVersion.version)))


@router.get("/{name}", response_model=ModelSummary)
def show_model(name: Name, session: SessionDep) -> ModelSummary:
    versions = session.exec(select(ModelVersion).where(ModelVersion.name == name).order_by(col(ModelVersion.version))).all()
    if not versions:
        raise NotFound(f"no model named {name!r}")
    return ModelSummary(
        name=name,
        latest=versions[-1].version,
        floor=Registry.floor(session, name),
        aliases=Registry.aliases(session, name),
        versions=[ModelVersionPublic.model_validate(v) for v in versions],
    )


@router.get("/{name}/versions/{version}", response_model=ModelVersionDetail)
def show_version(name: Name, version: Version, session: SessionDep) -> ModelVersionDetail:
    return detail(Registry.get(session, name, version))


@router.get("/{name}/versions/{version}/lineage", response_model=list[ModelVersionDetail], responses=PAGED)
def lineage(name: Name, version: Version, session: SessionDep, page: PageDep) -> list[ModelVersionDetail]:
    """The version and its registered ancestors (lineage.parent_version), newest first."""
    return [detail(mv) for mv in page.slice(Registry.lineage(session, name, version))]


@router.get("/{name}/aliases/{alias}", response_model=ModelVersionDetail)
def resolve_alias(name: Name, alias: AliasName, session: SessionDep) -> ModelVersionDetail:
    version = Registry.aliases(session, name).get(alias)
    if version is None:
        raise NotFound(f"model {name!r} has no alias {alias!r}")
    return detail(Registry.get(session, name, version))


@router.put("/{name}/aliases/{alias}", response_model=ModelSummary)
def set_alias(
    name: Name, alias: AliasName, body: AliasRequest, session: SessionDep, registry: RegistryDep, me: Operator
) -> ModelSummary:
    """Point an alias at a version; ``production`` needs an approved version."""
    registry.set_alias(session, name, alias, body.version, me, body.reason)
    session.commit()
    return show_model(name, session)


@router.delete("/{name}/aliases/{alias}", response_model=ModelSummary)
def delete_alias(name: Name, alias: AliasName, session: SessionDep, registry: RegistryDep, me: Operator) -> ModelSummary:
    registry.delete_alias(session, name, alias, me, "")
    session.commit()
    return show_model(name, session)


@router.post("/{name}/versions/{version}/revoke", response_model=ModelSummary)
def revoke(
    name: Name, version: Version, body: ReasonRequest, session: SessionDep, registry: RegistryDep, me: Approver
) -> ModelSummary:
    """Revoke a version: it can no longer be assigned and leaves the signed targets (devices refuse it); the
    floor rises over revoked versions at the bottom, so older versions stay installable (ADR 0073)."""
    registry.revoke(session, name, version, me, body.reason)
    session.commit()
    return show_model(name, session)
