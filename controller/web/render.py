"""Templates (Jinja2, autoescaped: text from devices and operators is never read as markup) and the page helper."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from controller import __version__
from controller.web.auth import WebUser

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["unix"] = lambda t: datetime.fromtimestamp(int(t), timezone.utc).strftime("%Y-%m-%d %H:%M")
templates.env.filters["when"] = lambda t: (
    "-" if t is None else (t.strftime("%Y-%m-%d %H:%M:%S") if isinstance(t, datetime) else str(t)[:19])
)
NAV = [("/ui/", "Fleet"), ("/ui/models", "Models"), ("/ui/telemetry", "Telemetry"), ("/ui/rollouts", "Rollouts")]
NAV += [("/ui/experiments", "Experiments"), ("/ui/drift", "Drift"), ("/ui/audit", "Audit log")]


def page(request: Request, template: str, user: WebUser | None, *, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    context = {"user": user, "nav": NAV, "path": request.url.path, "version": __version__, **ctx}
    return templates.TemplateResponse(request, template, context, status_code=status_code)
