"""The Alembic migrations create exactly the schema controller/core/tables.py describes."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

pytestmark = [pytest.mark.integration]


def test_migrations_match_the_models(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    assert diff == [], f"controller/core/tables.py and controller/migrations/ differ; add a migration: {diff}"


def test_migrating_twice_is_a_no_op(engine):
    from alembic.script import ScriptDirectory

    from controller.core.db import alembic_config, migrate

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    migrate(engine)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head
