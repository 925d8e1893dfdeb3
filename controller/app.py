"""Application factory: nothing is built at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import BaseModel

from controller import __version__, identity
from controller.api.routes import bundles, capture, devices, enrolment, models, tuf
from controller.blobstore import BlobStore
from controller.core.config import Settings
from controller.core.db import init_db, make_engine
from controller.director import Director
from controller.imagerepo import ImageRepoService  # issue-3 hook
from controller.ingest import Ingestor
from controller.mqtt import ControllerMqtt

log = logging.getLogger(__name__)


class Health(BaseModel):
    status: str
    version: str
    mqtt_connected: bool


def create_app(settings: Settings) -> FastAPI:
    engine = make_engine(settings.database_url)
    init_db(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        mqtt = app.state.mqtt
        if mqtt is not None:
            mqtt.start()
        try:
            yield
        finally:
            if mqtt is not None:
                mqtt.stop()
            engine.dispose()

    app = FastAPI(title="edgefleet controller", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.blobs = BlobStore(settings.blob_dir)
    app.state.director = Director.from_file(settings.director_key_path, create=settings.environment == "development")
    app.state.mqtt = (
        ControllerMqtt(settings.broker_host, settings.broker_port, Ingestor(engine), tls=identity.mqtt_tls_context(settings))
        if settings.mqtt_enabled
        else None
    )
    app.state.imagerepo = ImageRepoService.open(settings.data_dir)  # TUF image repository
    identity.install(app, settings, engine)
    for r in (models.router, devices.router, bundles.router, tuf.router, capture.router, enrolment.router):
        app.include_router(r)

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        m = app.state.mqtt
        return Health(status="ok", version=__version__, mqtt_connected=bool(m and m.connected.is_set()))

    return app
