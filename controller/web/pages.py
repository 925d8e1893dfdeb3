"""Console pages and actions under ``/ui`` (server-rendered; htmx for refreshes and posts)."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import col, select

from controller.api.deps import RegistryDep, SessionDep, SettingsDep
from controller.core.roles import Role
from controller.core.tables import Cohort, Device, ModelVersion
from controller.release.registry import RegistryError
from controller.web import monitor_view, views
from controller.web.auth import COOKIE, SESSION_S, User, WebUser, check_csrf, needs_role, principal_for
from controller.web.render import page

router = APIRouter(include_in_schema=False)
Approver = Annotated[WebUser, needs_role(Role.APPROVER)]
Csrf = Depends(check_csrf)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status.HTTP_302_FOUND)


@router.get("/ui/login")
def login_form(request: Request, next: str = "/ui/") -> HTMLResponse:
    return page(request, "login.html", None, next=_local(next), error="")


@router.post("/ui/login")
def login(
    request: Request,
    settings: SettingsDep,
    session: SessionDep,
    token: Annotated[str, Form(max_length=512)],
    next: Annotated[str, Form(max_length=512)] = "/ui/",
) -> Response:
    me = principal_for(token.strip(), settings, session)
    if me is None:
        err = "That token is unknown or revoked. Ask an admin for one (edgefleet tokens create)."
        return page(request, "login.html", None, status_code=401, next=_local(next), error=err)
    resp = RedirectResponse(_local(next), status.HTTP_303_SEE_OTHER)
    resp.set_cookie(
        COOKIE, token.strip(), max_age=SESSION_S, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/"
    )
    return resp


@router.post("/ui/logout", dependencies=[Csrf])
def logout() -> RedirectResponse:
    resp = RedirectResponse("/ui/login", status.HTTP_303_SEE_OTHER)
    resp.delete_cookie(COOKIE, path="/")
    return resp


@router.get("/ui/")
def fleet(request: Request, session: SessionDep, user: User) -> HTMLResponse:
    return page(request, "overview.html", user, o=views.overview(session), running=views.running)


@router.get("/ui/devices/{device_id}")
def device(request: Request, device_id: str, session: SessionDep, user: User) -> HTMLResponse:
    d = session.get(Device, device_id)
    if d is None:
        return page(request, "missing.html", user, status_code=404, what=f"device {device_id!r} is not enrolled")
    return page(request, "device.html", user, p=views.device_page(session, d))


@router.get("/ui/models")
def models(request: Request, session: SessionDep, user: User, error: str = "") -> HTMLResponse:
    return page(request, "models.html", user, families=views.registry(session), error=error, Role=Role)


@router.post("/ui/models/{name}/{version}/approve", dependencies=[Csrf])
def approve(
    name: str,
    version: int,
    session: SessionDep,
    registry: RegistryDep,
    user: Approver,
    reason: Annotated[str, Form(min_length=1, max_length=4096)],
) -> RedirectResponse:
    """The same rule as ``POST /v1/approvals``: approver role, not the registrant, audited with the reason."""
    try:
        registry.approve(session, name, version, user.principal, reason)
        session.commit()
    except RegistryError as exc:
        return RedirectResponse(f"/ui/models?error={quote(str(exc))}", status.HTTP_303_SEE_OTHER)
    return RedirectResponse(f"/ui/models#{name}-v{version}", status.HTTP_303_SEE_OTHER)


@router.get("/ui/audit")
def audit(request: Request, session: SessionDep, user: User, subject: Annotated[str, Query(max_length=256)] = "") -> HTMLResponse:
    return page(request, "audit.html", user, entries=views.audit_entries(session, subject or None), subject=subject)


@router.get("/ui/telemetry")
def telemetry(
    request: Request,
    session: SessionDep,
    user: User,
    model: Annotated[str, Query(max_length=128)] = "",
    cohort: Annotated[str, Query(max_length=64)] = "*",
) -> HTMLResponse:
    names = list(session.exec(select(ModelVersion.name).distinct().order_by(col(ModelVersion.name))).all())
    cohorts = ["*", *session.exec(select(Cohort.name).order_by(col(Cohort.name))).all()]
    model = model or (names[0] if names else "")
    data: dict[str, Any] = views.latency_series(session, model, cohort) if model else {"x": [], "series": [], "counts": []}
    return page(
        request,
        "telemetry.html",
        user,
        names=names,
        cohorts=cohorts,
        model=model,
        cohort=cohort,
        data=_script_json(data),
    )


@router.get("/ui/rollouts")
def rollouts(request: Request, session: SessionDep, user: User) -> HTMLResponse:
    return page(request, "rollouts.html", user, rows=views.rollouts(session))


@router.get("/ui/drift")
def drift(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: User,
    model: Annotated[str, Query(max_length=128)] = "",
    cohort: Annotated[str, Query(max_length=64)] = "*",
) -> HTMLResponse:
    names = list(session.exec(select(ModelVersion.name).distinct().order_by(col(ModelVersion.name))).all())
    cohorts = ["*", *session.exec(select(Cohort.name).order_by(col(Cohort.name))).all()]
    p = monitor_view.drift_page(session, model or (names[0] if names else ""), cohort, int(settings.telemetry_window_s))
    return page(request, "drift.html", user, p=p, names=names, cohorts=cohorts)


@router.get("/ui/{section}")
def not_here_yet(request: Request, section: str, user: User) -> HTMLResponse:
    """Experiments: no console page yet; the page points to the CLI and the API."""
    if section != "experiments":
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no console page {section!r}")
    return page(request, "pending.html", user, section=section)


def _local(url: str) -> str:
    """Only same-site paths after login (no open redirect)."""
    return url if url.startswith("/ui/") and not url.startswith("//") else "/ui/"


def _script_json(data: Any) -> str:
    """JSON safe inside a <script type="application/json"> element."""
    return json.dumps(data).replace("<", "\\u003c")
