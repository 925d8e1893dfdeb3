"""Alert state in the database, its transitions into the audit log, metrics and a webhook.

An alert is a ``MonitorAlert`` row identified by ``key`` (what fires: e.g.
``drift/digits/*/production/v3``). :meth:`Alerts.observe` is idempotent: the
same condition seen again updates the open alert's evidence and writes nothing
else; only transitions (opened, resolved) are audited — in the caller's
transaction, so the state and its record commit together — and counted. The
webhook (optional) receives each transition as JSON after the commit
(:meth:`Alerts.deliver`); a failing webhook is logged and counted, never retried
into the database transaction.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlmodel import Session, col, select

from controller.core import audit
from controller.core.metrics import Metrics
from controller.core.tables import MonitorAlert

log = logging.getLogger(__name__)
ACTOR = "monitor"


@dataclass
class Condition:
    key: str
    kind: str  # drift | slo | quality
    model: str
    cohort: str
    severity: str
    summary: str
    evidence: dict[str, Any]


@dataclass
class Alerts:
    metrics: Metrics
    webhook_url: str | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)  # transitions to deliver after commit

    def observe(self, session: Session, cond: Condition, firing: bool, now: float | None = None) -> MonitorAlert | None:
        """Record that ``cond`` holds (``firing``) or not; returns the open alert, if any."""
        t = time.time() if now is None else now
        row = session.exec(select(MonitorAlert).where(MonitorAlert.key == cond.key, MonitorAlert.state == "firing")).first()
        if firing and row is None:
            row = MonitorAlert(
                key=cond.key,
                kind=cond.kind,
                model=cond.model,
                cohort=cond.cohort,
                severity=cond.severity,
                state="firing",
                summary=cond.summary[:1024],
                evidence=cond.evidence,
                opened_at=t,
                updated_at=t,
            )
            session.add(row)
            self._transition(session, row, "firing")
        elif firing and row is not None:
            row.evidence, row.summary, row.updated_at, row.severity = cond.evidence, cond.summary[:1024], t, cond.severity
            session.add(row)
        elif not firing and row is not None:
            row.state, row.resolved_at, row.updated_at = "resolved", t, t
            row.evidence = {**row.evidence, "resolved_by": cond.evidence}
            session.add(row)
            self._transition(session, row, "resolved")
            return None
        return row  # type: ignore[no-any-return]

    def _transition(self, session: Session, row: MonitorAlert, state: str) -> None:
        action = "monitor.alert.fired" if state == "firing" else "monitor.alert.resolved"
        audit.record(session, actor=ACTOR, action=action, subject=row.key, reason=row.summary, evidence=row.evidence)
        self.metrics.alert_transitions.labels(row.kind, state).inc()
        self.pending.append(
            {
                "state": state,
                "key": row.key,
                "kind": row.kind,
                "model": row.model,
                "cohort": row.cohort,
                "severity": row.severity,
                "summary": row.summary,
                "evidence": row.evidence,
                "opened_at": row.opened_at,
                "resolved_at": row.resolved_at,
            }
        )

    def refresh_gauges(self, session: Session) -> None:
        counts: dict[tuple[str, str], int] = {}
        for kind, sev in session.exec(
            select(MonitorAlert.kind, MonitorAlert.severity).where(col(MonitorAlert.state) == "firing")
        ).all():
            counts[(kind, sev)] = counts.get((kind, sev), 0) + 1
        for kind in ("drift", "slo", "quality"):
            for sev in ("page", "ticket"):
                self.metrics.alerts_firing.labels(kind, sev).set(counts.get((kind, sev), 0))

    def deliver(self, timeout_s: float = 5.0) -> int:
        """POST the transitions recorded since the last call to the webhook; returns how many were delivered."""
        items, self.pending = self.pending, []
        if not self.webhook_url or not items:
            return 0
        delivered = 0
        with httpx.Client(timeout=timeout_s) as client:
            for item in items:
                try:
                    client.post(self.webhook_url, json=item).raise_for_status()
                    delivered += 1
                except httpx.HTTPError as exc:
                    self.metrics.webhook_failures.inc()
                    log.warning("alert webhook %s failed for %s: %s", self.webhook_url, item["key"], exc)
        return delivered
