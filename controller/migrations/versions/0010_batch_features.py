"""Batch features: per-device/cohort/fleet values with validity times, and each device's signed list.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql import sqltypes

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batchfeature",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("scope", sqltypes.AutoString(length=200), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("valid_from", sa.Float(), nullable=False),
        sa.Column("valid_to", sa.Float(), nullable=True),
        sa.Column("recorded_at", sa.Float(), nullable=False),
        sa.Column("set_by", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("reason", sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("audit_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("batchfeature", schema=None) as batch_op:
        batch_op.create_index("ix_batchfeature_name_scope_from", ["name", "scope", "valid_from"], unique=False)
        batch_op.create_index(batch_op.f("ix_batchfeature_scope"), ["scope"], unique=False)
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_features", sa.JSON(), server_default="[]", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_column("batch_features")
    with op.batch_alter_table("batchfeature", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batchfeature_scope"))
        batch_op.drop_index("ix_batchfeature_name_scope_from")
    op.drop_table("batchfeature")
