"""The leader's monitor job: drift checks and SLO burn rates into alerts and metrics.

Every ``monitor_interval_s`` the leader:

1. for every model seen in production telemetry in the last day, in the whole
   fleet and every cohort with telemetry, merges the latest
   ``monitor_drift_windows`` complete windows per version and checks them for
   drift against the manifest's reference (``service.drift``); dataset drift
   opens a ``drift`` alert with the drifted features' statistics as evidence,
   no drift resolves it;
2. evaluates every ``SloObjective`` with its burn-rate rules over complete
   windows; a firing rule opens an ``slo`` alert (the page rule's severity wins);
3. refreshes the gauges, commits, then delivers transitions to the webhook.

The job is idempotent (alert state is in the database, keyed), so a new
leader repeating a tick does no harm. "Complete" windows end ``settle_windows``
windows before the start of the current window: agents outside rollouts batch
up to ten windows a message (ADR 0076), so newer windows have arrived from some
devices only, and judging them would read a partial fleet (an availability that
seems to drop, error rates from the devices that sent at once because their
windows had errors). Figures lag by that much; they never fire early.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from controller.core.leader import LeaderContext
from controller.core.metrics import Metrics
from controller.core.tables import Device, MonitorAlert, SloObjective, TelemetryAggregate
from controller.monitoring import slo
from controller.monitoring.alerts import Alerts, Condition
from controller.monitoring.service import NotFound, Scope, VersionDrift, accuracy, drift
from controller.monitoring.windows import cohort_devices, load_windows, merge_windows

log = logging.getLogger(__name__)
LOOKBACK_S = 86400  # models and cohorts with telemetry this recent are checked for drift
EVIDENCE_FEATURES = 10  # drifted features listed in an alert's evidence (largest PSI first)


def drift_evidence(vd: VersionDrift) -> dict[str, Any]:
    r = vd.report
    top = sorted((f for f in r.features if f.drifted), key=lambda f: -f.psi)[:EVIDENCE_FEATURES]
    pred = r.predictions
    return {
        "version": vd.version,
        "windows": [vd.since, vd.until],
        "device_windows": vd.device_windows,
        "excluded_windows": vd.excluded_windows,
        "drift_share": round(r.drift_share, 4),
        "drifted_features": r.drifted_features,
        "features_tested": len([f for f in r.features if f.verdict != "insufficient"]),
        "top_features": [
            {
                "name": f.name,
                "psi": round(f.psi, 4),
                "psi_threshold": round(f.psi_threshold, 4),
                "js": round(f.js, 4),
                "js_threshold": round(f.js_threshold, 4),
                "wasserstein": round(f.wasserstein, 4),
                "out_of_range": round(f.out_of_range, 4),
                "n": f.n_cur,
            }
            for f in top
        ],
        "predictions": None
        if pred is None
        else {"psi": round(pred.psi, 4), "chi2_p": pred.chi2_p, "cramers_v": pred.cramers_v, "drifted": pred.drifted},
        "thresholds": r.thresholds,
    }


@dataclass
class MonitorJob:
    """``fn(ctx)`` for ``Leader.add_job``; ``now`` can be fixed by tests and benchmarks."""

    metrics: Metrics
    window_s: int
    drift_windows: int = 3
    webhook_url: str | None = None
    settle_windows: int = 0  # windows to wait before judging one (settings: 10, the agents' batch)

    def __post_init__(self) -> None:
        self.alerts = Alerts(self.metrics, self.webhook_url)

    def __call__(self, ctx: LeaderContext, now: float | None = None) -> None:
        t = time.time() if now is None else now
        end = (int(t // self.window_s) - self.settle_windows) * self.window_s  # current window's start, less the settling
        with Session(ctx.engine) as session:
            self.check_drift(session, end)
            self.check_slos(session, end)
            self.count_devices(session)
            self.alerts.refresh_gauges(session)
            if not ctx.still_leader():
                session.rollback()
                return
            session.commit()
        self.alerts.deliver()
        self.metrics.monitor_last_run.set(time.time())

    def count_devices(self, session: Session) -> None:
        """Devices per production model version and presence (rollout progress on dashboards)."""
        counts: dict[tuple[str, str, str], int] = {}
        for d in session.exec(select(Device)).all():
            prod = (d.actual or {}).get("production")
            model, version = (str(prod.get("model")), str(prod.get("version"))) if isinstance(prod, dict) else ("", "")
            key = (model, version, "true" if d.online else "false")
            counts[key] = counts.get(key, 0) + 1
        self.metrics.devices.clear()
        for key, n in counts.items():
            self.metrics.devices.labels(*key).set(n)

    # --- drift -------------------------------------------------------------------------

    def check_drift(self, session: Session, end: int) -> None:
        since = end - self.drift_windows * self.window_s
        q = (
            select(TelemetryAggregate.model, TelemetryAggregate.cohort)
            .where(TelemetryAggregate.role == "production", col(TelemetryAggregate.window_start) >= end - LOOKBACK_S)
            .distinct()
        )
        for model, cohort in sorted(session.exec(q).all()):
            try:
                results = drift(session, Scope(model, cohort, "production", since, end))
            except NotFound as exc:
                log.warning("drift check of %s in %s skipped: %s", model, cohort, exc)
                continue
            seen = set()
            for vd in results:
                seen.add(vd.version)
                r = vd.report
                labels = (model, str(vd.version), cohort)
                self.metrics.drift_share.labels(*labels).set(r.drift_share)
                self.metrics.drift_detected.labels(*labels).set(int(r.dataset_drift))
                for f in r.features:
                    self.metrics.drift_psi.labels(*labels, f.name).set(f.psi)
                if r.predictions is not None:
                    self.metrics.prediction_psi.labels(*labels).set(r.predictions.psi)
                names = ", ".join(f["name"] for f in drift_evidence(vd)["top_features"][:5])
                cond = Condition(
                    key=f"drift/{model}/{cohort}/production/v{vd.version}",
                    kind="drift",
                    model=model,
                    cohort=cohort,
                    severity="ticket",
                    summary=f"{model} v{vd.version} in {cohort}: {r.drifted_features} of "
                    f"{len(r.features)} input features drifted ({r.drift_share:.0%}): {names}",
                    evidence=drift_evidence(vd),
                )
                self.alerts.observe(session, cond, r.dataset_drift)
            prefix = f"drift/{model}/{cohort}/production/v"
            for row in session.exec(
                select(MonitorAlert).where(col(MonitorAlert.key).startswith(prefix), MonitorAlert.state == "firing")
            ).all():
                if int(row.key[len(prefix) :]) not in seen:  # no complete windows of that version any more
                    gone = Condition(
                        row.key, "drift", model, cohort, row.severity, row.summary, {"reason": "no recent telemetry"}
                    )
                    self.alerts.observe(session, gone, False)

    # --- SLOs --------------------------------------------------------------------------

    def check_slos(self, session: Session, end: int) -> None:
        for obj in session.exec(select(SloObjective)).all():
            ev = evaluate_slo(session, obj, end, self.window_s)
            for res in ev.results:
                for span, burn in ((res.rule.long_s, res.long_burn), (res.rule.short_s, res.short_burn)):
                    if burn is not None:
                        self.metrics.slo_burn.labels(obj.name, obj.model, obj.cohort, f"{span}s").set(burn)
            self.metrics.slo_target.labels(obj.name, obj.model, obj.cohort, obj.kind).set(obj.target)
            acc = ev.events.get(min(ev.events)) if obj.kind == "accuracy" and ev.events else None
            if acc is not None and acc.total:
                self.metrics.accuracy.labels(obj.model, obj.cohort, acc.source).set(1 - acc.bad / acc.total)
            cond = Condition(
                key=f"slo/{obj.name}",
                kind="slo",
                model=obj.model,
                cohort=obj.cohort,
                severity=ev.severity,
                summary=ev.summary,
                evidence=ev.evidence(),
            )
            self.alerts.observe(session, cond, ev.firing)


@dataclass
class SloEvaluation:
    objective: SloObjective
    results: list[slo.RuleResult]
    events: dict[int, slo.Events]  # by window length, seconds

    @property
    def firing(self) -> bool:
        return any(r.firing for r in self.results)

    @property
    def severity(self) -> str:
        return "page" if any(r.firing and r.rule.severity == "page" for r in self.results) else "ticket"

    @property
    def summary(self) -> str:
        o = self.objective
        worst = max((r for r in self.results if r.firing), key=lambda r: r.short_burn or 0.0, default=None)
        if worst is None or worst.long_burn is None or worst.short_burn is None:
            return f"SLO {o.name} ({o.kind} {o.target:.4g} for {o.model} in {o.cohort}) within budget"
        return (
            f"SLO {o.name} ({o.kind} {o.target:.4g} for {o.model} in {o.cohort}) burning {worst.long_burn:.1f}x over "
            f"{worst.rule.long_s}s and {worst.short_burn:.1f}x over {worst.rule.short_s}s (limit {worst.rule.factor:g}x)"
        )

    def evidence(self) -> dict[str, Any]:
        o = self.objective
        return {
            "objective": o.kind,
            "target": o.target,
            "threshold_ms": o.threshold_ms,
            "rules": [r.to_dict() for r in self.results],
            "events": {f"{span}s": {"bad": e.bad, "total": e.total, "source": e.source} for span, e in self.events.items()},
        }


def evaluate_slo(session: Session, obj: SloObjective, end: int, window_s: int) -> SloEvaluation:
    """Burn rates of one objective over windows ending at ``end`` (the start of the current window)."""
    rules = [slo.BurnRule.from_dict(w) for w in obj.windows] if obj.windows else list(slo.DEFAULT_RULES)
    cache: dict[int, slo.Events] = {}
    results = []
    for rule in rules:
        for span in (rule.long_s, rule.short_s):
            if span not in cache:
                cache[span] = slo_events(session, obj, end - span, end, window_s)
        results.append(slo.evaluate(rule, cache[rule.long_s], cache[rule.short_s], obj.target))
    return SloEvaluation(obj, results, cache)


def slo_events(session: Session, obj: SloObjective, since: int, until: int, window_s: int) -> slo.Events:
    scope = Scope(obj.model, obj.cohort, "production", since, until)
    if obj.kind == "accuracy":
        _, tot = accuracy(session, scope)
        est = tot["estimated"] if isinstance(tot["estimated"], float) else None
        return slo.accuracy_events(int(tot["labels"] or 0), int(tot["correct"] or 0), int(tot["predictions"] or 0), est)
    windows = load_windows(session, obj.model, cohort=obj.cohort, since=since, until=until)
    if obj.kind == "availability":
        expected = expected_devices(session, obj.model, obj.cohort)
        slots = max((until - since) // window_s, 0)
        reported = sum(w.devices for w in windows)
        return slo.availability(min(reported, expected * slots), expected * slots)
    merged = merge_windows(windows)
    return slo.events(obj.kind, merged[1] if merged else {}, obj.threshold_ms)


def expected_devices(session: Session, model: str, cohort: str) -> int:
    members = cohort_devices(session, cohort)
    n = 0
    for d in session.exec(select(Device)).all():
        prod = (d.desired or {}).get("production")
        if isinstance(prod, dict) and prod.get("model") == model and (members is None or d.id in members):
            n += 1
    return n
