"""Read back from a controller's database which telemetry windows it merged (the dedupe cursor and its gaps)."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from controller.telemetry.cursors import DEDUPE_WINDOW


def merged_seqs(url: str, device_id: str) -> set[int]:
    """Seqs the dedupe state says were merged for ``device_id`` (empty before its first window)."""
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            q = text("SELECT high_seq, seen_bits FROM telemetrycursor WHERE device_id = :d")
            row = c.execute(q, {"d": device_id}).first()
            gaps = c.execute(text("SELECT lo, hi FROM telemetrygap WHERE device_id = :d"), {"d": device_id}).all()
    finally:
        eng.dispose()
    if row is None:
        return set()
    high, bits = int(row[0]), int(row[1])
    in_gap = {x for lo, hi in gaps for x in range(max(lo, 0), hi + 1)}
    merged = {high - i for i in range(DEDUPE_WINDOW) if (bits >> i) & 1 and high - i >= 0}
    merged |= {x for x in range(0, high - DEDUPE_WINDOW + 1) if x not in in_gap}
    return merged


def aggregated_windows(url: str) -> int:
    """Windows counted in the fleet-wide aggregates (a window with summaries counts once per role)."""
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            n = c.execute(text("SELECT coalesce(sum(windows), 0) FROM telemetryaggregate WHERE cohort = '*'")).scalar()
    finally:
        eng.dispose()
    return int(n or 0)
