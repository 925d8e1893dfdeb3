"""Bundle downloads for devices (content-addressed, immutable) and trust roots."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse
from pydantic import BaseModel

from controller.api.deps import BlobsDep, DirectorDep

router = APIRouter(tags=["bundles"])


@router.get("/v1/bundles/{sha256}", response_class=FileResponse)
def download_bundle(sha256: str, blobs: BlobsDep) -> FileResponse:
    path = blobs.local_path(sha256)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no bundle with sha256 {sha256[:64]!r}")
    return FileResponse(path, media_type="application/x-tar", headers={"Cache-Control": "public, max-age=31536000, immutable"})


class TrustPublic(BaseModel):
    director_public_key: str
    director_key_id: str


@router.get("/v1/trust", response_model=TrustPublic)
def trust(director: DirectorDep) -> TrustPublic:
    """Public keys a device pins at provisioning."""
    return TrustPublic(director_public_key=director.public_key_hex, director_key_id=director.key_id)
