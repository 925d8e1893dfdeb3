"""Per-device windows for active experiments, written by the ingester beside the cohort aggregates.

An experiment compares arms with the device as the unit, which the cohort
aggregates (sums over devices) cannot give. So while an experiment is active,
each deduplicated window of a device in its cohort is also kept as
``experimentwindow`` rows: one per role that serves the experiment's model
(``production`` for an A/B test, ``arm-*`` for a bandit), with the few sums the
statistics need. With no experiment active this costs one cached query every
``ttl_s``.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, col, select

from controller.core.tables import Experiment, ExperimentWindow
from shared.messages import Telemetry
from shared.telemetry import LATENCY_EDGES_MS, LATENCY_RATIO

ACTIVE_STATES = ("RUNNING", "PAUSED", "DECIDED")
_BUCKET_MS = (*LATENCY_EDGES_MS, LATENCY_EDGES_MS[-1] * LATENCY_RATIO)  # the overflow bucket counts at one step above

Active = dict[str, tuple[tuple[int, str, str], ...]]  # cohort -> (experiment id, kind, model)


def latency_sum_ms(buckets: list[int]) -> float:
    """Summed latency estimated from the histogram (each call at its bucket's upper edge)."""
    return float(sum(n * _BUCKET_MS[i] for i, n in enumerate(buckets) if n))


class ExperimentWindows:
    def __init__(self, ttl_s: float = 2.0) -> None:
        self.ttl_s = ttl_s
        self._loaded = -1e9
        self._by_cohort: Active = {}

    def active(self, session: Session) -> Active:
        """Cohort name -> active experiments on it (cached for ``ttl_s``)."""
        now = time.monotonic()
        if now - self._loaded > self.ttl_s:
            rows = session.exec(
                select(Experiment.id, Experiment.cohort, Experiment.kind, Experiment.model).where(
                    col(Experiment.state).in_(ACTIVE_STATES)
                )
            ).all()
            by: dict[str, list[tuple[int, str, str]]] = {}
            for eid, cohort, kind, model in rows:
                by.setdefault(cohort, []).append((int(eid or 0), kind, model))
            self._by_cohort = {c: tuple(v) for c, v in by.items()}
            self._loaded = now
        return self._by_cohort

    @staticmethod
    def rows(active: Active, msg: Telemetry, cohorts: tuple[str, ...]) -> list[dict[str, Any]]:
        exps = {e for c in cohorts for e in active.get(c, ())}
        out = []
        for eid, kind, model in sorted(exps):
            for role, s in msg.roles.items():
                wanted = role == "production" if kind == "ab" else role.startswith("arm-")
                if not wanted or s.get("model") != model:
                    continue
                labels = s.get("labels") or {}
                out.append(
                    {
                        "experiment_id": eid,
                        "device_id": msg.device_id,
                        "window_start": int(msg.window_start),
                        "role": role,
                        "model": model,
                        "version": int(s["version"]),
                        "count": int(s.get("count", 0)),
                        "errors": int(s.get("errors", 0)),
                        "labels": int(labels.get("count", 0)),
                        "correct": int(labels.get("correct", 0)),
                        "latency_ms_sum": latency_sum_ms(s.get("latency_ms") or []),
                    }
                )
        return out

    @staticmethod
    def write(session: Session, rows: list[dict[str, Any]]) -> None:
        if rows:
            session.execute(insert(ExperimentWindow), rows)
