"""Pruning ``rolloutwindow``: per-device windows are kept while an analysis may read them, then for a while.

The analysis of a running or paused rollout reads only the windows of its
current stage (``window_start >= stage_started_at``, see ``evidence.observe``),
so nothing an open rollout needs is ever deleted. Everything else (earlier
stages, finished rollouts, rollouts deleted since) goes once it is older than
the retention (``EDGEFLEET_ROLLOUT_WINDOW_RETENTION_S``); the decisions keep
the numbers that were compared, in ``rolloutdecision`` and the audit log.
The leader runs :func:`prune` as the job ``rollouts.windows.prune``.
"""

from __future__ import annotations

from sqlalchemy import delete
from sqlmodel import Session, col, select

from controller.core.tables import Rollout, RolloutWindow
from controller.rollouts.engine import ACTIVE


def prune(session: Session, now: float, retention_s: float) -> int:
    """Delete the windows no open rollout's analysis needs that started before ``now - retention_s``; returns how many."""
    cutoff = now - retention_s
    open_stage = {
        rid: started
        for rid, started in session.exec(select(Rollout.id, Rollout.stage_started_at).where(col(Rollout.state).in_(ACTIVE))).all()
    }
    stmt = delete(RolloutWindow).where(col(RolloutWindow.window_start) < cutoff)
    if open_stage:
        stmt = stmt.where(col(RolloutWindow.rollout_id).not_in(list(open_stage)))
    n = int(session.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]
    for rid, started in open_stage.items():  # an open rollout keeps its current stage's windows, however old
        res = session.execute(
            delete(RolloutWindow).where(
                col(RolloutWindow.rollout_id) == rid,
                col(RolloutWindow.window_start) < min(cutoff, started),
            )
        )
        n += int(res.rowcount or 0)  # type: ignore[attr-defined]
    return n
