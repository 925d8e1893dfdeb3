"""Monitoring: aggregated telemetry windows, and Prometheus ``/metrics``."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlmodel import col, select

from controller.api.deps import MetricsDep, SessionDep, needs
from controller.api.paging import PAGED, Page, page_params
from controller.api.schemas import TelemetryWindow
from controller.core.roles import Role
from controller.core.tables import TelemetryAggregate
from controller.fleet.cohorts import FLEET
from controller.telemetry.aggregate import merge_many
from shared.telemetry import MergeError, percentile_ms

router = APIRouter(tags=["monitoring"], dependencies=[needs(Role.VIEWER)])
# /metrics needs only the scrape-only ``metrics`` role (or any role above it): Prometheus gets a token that
# opens nothing else (ADR 0069).
metrics_router = APIRouter(tags=["monitoring"], dependencies=[needs(Role.METRICS)])


def _pct(buckets: list[int], q: float) -> float | None:
    v = percentile_ms(buckets, q) if buckets else None
    return v if v is not None and math.isfinite(v) else None


@router.get("/v1/telemetry", response_model=list[TelemetryWindow], responses=PAGED)
def telemetry(
    session: SessionDep,
    page: Annotated[Page, page_params(1000, 10_000)],
    model: Annotated[str, Query(max_length=128)],
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    role: Annotated[str | None, Query(max_length=40)] = None,
    cohort: Annotated[str, Query(max_length=64, description="cohort name, or * for the whole fleet")] = FLEET,
    since: Annotated[int, Query(ge=0, le=2**40, description="unix seconds")] = 0,
    until: Annotated[int, Query(ge=0, le=2**40, description="unix seconds")] = 2**40,
) -> list[TelemetryWindow]:
    """Merged summaries per (model, version, role, cohort, window), oldest first, with latency percentiles."""
    q = select(TelemetryAggregate).where(
        TelemetryAggregate.model == model,
        TelemetryAggregate.cohort == cohort,
        col(TelemetryAggregate.window_start) >= since,
        col(TelemetryAggregate.window_start) < until,
    )
    if version is not None:
        q = q.where(TelemetryAggregate.version == version)
    if role is not None:
        q = q.where(TelemetryAggregate.role == role)
    groups: dict[tuple[int, str, int, int], list[TelemetryAggregate]] = defaultdict(list)
    for row in session.exec(q).all():
        groups[(row.version, row.role, row.window_start, row.window_s)].append(row)
    out = []
    for (ver, rl, ws, wlen), rows in page.slice(sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1]))):
        try:
            summary: dict[str, Any] = merge_many([r.summary for r in rows])
        except MergeError:  # shards disagree on a shape: show the largest shard rather than fail
            summary = max(rows, key=lambda r: r.windows).summary
        lat = summary.get("latency_ms")
        buckets = lat if isinstance(lat, list) and all(isinstance(x, int) for x in lat) else []
        out.append(
            TelemetryWindow(
                model=model,
                version=ver,
                role=rl,
                cohort=cohort,
                window_start=ws,
                window_s=wlen,
                windows=sum(r.windows for r in rows),
                count=int(summary.get("count", 0)) if isinstance(summary.get("count"), int) else 0,
                errors=int(summary.get("errors", 0)) if isinstance(summary.get("errors"), int) else 0,
                p50_ms=_pct(buckets, 0.5),
                p95_ms=_pct(buckets, 0.95),
                p99_ms=_pct(buckets, 0.99),
                summary=summary,
            )
        )
    return out


@metrics_router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(m: MetricsDep) -> Response:
    """Prometheus text format (counters for ingestion, batches, HTTP)."""
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
