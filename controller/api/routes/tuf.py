"""TUF metadata of the image repository, for devices (public, no token: it is signed), and the
pending targets change that offline release keys sign (``edgefleet release sign``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status

from controller.api.deps import Approver, Viewer
from controller.api.schemas import PendingTargetsPublic, ReleaseSignature, TufRolePublic, TufStatusPublic
from controller.release.imagerepo import ImageRepoError
from controller.release.imageservice import ImageRepoService
from controller.release.offline import PendingView, SignatureRefused

router = APIRouter(prefix="/v1/tuf", tags=["tuf"])


def get_imagerepo(request: Request) -> ImageRepoService:
    svc = getattr(request.app.state, "imagerepo", None)
    if svc is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this controller has no image repository")
    return svc  # type: ignore[no-any-return]


ImageRepoDep = Annotated[ImageRepoService, Depends(get_imagerepo)]


@router.get("/metadata/{name}", response_class=Response)
def metadata(name: str, svc: ImageRepoDep) -> Response:
    """``<version>.root.json``, ``<version>.targets.json``, ``<version>.snapshot.json`` or ``timestamp.json``."""
    data = svc.read(name)
    if data is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no metadata file {name[:80]!r}")
    cache = "no-cache" if name == "timestamp.json" else "public, max-age=31536000, immutable"
    return Response(data, media_type="application/json", headers={"Cache-Control": cache})


def _public(v: PendingView) -> PendingTargetsPublic:
    return PendingTargetsPublic(
        version=v.version,
        targets=v.metadata,
        changes=v.changes,
        signed_by=v.signed_by,
        threshold=v.threshold,
        published=v.published,
    )


@router.get("/pending", response_model=PendingTargetsPublic)
def pending(svc: ImageRepoDep, me: Viewer) -> PendingTargetsPublic:
    """The targets change waiting for release-key signatures (404 when nothing waits)."""
    v = svc.pending()
    if v is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no targets change is waiting for signatures")
    return _public(v)


@router.get("/status", response_model=TufStatusPublic)
def tuf_status(svc: ImageRepoDep, me: Viewer) -> TufStatusPublic:
    """Version and expiry of each published role; with offline release keys, a warning while targets near expiry."""
    exp = svc.expiries()
    pending = svc.pending()
    return TufStatusPublic(
        release_signing="offline" if svc.release is None else "online",
        roles={r: TufRolePublic(version=e.version, expires_at=e.expires_at, expires_in_s=e.expires_in_s) for r, e in exp.items()},
        targets_warning=svc.targets_warning(exp),
        pending_version=None if pending is None else pending.version,
    )


@router.post("/pending/signatures", response_model=PendingTargetsPublic)
def sign_pending(body: ReleaseSignature, svc: ImageRepoDep, me: Approver) -> PendingTargetsPublic:
    """Add one release-key signature; at the threshold the change is published to devices."""
    try:
        return _public(svc.add_signature(body.version, body.keyid, body.sig))
    except SignatureRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except ImageRepoError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"image repository refused the signature: {exc}") from None
