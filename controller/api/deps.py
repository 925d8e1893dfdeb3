"""Dependencies in one place: settings, database session, services, auth."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from controller.blobstore import BlobStore
from controller.core.config import Settings
from controller.director import Director
from controller.mqtt import ControllerMqtt


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine) as session:
        yield session


def get_director(request: Request) -> Director:
    return request.app.state.director  # type: ignore[no-any-return]


def get_blobs(request: Request) -> BlobStore:
    return request.app.state.blobs  # type: ignore[no-any-return]


def get_mqtt(request: Request) -> ControllerMqtt | None:
    return request.app.state.mqtt  # type: ignore[no-any-return]


_bearer = HTTPBearer(auto_error=False)


def require_token(
    settings: Annotated[Settings, Depends(get_settings)],
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if creds is None or not hmac.compare_digest(creds.credentials.encode(), settings.admin_token.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or invalid API token", headers={"WWW-Authenticate": "Bearer"})


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
DirectorDep = Annotated[Director, Depends(get_director)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
MqttDep = Annotated["ControllerMqtt | None", Depends(get_mqtt)]
Authenticated = Depends(require_token)
