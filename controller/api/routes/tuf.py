"""TUF metadata of the image repository, for devices (public, no token: it is signed)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import FileResponse

from controller.release.imagerepo import ImageRepoService

router = APIRouter(prefix="/v1/tuf", tags=["tuf"])


def get_imagerepo(request: Request) -> ImageRepoService:
    svc = getattr(request.app.state, "imagerepo", None)
    if svc is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this controller has no image repository")
    return svc  # type: ignore[no-any-return]


ImageRepoDep = Annotated[ImageRepoService, Depends(get_imagerepo)]


@router.get("/metadata/{name}", response_class=FileResponse)
def metadata(name: str, svc: ImageRepoDep) -> FileResponse:
    """``<version>.root.json``, ``<version>.targets.json``, ``<version>.snapshot.json`` or ``timestamp.json``."""
    path = svc.repo.metadata_file(name)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no metadata file {name[:80]!r}")
    cache = "no-cache" if name == "timestamp.json" else "public, max-age=31536000, immutable"
    return FileResponse(path, media_type="application/json", headers={"Cache-Control": cache})
