"""Dependencies in one place: settings, database session, services, and who may do what.

A route declares the role it needs with one of the aliases below, as a
parameter (``me: Operator``) when it needs the caller, or for a whole router
(``APIRouter(dependencies=[needs(Role.VIEWER)])``). Handlers never check roles
themselves. Wrong role: 403 naming the role needed and the caller's role.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session, select

from controller.core.config import Settings
from controller.core.metrics import Metrics
from controller.core.roles import Role
from controller.core.security import BOOTSTRAP_PRINCIPAL, Principal, hash_token, same_secret
from controller.core.tables import ApiToken
from controller.fleet.director import Director
from controller.release.blobstore import BlobStore
from controller.release.registry import Registry
from controller.telemetry.receiver import ControllerMqtt


def get_settings(request: Request) -> Settings:  # pragma: no mutate block
    return request.app.state.settings  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:  # pragma: no mutate block
    with Session(request.app.state.engine) as session:
        yield session


def get_director(request: Request) -> Director:  # pragma: no mutate block
    return request.app.state.director  # type: ignore[no-any-return]


def get_blobs(request: Request) -> BlobStore:  # pragma: no mutate block
    return request.app.state.blobs  # type: ignore[no-any-return]


def get_mqtt(request: Request) -> ControllerMqtt | None:  # pragma: no mutate block
    return request.app.state.mqtt  # type: ignore[no-any-return]


def get_registry(request: Request) -> Registry:  # pragma: no mutate block
    return request.app.state.registry  # type: ignore[no-any-return]


def get_metrics(request: Request) -> Metrics:  # pragma: no mutate block
    return request.app.state.metrics  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
DirectorDep = Annotated[Director, Depends(get_director)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
# Every integer row id in a path: a 32-bit positive integer (an INTEGER primary key on PostgreSQL and SQLite alike), so
# an id out of range answers 422 instead of reaching the database and failing there.
RowId = Annotated[int, Path(ge=1, le=2**31 - 1, description="row id")]
MqttDep = Annotated["ControllerMqtt | None", Depends(get_mqtt)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

# --- authentication and roles ----------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="API token (the bootstrap admin token or one made with POST /v1/tokens)")
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def current_principal(
    settings: SettingsDep,
    session: SessionDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Resolve the bearer token: the bootstrap admin token, or a stored (hashed) API token."""
    if creds is None or not creds.credentials:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing API token: send 'Authorization: Bearer <token>'", _UNAUTHORIZED
        )
    token = creds.credentials
    if settings.admin_token and same_secret(token, settings.admin_token):
        return Principal(BOOTSTRAP_PRINCIPAL, Role.ADMIN)
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    if row is not None:
        session.expunge(row)  # a plain object from here on: reading it touches no connection
    session.commit()  # the lookup's transaction ends: a route that then waits (e.g. for a body) holds no connection
    if row is None or row.revoked_at is not None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked API token", _UNAUTHORIZED)
    if row.expires_at is not None and _aware(row.expires_at) <= datetime.now(timezone.utc):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "API token expired: ask an admin for a new one", _UNAUTHORIZED)
    return Principal(row.principal, Role(row.role), row.id)


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)  # SQLite returns naive UTC


def authorize(me: Principal, needed: Role) -> Principal:
    """The caller if their role allows ``needed``, else 403 naming both roles (decided per request)."""
    if not me.role.allows(needed):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"this action needs the {needed.value} role; {me.name!r} has the {me.role.value} role",
        )
    return me


def require(needed: Role) -> Callable[..., Principal]:  # pragma: no mutate block
    """A dependency that returns the caller if their role allows ``needed``, else 403."""

    def check(me: Annotated[Principal, Depends(current_principal)]) -> Principal:
        return authorize(me, needed)

    check.__name__ = f"require_{needed.value}"
    return check


def needs(role: Role) -> Any:  # pragma: no mutate block
    """For ``APIRouter(dependencies=[needs(Role.X)])`` and ``@router.get(..., dependencies=[...])``."""
    return Depends(require(role))


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Approver = Annotated[Principal, Depends(require(Role.APPROVER))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
