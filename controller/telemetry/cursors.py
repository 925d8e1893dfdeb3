"""Exact dedupe of telemetry windows: per device, the highest seq and a bitmap of the ones below it.

``dedupe`` is pure; ``read_cursors``/``write_cursors`` are the only SQL on ``TelemetryCursor``.
"""

from __future__ import annotations

from sqlalchemy import ARRAY, BigInteger, String, bindparam, func, update
from sqlmodel import Session, col, select

from controller.core.tables import TelemetryCursor

DEDUPE_WINDOW = 62  # seqs below the highest one remembered per device (fits a signed BIGINT)
_MASK = (1 << DEDUPE_WINDOW) - 1


def dedupe(high: int | None, bits: int, seq: int) -> tuple[str, int, int]:
    """Decide one seq against a device's cursor: ("new" | "duplicate" | "stale", high, bits)."""
    if high is None:
        return "new", seq, 1
    if seq > high:
        shift = seq - high
        return "new", seq, ((bits << shift) | 1) & _MASK if shift < DEDUPE_WINDOW else 1
    off = high - seq
    if off >= DEDUPE_WINDOW:
        return "stale", high, bits
    if (bits >> off) & 1:
        return "duplicate", high, bits
    return "new", high, bits | (1 << off)


def read_cursors(session: Session, device_ids: list[str]) -> dict[str, tuple[int, int]]:
    """(high_seq, seen_bits) per device that has a cursor, locked for this transaction (PostgreSQL)."""
    cursors: dict[str, tuple[int, int]] = {}
    tc = TelemetryCursor
    for i in range(0, len(device_ids), 500):
        q = select(tc.device_id, tc.high_seq, tc.seen_bits).where(col(tc.device_id).in_(device_ids[i : i + 500]))
        q = q.order_by(col(tc.device_id)).with_for_update()
        cursors.update({r[0]: (r[1], r[2]) for r in session.execute(q).all()})
    return cursors


_pg_rows = (
    func.unnest(
        bindparam("ids", type_=ARRAY(String)),
        bindparam("highs", type_=ARRAY(BigInteger)),
        bindparam("bits", type_=ARRAY(BigInteger)),
    )
    .table_valued("id", "high", "bits")
    .render_derived()
)
_PG_CURSOR_UPDATE = (
    update(TelemetryCursor)
    .where(col(TelemetryCursor.device_id) == _pg_rows.c.id)
    .values(high_seq=_pg_rows.c.high, seen_bits=_pg_rows.c.bits)
)


def write_cursors(session: Session, cursors: dict[str, tuple[int, int]], state: dict[str, tuple[int | None, int]]) -> None:
    """Existing cursors were read FOR UPDATE (PostgreSQL) or under the write lock (SQLite): plain
    updates. New ones are plain INSERTs, so two replicas creating the same device's cursor conflict
    and the loser retries its batch instead of overwriting. (executemany: a multi-row upsert was
    slower here, its statement is compiled anew for every batch size.)"""
    changed = [(d, h, b) for d, (h, b) in state.items() if d in cursors and cursors[d] != (h, b)]
    if changed and session.get_bind().dialect.name == "postgresql":
        # One statement with three array parameters (the same SQL for every batch size, so the
        # server prepares it once) instead of a round of per-row executemany work in Python.
        ids, highs, bits = zip(*changed, strict=True)
        session.connection().execute(_PG_CURSOR_UPDATE, {"ids": list(ids), "highs": list(highs), "bits": list(bits)})
    elif changed:
        updates = [{"b_id": d, "high": h, "bits": b} for d, h, b in changed]
        stmt = (
            update(TelemetryCursor)
            .where(col(TelemetryCursor.device_id) == bindparam("b_id"))
            .values(high_seq=bindparam("high"), seen_bits=bindparam("bits"))
        )
        session.connection().execute(stmt, updates)
    inserts = [{"device_id": d, "high_seq": h, "seen_bits": b} for d, (h, b) in state.items() if d not in cursors]
    if inserts:
        session.connection().execute(TelemetryCursor.__table__.insert(), inserts)  # type: ignore[attr-defined]
