"""What the drift page shows: drift per version against the manifest's reference, SLOs and monitoring alerts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from controller.core.tables import MonitorAlert, SloObjective
from controller.monitoring import service
from controller.monitoring.jobs import evaluate_slo

TOP_FEATURES = 12


@dataclass
class DriftPage:
    model: str
    cohort: str
    versions: list[service.VersionDrift] = field(default_factory=list)
    error: str = ""
    slos: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[MonitorAlert] = field(default_factory=list)

    def top(self, vd: service.VersionDrift) -> list[Any]:
        """The most shifted features first (by PSI), at most TOP_FEATURES."""
        return sorted(vd.report.features, key=lambda f: f.psi, reverse=True)[:TOP_FEATURES]


def drift_page(session: Session, model: str, cohort: str, window_s: int) -> DriftPage:
    page = DriftPage(model, cohort)
    if model:
        try:
            page.versions = service.drift(session, service.Scope(model, cohort))
        except service.NotFound as exc:
            page.error = str(exc)
    end = int(time.time() // window_s) * window_s
    q = select(SloObjective).order_by(col(SloObjective.name))
    if model:
        q = q.where(SloObjective.model == model)
    for o in session.exec(q).all():
        ev = evaluate_slo(session, o, end, window_s)
        page.slos.append({"name": o.name, "kind": o.kind, "cohort": o.cohort, "target": o.target, "firing": ev.firing,
                          "severity": ev.severity if ev.firing else "", "summary": ev.summary})  # fmt: skip
    aq = select(MonitorAlert).order_by(col(MonitorAlert.id).desc()).limit(20)
    if model:
        aq = aq.where(MonitorAlert.model == model)
    page.alerts = list(session.exec(aq).all())
    return page
