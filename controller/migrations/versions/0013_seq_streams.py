"""Telemetry dedupe and event uniqueness are per (device, seq stream), not per device (ADR 0080).

A device whose data directory was wiped starts its seq counter again, with a new stream id; its
new seqs are then new. Rows stored before belong to the stream "" (agents that send no stream).
The cursor and gap tables change their primary keys, so they are copied into new tables.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
import sqlmodel.sql.sqltypes as sqltypes
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def _cursor_table(name: str, streams: bool) -> None:
    cols: list[sa.Column[object]] = [sa.Column("device_id", sqltypes.AutoString(length=64), nullable=False)]
    if streams:
        cols.append(sa.Column("stream", sqltypes.AutoString(length=32), nullable=False))
    cols += [sa.Column("high_seq", sa.BigInteger(), nullable=False), sa.Column("seen_bits", sa.BigInteger(), nullable=False)]
    op.create_table(name, *cols, sa.PrimaryKeyConstraint(*(["device_id", "stream"] if streams else ["device_id"])))


def _gap_table(name: str, streams: bool) -> None:
    cols: list[sa.Column[object]] = [sa.Column("device_id", sqltypes.AutoString(length=64), nullable=False)]
    if streams:
        cols.append(sa.Column("stream", sqltypes.AutoString(length=32), nullable=False))
    cols += [
        sa.Column("lo", sa.BigInteger(), nullable=False),
        sa.Column("hi", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    ]
    op.create_table(name, *cols, sa.PrimaryKeyConstraint(*(["device_id", "stream", "lo"] if streams else ["device_id", "lo"])))


def _swap(table: str, make: Callable[[str, bool], None], streams: bool, copy: str) -> None:
    """Copy ``table`` into a new table of the other primary key (``copy``: the SELECT), then put it in its place."""
    with op.batch_alter_table(table, schema=None) as batch_op:
        if table == "telemetrygap":
            batch_op.drop_index("ix_telemetrygap_created_at")
    make(f"{table}_new", streams)
    op.execute(f"INSERT INTO {table}_new {copy}")
    op.drop_table(table)
    op.rename_table(f"{table}_new", table)
    if table == "telemetrygap":
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index("ix_telemetrygap_created_at", ["created_at"], unique=False)


def upgrade() -> None:
    _swap("telemetrycursor", _cursor_table, True, "SELECT device_id, '', high_seq, seen_bits FROM telemetrycursor")
    _swap("telemetrygap", _gap_table, True, "SELECT device_id, '', lo, hi, created_at FROM telemetrygap")
    with op.batch_alter_table("deviceevent", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stream", sqltypes.AutoString(length=32), nullable=False, server_default=""))
        batch_op.drop_index("ux_deviceevent_device_seq")
        batch_op.create_index("ux_deviceevent_device_stream_seq", ["device_id", "stream", "seq"], unique=True)


def downgrade() -> None:
    # Streams fold into one per device again: keep each device's highest cursor and the first copy of an event.
    op.execute(
        "DELETE FROM telemetrycursor WHERE EXISTS (SELECT 1 FROM telemetrycursor t"
        " WHERE t.device_id = telemetrycursor.device_id AND (t.high_seq > telemetrycursor.high_seq"
        " OR (t.high_seq = telemetrycursor.high_seq AND t.stream < telemetrycursor.stream)))"
    )
    _swap("telemetrycursor", _cursor_table, False, "SELECT device_id, high_seq, seen_bits FROM telemetrycursor")
    op.execute("DELETE FROM telemetrygap")  # gaps of several streams overlap; windows that late count as duplicates
    _swap("telemetrygap", _gap_table, False, "SELECT device_id, lo, hi, created_at FROM telemetrygap")
    op.execute("DELETE FROM deviceevent WHERE id NOT IN (SELECT MIN(id) FROM deviceevent GROUP BY device_id, seq)")
    with op.batch_alter_table("deviceevent", schema=None) as batch_op:
        batch_op.drop_index("ux_deviceevent_device_stream_seq")
        batch_op.create_index("ux_deviceevent_device_seq", ["device_id", "seq"], unique=True)
        batch_op.drop_column("stream")
