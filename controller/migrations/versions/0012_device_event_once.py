"""A device event is stored once per (device, seq): agents send events until a controller acknowledges them (ADR 0078).

Copies stored before (the broker's QoS 1 redelivery) are removed, keeping the first.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM deviceevent WHERE id NOT IN (SELECT MIN(id) FROM deviceevent GROUP BY device_id, seq)")
    with op.batch_alter_table("deviceevent", schema=None) as batch_op:
        batch_op.create_index("ux_deviceevent_device_seq", ["device_id", "seq"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("deviceevent", schema=None) as batch_op:
        batch_op.drop_index("ux_deviceevent_device_seq")
