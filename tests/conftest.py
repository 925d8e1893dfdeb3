"""Shared fixtures: a private Mosquitto, databases, real int8 model bundles.

No mocks of the broker or the database: integration tests get a real
Mosquitto started from a generated config on a free port, and SQLite (plus
PostgreSQL when EDGEFLEET_TEST_DATABASE_URL is set), each test isolated.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import Engine, text

from firmware_sim.mosquitto import MosquittoProcess

# The machine is shared and noisy: no per-example deadlines, no slowness health check.
settings.register_profile("edgefleet", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("edgefleet")

PG_URL = os.environ.get("EDGEFLEET_TEST_DATABASE_URL", "")
DB_KINDS = ["sqlite", "postgres"] if PG_URL else ["sqlite"]


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    """One private broker per test session."""
    broker = MosquittoProcess(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(params=DB_KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL for one test: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/test.db"
        return
    from sqlalchemy import create_engine

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    from controller.core.db import init_db, make_engine

    eng = make_engine(database_url)
    init_db(eng)
    yield eng
    eng.dispose()


_BUNDLES: dict[tuple[str, int, int], bytes] = {}


@pytest.fixture(scope="session")
def make_bundle() -> Callable[..., bytes]:
    """Factory for real int8 ONNX bundles, cached per (name, version, seed)."""
    from firmware_sim.modelgen import make_onnx_bundle

    def make(version: int = 1, name: str = "digits", seed: int = 0) -> bytes:
        key = (name, version, seed)
        if key not in _BUNDLES:
            _BUNDLES[key] = make_onnx_bundle(version=version, name=name, seed=seed, epochs=60 + version)
        return _BUNDLES[key]

    return make


@pytest.fixture(scope="session")
def onnx_bundle(make_bundle: Callable[..., bytes]) -> bytes:
    return make_bundle(1)
