"""One error shape for every 4xx/5xx: RFC 9457 problem details (``application/problem+json``).

Members: ``type`` (``about:blank``: the status says it all), ``title`` (the
status phrase), ``status``, ``detail`` (one human sentence: what was wrong and,
where useful, what to do), ``instance`` (the request path) and, for request
validation errors, ``errors``: one item per field with ``field`` and
``problem``. Clients that read only ``detail`` keep working.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.api.schemas import FieldProblem, Problem

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


class ProblemResponse(JSONResponse):
    media_type = MEDIA_TYPE


def problem(status: int, detail: str, instance: str, errors: list[FieldProblem] | None = None) -> Problem:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return Problem(title=title, status=status, detail=detail, instance=instance, errors=errors)


def respond(p: Problem, headers: dict[str, str] | None = None) -> ProblemResponse:
    return ProblemResponse(p.model_dump(exclude_none=True), status_code=p.status, headers=headers)


def field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "tags", 0)`` -> ``tags[0]``; ``("query", "limit")`` -> ``limit`` (where a field came from is noise)."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header", "cookie") else loc)
    name = ""
    for p in parts:
        name += f"[{p}]" if isinstance(p, int) else (f".{p}" if name else str(p))
    return name or (str(loc[0]) if loc else "request")


def validation_problems(errors: list[dict[str, Any]]) -> list[FieldProblem]:
    out = []
    for e in errors:
        loc = list(e.get("loc", ()))
        msg = str(e.get("msg", "invalid"))
        out.append(FieldProblem(field=field_name(loc), problem=msg, loc=jsonable_encoder(loc), type=str(e.get("type", ""))))
    return out


def install(app: FastAPI) -> None:
    """Handlers that turn every error into a problem, and an OpenAPI document that says so."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> ProblemResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return respond(problem(exc.status_code, detail, request.url.path), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> ProblemResponse:
        items = validation_problems(list(exc.errors()))
        detail = "; ".join(f"{i.field}: {i.problem}" for i in items) or "invalid request"
        return respond(problem(422, detail, request.url.path, items))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> ProblemResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return respond(problem(500, "internal error; the controller log has the details", request.url.path))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = _problem_media_type(spec)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _problem_media_type(spec: dict[str, Any]) -> dict[str, Any]:
    """Error responses are documented as ``application/problem+json`` (FastAPI files them under application/json)."""
    for path in spec.get("paths", {}).values():
        for op in path.values():
            for code, resp in op.get("responses", {}).items():
                content = resp.get("content", {})
                if code[0] in "45" and "application/json" in content:
                    content[MEDIA_TYPE] = content.pop("application/json")
    return spec


__all__ = ["MEDIA_TYPE", "HTTPException", "Problem", "install", "problem", "respond"]
