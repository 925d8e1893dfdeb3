"""Per-device windows for running rollouts, written by the ingester beside the cohort aggregates.

A rollout compares candidate devices with baseline devices one device at a time,
which the cohort aggregates (sums over devices) cannot tell apart. So while a
rollout runs, each deduplicated window of a device in its cohort is also kept as
a ``rolloutwindow`` row (role summaries without the feature histograms), in the
same transaction as the aggregates. With no rollout running this costs one
cached query every ``ttl_s``.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, col, select

from controller.core.tables import Rollout, RolloutWindow
from shared.messages import Telemetry

ACTIVE_STATES = ("RUNNING", "PAUSED")
KEPT = ("model", "version", "count", "errors", "samples", "latency_ms", "predictions", "shadow", "labels", "confusion")


class RolloutWindows:
    def __init__(self, ttl_s: float = 2.0) -> None:
        self.ttl_s = ttl_s
        self._loaded = -1e9
        self._by_cohort: dict[str, tuple[int, ...]] = {}

    def active(self, session: Session) -> dict[str, tuple[int, ...]]:
        """Cohort name -> ids of the running or paused rollouts on it (cached for ``ttl_s``)."""
        now = time.monotonic()
        if now - self._loaded > self.ttl_s:
            rows = session.exec(select(Rollout.id, Rollout.cohort).where(col(Rollout.state).in_(ACTIVE_STATES))).all()
            by: dict[str, list[int]] = {}
            for rid, cohort in rows:
                by.setdefault(cohort, []).append(int(rid or 0))
            self._by_cohort = {c: tuple(ids) for c, ids in by.items()}
            self._loaded = now
        return self._by_cohort

    @staticmethod
    def rows(active: dict[str, tuple[int, ...]], msg: Telemetry, cohorts: tuple[str, ...]) -> list[dict[str, Any]]:
        ids = {rid for c in cohorts for rid in active.get(c, ())}
        if not ids:
            return []
        roles = {role: {k: s[k] for k in KEPT if k in s} for role, s in msg.roles.items()}
        return [
            {
                "rollout_id": rid,
                "device_id": msg.device_id,
                "window_start": msg.window_start,
                "window_s": msg.window_s,
                "roles": roles,
            }
            for rid in sorted(ids)
        ]

    @staticmethod
    def write(session: Session, rows: list[dict[str, Any]]) -> None:
        if rows:
            session.execute(insert(RolloutWindow), rows)
