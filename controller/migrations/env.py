"""Alembic environment: run by ``controller.core.db.migrate`` on start-up, or by the alembic CLI.

The connection comes from ``config.attributes["connection"]`` when called from
code, otherwise from ``EDGEFLEET_DATABASE_URL``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

from controller.core import tables  # noqa: F401  (registers tables)

target_metadata = SQLModel.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(os.environ.get("EDGEFLEET_DATABASE_URL", "sqlite:///./edgefleet-data/controller.db"))
    with engine.connect() as conn:
        _run(conn)
