"""Console sessions: log in with an API token, kept in an HttpOnly SameSite=Strict cookie.

Every page request authenticates the cookie's token exactly as the API does
(``controller.api.deps.current_principal``: revoked tokens stop working at
once, on every replica). Actions also need a CSRF token: an HMAC of the
session token, sent in the form (``csrf``) or the ``X-CSRF-Token`` header
(htmx), so a page on another site cannot post on the operator's behalf even
if a browser ignored SameSite.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials
from sqlmodel import Session

from controller.api.deps import SessionDep, SettingsDep, current_principal
from controller.core.config import Settings
from controller.core.roles import Role
from controller.core.security import Principal

COOKIE = "edgefleet_session"
SESSION_S = 8 * 3600  # a console session lasts a working day


class LoginRequired(Exception):
    """No valid session: the handler in ``controller.web`` redirects to the login page."""


@dataclass(frozen=True)
class WebUser:
    principal: Principal
    csrf: str

    def can(self, role: Role) -> bool:
        return self.principal.role.allows(role)


def csrf_for(token: str) -> str:
    return hmac.new(token.encode(), b"edgefleet console csrf v1", hashlib.sha256).hexdigest()


def principal_for(token: str, settings: Settings, session: Session) -> Principal | None:
    """The token's principal as the API sees it, or None when the API would answer 401 or the role
    cannot read the console (a scrape-only ``metrics`` token)."""
    if not token:
        return None
    try:
        me = current_principal(settings, session, HTTPAuthorizationCredentials(scheme="Bearer", credentials=token))
    except HTTPException:
        return None
    return me if me.role.allows(Role.VIEWER) else None


def web_user(request: Request, settings: SettingsDep, session: SessionDep) -> WebUser:
    token = request.cookies.get(COOKIE, "")
    me = principal_for(token, settings, session)
    if me is None:
        raise LoginRequired()
    return WebUser(me, csrf_for(token))


User = Annotated[WebUser, Depends(web_user)]


async def check_csrf(request: Request, user: User) -> None:
    sent = request.headers.get("X-CSRF-Token", "")
    if not sent:
        form = await request.form()
        value = form.get("csrf", "")
        sent = value if isinstance(value, str) else ""
    if not hmac.compare_digest(sent, user.csrf):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token; reload the page and try again")


def needs_role(role: Role) -> object:
    """A dependency for console actions: the same role rule as the API, else 403."""

    def check(user: User) -> WebUser:
        if not user.can(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this action needs the {role.value} role; {user.principal.name!r} has the {user.principal.role.value} role",
            )
        return user

    return Depends(check)
