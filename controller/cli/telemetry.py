"""``edgefleet telemetry``: merged telemetry windows per model, version, role and cohort."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rich.table import Table

from controller.cli.common import DEFAULT_URL, JsonOpt, TokenOpt, UrlOpt, call_pages, out


def telemetry(
    model: str,
    version: int | None = None,
    role: str | None = None,
    cohort: str = "*",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Aggregated telemetry windows for a model (fleet-wide or per cohort)."""
    params: dict[str, Any] = {"model": model, "cohort": cohort}
    params.update({k: v for k, v in (("version", version), ("role", role)) if v is not None})
    rows = call_pages(url, token, "/v1/telemetry", params)
    t = Table("window", "version", "role", "devices·windows", "inferences", "errors", "p50 ms", "p95 ms", "p99 ms")
    for r in rows:
        t.add_row(
            datetime.fromtimestamp(r["window_start"], timezone.utc).isoformat(),
            str(r["version"]),
            r["role"],
            str(r["windows"]),
            str(r["count"]),
            str(r["errors"]),
            *(f"{r[k]:.3g}" if r[k] is not None else "-" for k in ("p50_ms", "p95_ms", "p99_ms")),
        )
    out(rows, as_json, t)
