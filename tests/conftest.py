"""Shared fixtures: a private Mosquitto, databases, real int8 model bundles.

No mocks of the broker or the database: integration tests get a real
Mosquitto started from a generated config on a free port, and SQLite (plus
PostgreSQL when EDGEFLEET_TEST_DATABASE_URL is set), each test isolated.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import Engine, text

from firmware_sim.mosquitto import MosquittoProcess

# The machine is shared and noisy: no per-example deadlines, no slowness health check.
settings.register_profile("edgefleet", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("edgefleet")

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _find_postgres() -> tuple[str, str]:
    """The PostgreSQL URL for database tests and a line saying why: set, found at the default address, or absent.

    ``EDGEFLEET_TEST_DATABASE_URL`` wins (``none`` turns PostgreSQL off); otherwise a server answering on
    127.0.0.1:5432 is used, its ``test`` database created if missing.
    """
    env = os.environ.get("EDGEFLEET_TEST_DATABASE_URL")
    if env and env.lower() != "none":
        return env, f"database tests: SQLite and PostgreSQL at {env} (EDGEFLEET_TEST_DATABASE_URL)"
    if env:
        return "", "database tests: SQLite only (EDGEFLEET_TEST_DATABASE_URL=none)"
    try:
        import psycopg
    except ImportError:
        return "", "database tests: SQLite ONLY: psycopg is not installed; PostgreSQL-only code is NOT tested."
    try:
        psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=2").close()
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            return "", (
                "database tests: SQLite ONLY: no PostgreSQL answers on 127.0.0.1:5432 "
                f"({' '.join(str(exc).split())[-120:]}); PostgreSQL-only code is NOT tested. "
                "Start one or set EDGEFLEET_TEST_DATABASE_URL."
            )
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=2", autocommit=True) as c:
            c.execute("CREATE DATABASE test")
    return DEFAULT_PG_URL, f"database tests: SQLite and PostgreSQL at {DEFAULT_PG_URL} (found on the default address)"


PG_URL, PG_NOTE = _find_postgres()
DB_KINDS = ["sqlite", "postgres"] if PG_URL else ["sqlite"]


def pytest_report_header() -> str:
    return PG_NOTE


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(PG_NOTE, yellow=not PG_URL, bold=not PG_URL)


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


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs an entry point (``agent.cli.main``) installs log handlers on pytest's captured
    stream; put the root logger back so later tests never write to a closed stream."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
