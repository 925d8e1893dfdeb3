"""Bundle downloads for devices (content-addressed, immutable) and trust roots.

Bundles are not secret by default (integrity comes from the signed metadata);
with ``EDGEFLEET_BUNDLE_AUTH=true`` a download needs a device credential
(``shared.device_auth``) from any enrolled, unrevoked device.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import FileResponse
from pydantic import BaseModel

from controller.api.deps import BlobsDep, DirectorDep, SessionDep, SettingsDep
from controller.identity.device_auth import verify_request
from shared.device_auth import DeviceAuthError

router = APIRouter(tags=["bundles"])


@router.get("/v1/bundles/{sha256}", response_class=FileResponse)
def download_bundle(sha256: str, blobs: BlobsDep, request: Request, settings: SettingsDep, session: SessionDep) -> FileResponse:
    if settings.bundle_auth:
        try:
            verify_request(session, None, request.headers.get("authorization"), "GET", request.url.path, b"")
        except DeviceAuthError as exc:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "EdgefleetDevice"}) from None
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
