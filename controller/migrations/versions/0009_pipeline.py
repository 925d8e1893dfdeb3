"""pipeline runs and retraining decisions

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql import sqltypes

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pipelinerun",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sqltypes.AutoString(length=128), nullable=False),
        sa.Column("cohort", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("trigger", sqltypes.AutoString(length=16), nullable=False),
        sa.Column("state", sqltypes.AutoString(length=16), nullable=False),
        sa.Column("runner", sqltypes.AutoString(length=16), nullable=False),
        sa.Column("reason", sqltypes.AutoString(length=4096), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("dataset_sha256", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=True),
        sa.Column("progress", sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("pipelinerun", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pipelinerun_model"), ["model"], unique=False)
        batch_op.create_index(batch_op.f("ix_pipelinerun_state"), ["state"], unique=False)
    op.create_table(
        "pipelinedecision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sqltypes.AutoString(length=128), nullable=False),
        sa.Column("cohort", sqltypes.AutoString(length=64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("decision", sqltypes.AutoString(length=16), nullable=False),
        sa.Column("trigger", sqltypes.AutoString(length=16), nullable=False),
        sa.Column("reason", sqltypes.AutoString(length=4096), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("actor", sqltypes.AutoString(length=128), nullable=False),
        sa.Column("audit_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("pipelinedecision", schema=None) as batch_op:
        batch_op.create_index("ix_pipelinedecision_model_cohort_at", ["model", "cohort", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pipelinedecision", schema=None) as batch_op:
        batch_op.drop_index("ix_pipelinedecision_model_cohort_at")
    op.drop_table("pipelinedecision")
    with op.batch_alter_table("pipelinerun", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pipelinerun_state"))
        batch_op.drop_index(batch_op.f("ix_pipelinerun_model"))
    op.drop_table("pipelinerun")
