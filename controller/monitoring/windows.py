"""Read merged telemetry windows for monitoring (the one place monitoring reads aggregates).

Aggregate rows are per writer shard (``controller.telemetry.batch``); a window's
summary is the merge of its shards. A shard whose shape does not merge with the
others (a bundle re-uploaded with other bin edges, say) is left out and counted.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from controller.core.tables import Cohort, Device, TelemetryAggregate
from controller.fleet.cohorts import FLEET, member_ids
from controller.telemetry.aggregate import merge_many
from shared.telemetry import MergeError

log = logging.getLogger(__name__)


@dataclass
class Window:
    version: int
    window_start: int
    window_s: int
    devices: int  # device windows merged
    summary: dict[str, Any]


def load_windows(
    session: Session,
    model: str,
    *,
    cohort: str = FLEET,
    role: str = "production",
    since: int = 0,
    until: int = 2**40,
    version: int | None = None,
) -> list[Window]:
    """Merged windows of one model in one role and cohort, oldest first."""
    q = select(TelemetryAggregate).where(
        TelemetryAggregate.model == model,
        TelemetryAggregate.cohort == cohort,
        TelemetryAggregate.role == role,
        col(TelemetryAggregate.window_start) >= since,
        col(TelemetryAggregate.window_start) < until,
    )
    if version is not None:
        q = q.where(TelemetryAggregate.version == version)
    groups: dict[tuple[int, int], list[TelemetryAggregate]] = defaultdict(list)
    for row in session.exec(q).all():
        groups[(row.window_start, row.version)].append(row)
    out = []
    for (ws, ver), rows in sorted(groups.items()):
        merged = merge_rows([(r.windows, r.summary) for r in rows])
        if merged is not None:
            out.append(Window(ver, ws, rows[0].window_s, merged[0], merged[1]))
    return out


def merge_rows(rows: Sequence[tuple[int, dict[str, Any]]]) -> tuple[int, dict[str, Any]] | None:
    """Merge (windows, summary) pairs; pairs that do not fit the largest are dropped (logged)."""
    if not rows:
        return None
    try:
        return sum(n for n, _ in rows), merge_many([s for _, s in rows])
    except MergeError:
        pass
    ordered = sorted(rows, key=lambda r: -r[0])
    n, acc = ordered[0]
    for m, s in ordered[1:]:
        try:
            acc = merge_many([acc, s])
            n += m
        except MergeError as exc:
            log.warning("monitoring: a telemetry shard does not merge and is left out: %s", exc)
    return n, acc


def merge_windows(windows: Iterable[Window]) -> tuple[int, dict[str, Any]] | None:
    """All windows of one version as one summary (None when there are none)."""
    return merge_rows([(w.devices, w.summary) for w in windows])


def cohort_devices(session: Session, cohort: str) -> set[str] | None:
    """Device ids in ``cohort``; None for the whole fleet (no filter)."""
    if cohort == FLEET:
        return None
    row = session.get(Cohort, cohort)
    if row is None:
        return set()
    return set(member_ids(row, session.exec(select(Device)).all()))


def versions_seen(session: Session, model: str, cohort: str, role: str, since: int) -> list[int]:
    q = (
        select(TelemetryAggregate.version)
        .where(
            TelemetryAggregate.model == model,
            TelemetryAggregate.cohort == cohort,
            TelemetryAggregate.role == role,
            col(TelemetryAggregate.window_start) >= since,
        )
        .distinct()
    )
    return sorted(session.exec(q).all())
