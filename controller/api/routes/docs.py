"""API documentation served by the controller itself: Swagger UI (``swagger-ui-dist`` 5 from the npm registry,
vendored under ``controller/api/static/swagger/``: no CDN, so ``/docs`` works on an air-gapped controller) and
JSON Schemas under ``/v1/schemas/``."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, status
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

router = APIRouter(tags=["docs"])
API = Path(__file__).resolve().parents[1]
SCHEMAS = {"manifest": API / "manifest.schema.json"}
SWAGGER = API / "static" / "swagger"  # swagger-ui-dist 5.35.0 (Apache-2.0): bundle, css, favicon, LICENSE, NOTICE


@cache
def _schema(name: str) -> dict[str, Any]:
    return json.loads(SCHEMAS[name].read_text())  # type: ignore[no-any-return]


@router.get("/v1/schemas/{name}.json", response_class=JSONResponse, responses={200: {"content": {"application/schema+json": {}}}})
def schema(name: str) -> JSONResponse:
    """A JSON Schema (draft 2020-12): ``manifest`` is the bundle's ``manifest.json``."""
    if name not in SCHEMAS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no schema {name!r}; there is {sorted(SCHEMAS)}")
    return JSONResponse(_schema(name), media_type="application/schema+json")


def install(app: FastAPI) -> None:
    """``/docs`` with its assets at ``/docs/static`` (FastAPI's own ``/docs`` and ``/redoc`` load from a CDN; disabled)."""
    app.mount("/docs/static", StaticFiles(directory=SWAGGER), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon-32x32.png",
        )
