"""One look at an experiment: estimates per arm, always-valid intervals, the SRM check, a decision (pure).

Rules, checked in this order:

1. SRM: if devices do not report per arm in the assigned proportions the
   decision is ``blocked`` (nothing is shipped or stopped on biased data).
2. Too little data: every arm needs ``min_devices`` reporting devices for the
   primary metric, else ``keep_running``.
3. Harm: a treatment arm whose always-valid interval for the primary metric or
   any guardrail lies entirely on the harmful side of zero is ``stop_harm``.
4. Win: a treatment arm whose primary interval lies entirely on the good side,
   with no guardrail harm, is ``ship`` (the best point estimate if several).
5. Otherwise ``keep_running``.

With more than one treatment arm each comparison uses ``alpha / (k - 1)``
(Bonferroni), so the family keeps its error rate at every look.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from controller.experiments.srm import SRM_ALPHA, SrmCheck, srm_check
from controller.experiments.stats import Difference, Estimate, difference, estimate

KEEP_RUNNING, SHIP, STOP_HARM, BLOCKED = "keep_running", "ship", "stop_harm", "blocked"


@dataclass(frozen=True)
class Metric:
    name: str
    numerator: str  # DeviceSums field
    denominator: str
    higher_is_better: bool
    tau: float  # default mixing sd: the size of effect worth detecting, in the metric's unit
    proportion: bool


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", "correct", "labels", True, 0.02, True),
        Metric("error_rate", "errors", "count", False, 0.005, True),
        Metric("latency_ms", "latency_ms_sum", "count", False, 1.0, False),
    )
}


@dataclass(frozen=True)
class DeviceSums:
    """One device's sums in one arm over the experiment so far."""

    device_id: str
    count: int = 0
    errors: int = 0
    labels: int = 0
    correct: int = 0
    latency_ms_sum: float = 0.0


@dataclass(frozen=True)
class Arm:
    name: str
    share: float
    devices: tuple[DeviceSums, ...] = ()


@dataclass(frozen=True)
class Comparison:
    arm: str
    metric: str
    treatment: Estimate | None
    control: Estimate | None
    difference: Difference | None
    verdict: str  # better | worse | inconclusive | no_data


@dataclass(frozen=True)
class Evaluation:
    decision: str
    arm: str | None  # the arm shipped or stopped
    reasons: tuple[str, ...]
    srm: SrmCheck
    estimates: dict[str, dict[str, Estimate | None]]  # arm -> metric -> estimate
    comparisons: tuple[Comparison, ...]
    alpha: float
    extra: dict[str, Any] = field(default_factory=dict)

    def evidence(self) -> dict[str, Any]:
        """JSON-safe: what the audit log and ``experiments show`` keep."""

        def clean(x: Any) -> Any:
            if isinstance(x, float):
                return x if np.isfinite(x) else None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, list | tuple):
                return [clean(v) for v in x]
            return x

        out: dict[str, Any] = clean(
            {
                "decision": self.decision,
                "arm": self.arm,
                "reasons": list(self.reasons),
                "alpha": self.alpha,
                "srm": self.srm.as_dict(),
                "estimates": {a: {m: (asdict(e) if e else None) for m, e in ms.items()} for a, ms in self.estimates.items()},
                "comparisons": [asdict(c) for c in self.comparisons],
                **self.extra,
            }
        )
        return out


def arm_estimate(arm: Arm, metric: Metric) -> Estimate | None:
    num = [getattr(d, metric.numerator) for d in arm.devices]
    den = [getattr(d, metric.denominator) for d in arm.devices]
    return estimate(num, den, metric.proportion) if arm.devices else None


def compare(treat: Arm, control: Arm, metric: Metric, alpha: float, tau: float) -> Comparison:
    t, c = arm_estimate(treat, metric), arm_estimate(control, metric)
    if t is None or c is None or t.devices < 2 or c.devices < 2:
        return Comparison(treat.name, metric.name, t, c, None, "no_data")
    d = difference(t, c, alpha, tau)
    good_low, good_high = (d.low, d.high) if metric.higher_is_better else (-d.high, -d.low)
    verdict = "better" if good_low > 0 else "worse" if good_high < 0 else "inconclusive"
    return Comparison(treat.name, metric.name, t, c, d, verdict)


def evaluate(
    arms: Sequence[Arm],
    *,
    control: str,
    primary: str,
    guardrails: Sequence[str] = (),
    alpha: float = 0.05,
    tau: float | None = None,
    min_devices: int = 5,
    srm_alpha: float = SRM_ALPHA,
) -> Evaluation:
    """Look at the experiment once (see the module docstring for the rules)."""
    names = [a.name for a in arms]
    if control not in names:
        raise ValueError(f"control arm {control!r} is not one of {names}")
    for m in (primary, *guardrails):
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; expected one of {sorted(METRICS)}")
    by = {a.name: a for a in arms}
    ctrl = by[control]
    treatments = [a for a in arms if a.name != control]
    a_each = alpha / max(1, len(treatments))
    pm = METRICS[primary]
    reporting = [sum(1 for d in a.devices if d.count > 0) for a in arms]
    srm = srm_check(reporting, [a.share for a in arms], srm_alpha)
    estimates = {a.name: {m: arm_estimate(a, METRICS[m]) for m in (primary, *guardrails)} for a in arms}
    comps: list[Comparison] = []
    for t in treatments:
        comps.append(compare(t, ctrl, pm, a_each, tau if tau is not None else pm.tau))
        comps.extend(compare(t, ctrl, METRICS[g], a_each, METRICS[g].tau) for g in guardrails)

    def done(decision: str, arm: str | None, *reasons: str) -> Evaluation:
        return Evaluation(decision, arm, reasons, srm, estimates, tuple(comps), alpha)

    if srm.mismatch:
        return done(BLOCKED, None, f"sample ratio mismatch: devices per arm {list(srm.observed)}, p = {srm.p_value:.2g}")
    with_data = {a.name: (estimates[a.name][primary].devices if estimates[a.name][primary] else 0) for a in arms}  # type: ignore[union-attr]
    short = [n for n, k in with_data.items() if k < min_devices]
    if short:
        return done(KEEP_RUNNING, None, f"arms with fewer than {min_devices} devices reporting {primary}: {short}")
    harmed = [c for c in comps if c.verdict == "worse"]
    if harmed:
        c = harmed[0]
        assert c.difference is not None
        return done(
            STOP_HARM,
            c.arm,
            f"{c.arm} is worse than {control} on {c.metric}: difference in [{c.difference.low:.4g}, {c.difference.high:.4g}]",
        )
    wins = [c for c in comps if c.metric == primary and c.verdict == "better"]
    if wins:

        def gain(c: Comparison) -> float:
            assert c.difference is not None
            return c.difference.diff if pm.higher_is_better else -c.difference.diff

        c = max(wins, key=gain)
        assert c.difference is not None
        return done(
            SHIP,
            c.arm,
            f"{c.arm} beats {control} on {primary}: difference in [{c.difference.low:.4g}, {c.difference.high:.4g}]",
        )
    return done(KEEP_RUNNING, None, "no interval excludes zero yet")
