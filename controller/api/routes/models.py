"""Model registry: upload bundles, list versions."""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, HTTPException, Request, status
from sqlmodel import select

from controller.api.deps import Authenticated, BlobsDep, SessionDep, SettingsDep
from controller.imagerepo import ImageRepoError  # issue-3 hook
from controller.models import ModelVersion, ModelVersionPublic
from shared import bundle as bundle_fmt

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Authenticated])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelVersionPublic)
async def upload_bundle(request: Request, session: SessionDep, blobs: BlobsDep, settings: SettingsDep) -> ModelVersion:
    """Register a model bundle (the raw bundle file as the request body)."""
    data = await request.body()
    if len(data) > settings.max_bundle_bytes:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"bundle exceeds {settings.max_bundle_bytes} bytes")
    try:
        b = bundle_fmt.read(data)
    except bundle_fmt.BundleError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid bundle: {exc}") from None
    m = b.manifest
    existing = session.exec(select(ModelVersion).where(ModelVersion.name == m.name, ModelVersion.version == m.version)).first()
    sha = hashlib.sha256(data).hexdigest()
    if existing is not None:
        if existing.sha256 == sha:
            return existing  # type: ignore[no-any-return]
        raise HTTPException(status.HTTP_409_CONFLICT, f"{m.name} v{m.version} already exists with different content")
    blobs.put(data)
    mv = ModelVersion(
        name=m.name, version=m.version, label=m.label, runtime=m.runtime, sha256=sha, length=len(data), manifest=m.to_dict()
    )
    # issue-3 hook: list the bundle in the TUF image repository (targets signed by the release keys).
    try:
        request.app.state.imagerepo.release_bundle(
            model=m.name, version=m.version, sha256=sha, length=len(data), runtime=m.runtime, hardware=m.hardware
        )
    except ImageRepoError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"image repository refused the release: {exc}") from None
    session.add(mv)
    session.commit()
    session.refresh(mv)
    return mv


@router.get("", response_model=list[ModelVersionPublic])
def list_versions(session: SessionDep) -> list[ModelVersion]:
    return list(session.exec(select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)).all())  # type: ignore[arg-type]
