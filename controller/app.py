"""Application factory: nothing is built at import time.

Routers are registered in one list (``ROUTERS``); a new resource adds its
module there. Registry rule violations (``controller.registry.RegistryError``)
become HTTP errors in one handler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response, status
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from controller import __version__, web
from controller.api import problems
from controller.api.routes import (
    approvals,
    audit,
    bundles,
    capture,
    cohorts,
    devices,
    docs,
    enrolment,
    experiments,
    features,
    models,
    monitoring,
    pipeline,
    rollouts,
    telemetry,
    tokens,
    tuf,
)
from controller.api.schemas import Problem
from controller.core.config import Settings
from controller.core.db import init_db, make_engine
from controller.core.leader import Leader
from controller.core.metrics import Metrics
from controller.experiments.engine import ExperimentEngine
from controller.experiments.engine import Services as ExperimentServices
from controller.features import delivery as features_delivery
from controller.fleet.director import Director
from controller.fleet.gauges import FleetCollector
from controller.fleet.refresh import refresh_desired, refresh_interval_s
from controller.fleet.revocation import RevocationSweep
from controller.identity import wiring as identity
from controller.monitoring.jobs import MonitorJob
from controller.pipeline.compaction import Report as CompactionReport
from controller.pipeline.job import CompactionJob, PipelineJob
from controller.pipeline.register import rollout_starter
from controller.release.blobstore import open_blob_store
from controller.release.gauges import TufExpiryCollector
from controller.release.imageservice import ImageRepoService
from controller.release.registry import Registry, RegistryError
from controller.rollouts import retention as rollout_retention
from controller.rollouts.engine import RolloutEngine, Services
from controller.rollouts.service import RolloutError
from controller.telemetry.batch import TelemetryIngest
from controller.telemetry.cursors import prune_gaps
from controller.telemetry.guard import LoopState
from controller.telemetry.ingest import Ingestor
from controller.telemetry.receiver import ControllerMqtt

log = logging.getLogger(__name__)

ROUTERS = [
    models.router,
    features.router,
    approvals.router,
    devices.router,
    cohorts.router,
    audit.router,
    telemetry.router,
    telemetry.metrics_router,
    tokens.router,
    bundles.router,
    tuf.router,
    capture.router,
    enrolment.router,
    monitoring.router,
    monitoring.labels_router,
    rollouts.router,
    experiments.router,
    pipeline.router,
    docs.router,
]
_KINDS = ("status", "events", "telemetry")
# Documented on every operation so clients (and the schemathesis test) know the error shapes.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing, unknown or revoked API token"},
    403: {"model": Problem, "description": "the token's role does not allow this"},
    404: {"model": Problem, "description": "no such resource"},
    409: {"model": Problem, "description": "refused by a rule (e.g. not approved, revoked, below the floor)"},
    422: {"model": Problem, "description": "invalid request (``errors`` lists each field and its problem)"},
}


class Ready(BaseModel):
    ready: bool
    database: bool
    mqtt_connected: bool


class Health(BaseModel):
    status: str  # ok | degraded (answered with 503: the MQTT receive loop died or is stuck)
    version: str
    mqtt_connected: bool
    mqtt_receive: str  # running | stalled | dead | not_started | disabled
    replica: str
    leader: bool  # this replica holds the leader lease
    leader_replica: str | None  # who holds it, as last seen
    leader_term: int


def create_app(settings: Settings) -> FastAPI:
    if (warning := settings.public_url_warning()) is not None:
        log.warning("%s", warning)
    director = Director.from_settings(settings)  # shared secret: refused before anything else starts when missing
    engine = make_engine(settings.database_url)
    init_db(engine)
    metrics = Metrics()
    metrics.registry.register(FleetCollector(engine))
    batches = TelemetryIngest(
        engine,
        metrics,
        window_s=settings.telemetry_window_s,
        batch_max=settings.ingest_batch_max,
        max_age_s=settings.telemetry_max_age_s,
        max_ahead_s=settings.telemetry_max_ahead_s,
    )

    leader = Leader(engine, identity=settings.replica_id, lease_s=settings.leader_lease_s)

    def _leader_changed(leading: bool, term: int) -> None:
        metrics.leader.set(int(leading))
        metrics.leader_term.set(term)

    leader.on_change.append(_leader_changed)
    monitor = MonitorJob(
        metrics,
        settings.telemetry_window_s,
        drift_windows=settings.monitor_drift_windows,
        settle_windows=settings.monitor_settle_windows,
        webhook_url=settings.monitor_webhook_url,
    )
    leader.add_job("monitor", settings.monitor_interval_s, monitor)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        mqtt = app.state.mqtt
        if mqtt is not None:
            batches.start()
            mqtt.start()
        leader.start()
        try:
            yield
        finally:
            leader.stop()
            if mqtt is not None:
                batches.stop()  # flush and acknowledge what was taken, then leave the broker
                mqtt.stop()
            engine.dispose()

    app = FastAPI(title="edgefleet controller", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.blobs = open_blob_store(
        settings.blob_store,
        engine,
        settings.blob_cache_dir,
        legacy_dir=settings.data_dir / "bundles",
        bucket=settings.s3_bucket,
        prefix=settings.s3_prefix,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
    )
    app.state.registry = Registry(app.state.blobs)
    app.state.director = director
    app.state.telemetry = batches
    app.state.leader = leader  # concerns register their periodic jobs with leader.add_job
    app.state.monitor = monitor
    app.state.mqtt = (
        ControllerMqtt(
            settings.broker_host,
            settings.broker_port,
            Ingestor(engine, metrics, batches),
            on_malformed=lambda kind: metrics.count(kind if kind in _KINDS else "other", "malformed"),
            client_id=settings.mqtt_client_id or f"edgefleet-controller-{leader.identity}",
            share_group=settings.mqtt_share_group,
            tls=identity.mqtt_tls_context(settings),
            on_callback_error=lambda name: metrics.callback_errors.labels(name).inc(),
            stall_s=settings.mqtt_stall_s,
        )
        if settings.mqtt_enabled
        else None
    )
    if app.state.mqtt is not None:
        metrics.watch_received(leader.identity, lambda: app.state.mqtt.received)
        metrics.watch_acks(app.state.mqtt.acks.counts, lambda: app.state.mqtt.acks.pubacks_dropped)
    try:
        imagerepo = app.state.imagerepo = ImageRepoService.from_settings(settings, engine)  # TUF image repository
    except Exception:
        engine.dispose()
        raise
    metrics.registry.register(TufExpiryCollector(imagerepo))
    app.state.registry.hooks.append(imagerepo.on_release_change)  # registered/revoked -> signed (or pending) targets
    app.state.registry.gates.append(imagerepo.assign_gate)  # not assignable before the release keys signed

    def _refresh_tuf(ctx: object) -> None:
        imagerepo.refresh()

    def _refresh_desired(ctx: object) -> None:
        m = app.state.mqtt
        if m is not None and m.connected.is_set():
            refresh_desired(engine, director, settings, m.publish_desired)

    def _prune_gaps(ctx: object) -> None:
        with Session(engine) as session:
            prune_gaps(session, time.time() - settings.telemetry_late_horizon_s)
            session.commit()

    leader.add_job("tuf.refresh", imagerepo.refresh_interval_s(), _refresh_tuf)
    leader.add_job("telemetry.gaps.prune", 3600, _prune_gaps)
    leader.add_job("desired.refresh", refresh_interval_s(settings), _refresh_desired)

    def _reconcile_features(ctx: object) -> None:
        m = app.state.mqtt
        if m is not None and m.connected.is_set():
            features_delivery.reconcile(engine, director, settings, m.publish_desired)

    leader.add_job("features.reconcile", refresh_interval_s(settings), _reconcile_features)
    publish = app.state.mqtt.publish_desired if app.state.mqtt is not None else None
    publish_all = app.state.mqtt.publish_desired_all if app.state.mqtt is not None else None
    app.state.rollouts = RolloutEngine(Services(director, settings, app.state.registry, publish_all))
    leader.add_job("rollouts", settings.rollout_interval_s, app.state.rollouts.job)
    watch_s = settings.rollout_watch_interval_s
    if watch_s is None:
        watch_s = max(0.5, settings.rollout_interval_s / 4)
    if watch_s > 0:
        leader.add_job("rollouts.watch", watch_s, app.state.rollouts.watch)
    app.state.registry.hooks.append(app.state.rollouts.on_release_change)  # a revoked candidate rolls back at once

    def _prune_rollout_windows(ctx: object) -> None:
        with Session(engine) as session:
            rollout_retention.prune(session, time.time(), settings.rollout_window_retention_s)
            session.commit()

    leader.add_job("rollouts.windows.prune", min(3600.0, settings.rollout_window_retention_s / 4), _prune_rollout_windows)
    app.state.experiments = ExperimentEngine(ExperimentServices(app.state.director, settings, app.state.registry, publish))
    app.state.registry.hooks.append(app.state.experiments.on_release_change)  # an arm's version revoked: it stops
    sweep = RevocationSweep(director, settings, app.state.registry, publish_all, app.state.rollouts.devices_held)
    app.state.registry.hooks.append(sweep.on_release_change)  # every other device on a revoked version moves off it
    leader.add_job("experiments", settings.experiment_interval_s, app.state.experiments.job)
    app.state.pipeline = PipelineJob.from_settings(settings, app.state.registry)
    app.state.pipeline.start_rollout = rollout_starter(app.state.rollouts)
    # Finishes runs and hands approved ones over; decides when to retrain only with EDGEFLEET_PIPELINE_ENABLED.
    leader.add_job("pipeline", settings.pipeline_interval_s, app.state.pipeline.job)
    # Merges the small sample Parquet files of closed or crowded partitions (ADR 0081).
    app.state.compaction = CompactionJob.from_settings(settings, app.state.pipeline)

    def _compaction_metrics(rep: CompactionReport) -> None:
        metrics.compacted_files.labels("in").inc(rep.inputs)
        metrics.compacted_files.labels("out").inc(rep.outputs)
        metrics.compacted_rows.inc(rep.rows)

    app.state.compaction.on_report = _compaction_metrics
    leader.add_job("pipeline.compact", settings.pipeline_compact_interval_s, app.state.compaction.job)
    metrics.receive_running.set_function(lambda: float(_receive_state(app) in (LoopState.RUNNING, None)))
    identity.install(app, settings, engine)
    for r in ROUTERS:
        app.include_router(r, responses=ERROR_RESPONSES)

    problems.install(app)
    docs.install(app)
    web.install(app)

    @app.exception_handler(RegistryError)
    async def registry_error(request: Request, exc: RegistryError) -> problems.ProblemResponse:
        return problems.respond(problems.problem(exc.status, str(exc), request.url.path))

    @app.exception_handler(RolloutError)
    async def rollout_error(request: Request, exc: RolloutError) -> problems.ProblemResponse:
        return problems.respond(problems.problem(exc.status, str(exc), request.url.path))

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.http_requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.http_seconds.labels(request.method, route).observe(time.perf_counter() - started)
        return response

    @app.get("/readyz", response_model=Ready, tags=["health"], responses={503: {"model": Ready}})
    def readyz(response: Response) -> Ready:
        """Ready for traffic: the database answers and (when MQTT is on) the broker session is up."""
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            database = True
        except SQLAlchemyError:
            database = False
        m = app.state.mqtt
        mqtt_ok = m is None or m.connected.is_set()
        if not (database and mqtt_ok):
            response.status_code = 503
        return Ready(ready=database and mqtt_ok, database=database, mqtt_connected=mqtt_ok)

    @app.get("/healthz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    def healthz(response: Response) -> Health:
        m = app.state.mqtt
        connected = bool(m and m.connected.is_set())
        metrics.mqtt_connected.set(1 if connected else 0)
        receive = _receive_state(app)
        healthy = receive in (LoopState.RUNNING, LoopState.NOT_STARTED, None)
        if not healthy:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        ls = leader.status()
        return Health(
            status="ok" if healthy else "degraded",
            version=__version__,
            mqtt_connected=connected,
            mqtt_receive="disabled" if receive is None else receive.value,
            replica=leader.identity,
            leader=ls.is_leader,
            leader_replica=ls.holder,
            leader_term=ls.term,
        )

    return app


def _receive_state(app: FastAPI) -> LoopState | None:
    m = app.state.mqtt
    return None if m is None else m.loop_state()  # type: ignore[no-any-return]
