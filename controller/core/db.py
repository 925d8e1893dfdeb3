"""Database engine, migrations and sessions. SQLite is the embedded default; PostgreSQL in production.

The schema is owned by Alembic (``controller/migrations/``); :func:`migrate`
runs every pending migration on start-up, under an advisory lock on
PostgreSQL so replicas starting together do not race.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event, text
from sqlmodel import create_engine

from controller.core import tables  # noqa: F401  (registers tables)

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_LOCK_ID = 0x6564676566  # "edgef"


def make_engine(url: str, *, immediate: bool = False) -> Engine:
    """An engine. ``immediate`` (SQLite only): every transaction starts with BEGIN IMMEDIATE, taking
    the write lock before its first read, for writers that read then write (the telemetry batches)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _rec):  # type: ignore[no-untyped-def]
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            if immediate:
                conn.isolation_level = None  # pysqlite would BEGIN only at the first write

        if immediate:

            @event.listens_for(engine, "begin")
            def _begin(conn):  # type: ignore[no-untyped-def]
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the database schema to the latest migration."""
    cfg = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_ID})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def init_db(engine: Engine) -> None:
    migrate(engine)
