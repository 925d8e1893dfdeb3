"""Exact dedupe of telemetry windows: per device and seq stream, the highest seq and a bitmap of the ones below it.

A stream (ADR 0080) is one run of a device's seq counter: an agent whose counter starts again
(its data directory was wiped) sends a new random stream id, and its seqs are decided against a
cursor of their own, so they can never be taken for the old stream's (nor change what the old
stream's cursor and gaps say). Agents that send no stream all have the stream "".

Seqs that slide below the bitmap without having arrived are kept as ranges in
``TelemetryGap`` (``gaps_left``). A window more than ``DEDUPE_WINDOW`` seqs below the
highest ("stale" for the bitmap: it arrives long after newer ones) is new exactly when
its seq is in a gap (``claim_gap``), so it is stored once and a repeat is a duplicate.

``dedupe`` and ``gaps_left`` are pure; the other functions are the only SQL on
``TelemetryCursor`` and ``TelemetryGap``. Callers hold the stream's cursor
row lock (or SQLite's write lock), so one stream's late seqs are decided by one writer at a time.
"""

from __future__ import annotations

from sqlalchemy import ARRAY, BigInteger, String, bindparam, delete, func, update
from sqlmodel import Session, col, select

from controller.core.tables import TelemetryCursor, TelemetryGap

DEDUPE_WINDOW = 62  # seqs below the highest one remembered per stream (fits a signed BIGINT)
_MASK = (1 << DEDUPE_WINDOW) - 1
Stream = tuple[str, str]  # (device_id, stream id): what a cursor and its gaps belong to


def dedupe(high: int | None, bits: int, seq: int) -> tuple[str, int, int]:
    """Decide one seq against its stream's cursor: ("new" | "duplicate" | "stale", high, bits)."""
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


def decide(state: dict[Stream, tuple[int | None, int]], key: Stream, seq: int, gaps: list[tuple[Stream, int, int]]) -> str:
    """Decide ``seq`` of stream ``key`` against ``state`` (the cursors of a batch, updated in place):
    "new" | "duplicate" | "stale" (below the bitmap: new exactly when ``claim_gap`` finds it). Seqs
    that leave the bitmap unseen are appended to ``gaps``. Only ``key``'s cursor is read or changed:
    a stream's seqs, however far back they go, say nothing about another stream's."""
    prev_high, prev_bits = state.get(key, (None, 0))
    verdict, high, bits = dedupe(prev_high, prev_bits, seq)
    if verdict == "new":
        if prev_high is None or seq > prev_high:
            gaps.extend((key, lo, hi) for lo, hi in gaps_left(prev_high, prev_bits, seq))
        state[key] = (high, bits)
    return verdict


def read_cursors(session: Session, device_ids: list[str]) -> dict[Stream, tuple[int, int]]:
    """(high_seq, seen_bits) per stream of these devices that has a cursor, locked for this transaction (PostgreSQL).

    Every stream of a device is read (a device has a few: one per wipe of its data directory), so
    the statement stays one per 500 devices, whatever streams the batch names."""
    cursors: dict[Stream, tuple[int, int]] = {}
    tc = TelemetryCursor
    for i in range(0, len(device_ids), 500):
        q = select(tc.device_id, tc.stream, tc.high_seq, tc.seen_bits).where(col(tc.device_id).in_(device_ids[i : i + 500]))
        q = q.order_by(col(tc.device_id), col(tc.stream)).with_for_update()
        cursors.update({(r[0], r[1]): (r[2], r[3]) for r in session.execute(q).all()})
    return cursors


_pg_rows = (
    func.unnest(
        bindparam("ids", type_=ARRAY(String)),
        bindparam("streams", type_=ARRAY(String)),
        bindparam("highs", type_=ARRAY(BigInteger)),
        bindparam("bits", type_=ARRAY(BigInteger)),
    )
    .table_valued("id", "stream", "high", "bits")
    .render_derived()
)
_PG_CURSOR_UPDATE = (
    update(TelemetryCursor)
    .where(col(TelemetryCursor.device_id) == _pg_rows.c.id, col(TelemetryCursor.stream) == _pg_rows.c.stream)
    .values(high_seq=_pg_rows.c.high, seen_bits=_pg_rows.c.bits)
)


def write_cursors(session: Session, cursors: dict[Stream, tuple[int, int]], state: dict[Stream, tuple[int | None, int]]) -> None:
    """Existing cursors were read FOR UPDATE (PostgreSQL) or under the write lock (SQLite): plain
    updates. New ones are plain INSERTs, so two replicas creating the same device's cursor conflict
    and the loser retries its batch instead of overwriting. (executemany: a multi-row upsert was
    slower here, its statement is compiled anew for every batch size.)"""
    changed = [(k[0], k[1], h, b) for k, (h, b) in state.items() if k in cursors and cursors[k] != (h, b)]
    if changed and session.get_bind().dialect.name == "postgresql":
        # One statement with four array parameters (the same SQL for every batch size, so the
        # server prepares it once) instead of a round of per-row executemany work in Python.
        ids, streams, highs, bits = zip(*changed, strict=True)
        args = {"ids": list(ids), "streams": list(streams), "highs": list(highs), "bits": list(bits)}
        session.connection().execute(_PG_CURSOR_UPDATE, args)
    elif changed:
        updates = [{"b_id": d, "b_stream": st, "high": h, "bits": b} for d, st, h, b in changed]
        stmt = (
            update(TelemetryCursor)
            .where(col(TelemetryCursor.device_id) == bindparam("b_id"), col(TelemetryCursor.stream) == bindparam("b_stream"))
            .values(high_seq=bindparam("high"), seen_bits=bindparam("bits"))
        )
        session.connection().execute(stmt, updates)
    inserts = [
        {"device_id": k[0], "stream": k[1], "high_seq": h, "seen_bits": b} for k, (h, b) in state.items() if k not in cursors
    ]
    if inserts:
        session.connection().execute(TelemetryCursor.__table__.insert(), inserts)  # type: ignore[attr-defined]


def gaps_left(high: int | None, bits: int, seq: int) -> list[tuple[int, int]]:
    """Seqs that drop below the bitmap unseen when ``seq`` becomes the highest, as inclusive ranges."""
    if high is None:
        return [(0, seq - DEDUPE_WINDOW)] if seq >= DEDUPE_WINDOW else []
    if seq <= high:
        return []
    k = seq - high
    top = min(DEDUPE_WINDOW - 1, high)  # bitmap positions below seq 0 never existed
    missing = [high - i for i in range(top, max(0, DEDUPE_WINDOW - k) - 1, -1) if not (bits >> i) & 1]
    ranges: list[tuple[int, int]] = []
    for x in missing:  # ascending
        if ranges and ranges[-1][1] == x - 1:
            ranges[-1] = (ranges[-1][0], x)
        else:
            ranges.append((x, x))
    if high + 1 <= seq - DEDUPE_WINDOW:  # never inside the bitmap at all
        lo, hi = high + 1, seq - DEDUPE_WINDOW
        if ranges and ranges[-1][1] == lo - 1:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    return ranges


def add_gaps(session: Session, gaps: list[tuple[Stream, int, int]], now: float) -> None:
    if gaps:
        rows = [{"device_id": k[0], "stream": k[1], "lo": lo, "hi": hi, "created_at": now} for k, lo, hi in gaps]
        session.connection().execute(TelemetryGap.__table__.insert(), rows)  # type: ignore[attr-defined]


def claim_gap(session: Session, key: Stream, seq: int) -> bool:
    """True (and the gap split around ``seq``) if ``seq`` of this stream had not arrived when it left the bitmap."""
    tg = TelemetryGap
    device_id, stream = key
    q = select(tg).where(tg.device_id == device_id, tg.stream == stream, col(tg.lo) <= seq, col(tg.hi) >= seq)
    row = session.exec(q).first()
    if row is None:
        return False
    lo, hi, created = row.lo, row.hi, row.created_at
    session.delete(row)
    session.flush()
    for a, b in ((lo, seq - 1), (seq + 1, hi)):
        if a <= b:
            session.add(TelemetryGap(device_id=device_id, stream=stream, lo=a, hi=b, created_at=created))
    session.flush()
    return True


def prune_gaps(session: Session, older_than: float) -> int:
    """Forget gaps made before ``older_than``: windows that late are counted as duplicates."""
    res = session.execute(delete(TelemetryGap).where(col(TelemetryGap.created_at) < older_than))
    return int(res.rowcount)  # type: ignore[attr-defined]
