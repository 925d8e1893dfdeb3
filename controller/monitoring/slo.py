"""Service-level objectives and multi-window burn-rate alerts (pure).

An objective says which share of events must be good over its period, e.g.
99 % of requests faster than 50 ms. Events and what makes them bad, per kind:

============  ====================================  =========================================
kind          events                                bad
============  ====================================  =========================================
latency       inference calls                       slower than ``threshold_ms`` (read from
                                                    the latency buckets: a call counts as
                                                    slow when its bucket's upper edge is above
                                                    the threshold, so up to 19 % early)
errors        inference calls                       failed
accuracy      labelled predictions; where fewer     wrong; estimated: predictions × (1 -
              than ``MIN_LABELS`` labels, every     estimated accuracy)
              prediction, with the estimate
availability  expected device windows (devices      a window with no report from the device
              assigned the model in the cohort ×
              complete windows)
============  ====================================  =========================================

Burn rate = (bad / events) / (1 - target): 1 spends the error budget exactly
over the period. A rule fires when the burn rate over **both** its long and its
short window exceeds its factor (the short window makes the alert stop soon
after the problem does). The defaults are the Google SRE workbook's for a
30-day objective: 14.4× over 1 h and 5 min (page), 6× over 6 h and 30 min
(page), 1× over 3 days and 6 h (ticket). Objectives may set their own rules
(tests and fleets with short windows do).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from controller.monitoring.summary import count
from shared.telemetry import LATENCY_EDGES_MS

KINDS = ("latency", "errors", "accuracy", "availability")
MIN_LABELS = 30  # labelled predictions needed to use measured accuracy over the estimate


@dataclass(frozen=True)
class BurnRule:
    long_s: int
    short_s: int
    factor: float
    severity: str  # page | ticket

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BurnRule:
        return cls(int(d["long_s"]), int(d["short_s"]), float(d["factor"]), str(d.get("severity", "page")))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_RULES = (
    BurnRule(3600, 300, 14.4, "page"),
    BurnRule(6 * 3600, 1800, 6.0, "page"),
    BurnRule(3 * 86400, 6 * 3600, 1.0, "ticket"),
)


@dataclass
class Events:
    """Good and bad event counts over one time range."""

    bad: float = 0.0
    total: float = 0.0
    source: str = ""  # accuracy: measured | estimated

    def ratio(self) -> float | None:
        return self.bad / self.total if self.total > 0 else None


def slow_calls(latency: Any, threshold_ms: float) -> tuple[int, int]:
    """(calls whose bucket reaches above ``threshold_ms``, all calls) from latency buckets."""
    if not isinstance(latency, list):
        return 0, 0
    total, slow = 0, 0
    for i, n in enumerate(latency):
        if not isinstance(n, int):
            continue
        total += n
        upper = LATENCY_EDGES_MS[i] if i < len(LATENCY_EDGES_MS) else float("inf")
        if upper > threshold_ms:
            slow += n
    return slow, total


def events(kind: str, summary: dict[str, Any], threshold_ms: float | None = None) -> Events:
    """Bad and total events of ``kind`` in one merged summary (not availability: see :func:`availability`)."""
    calls = count(summary, "count")
    if kind == "latency":
        slow, total = slow_calls(summary.get("latency_ms"), threshold_ms if threshold_ms is not None else float("inf"))
        return Events(slow, total)
    if kind == "errors":
        return Events(count(summary, "errors"), calls)
    raise ValueError(f"unknown event kind {kind!r}; expected one of {', '.join(KINDS)}")


def accuracy_events(labels: int, correct: int, predictions: int, estimated: float | None) -> Events:
    if labels >= MIN_LABELS or (labels and estimated is None):
        return Events(labels - correct, labels, "measured")
    if estimated is not None and predictions:
        return Events(predictions * (1 - estimated), predictions, "estimated")
    return Events(0, 0, "none")


def availability(reported: int, expected: int) -> Events:
    return Events(max(expected - reported, 0), expected)


def burn_rate(ev: Events, target: float) -> float | None:
    r = ev.ratio()
    if r is None:
        return None
    budget = 1 - target
    return r / budget if budget > 0 else (0.0 if r == 0 else float("inf"))


@dataclass
class RuleResult:
    rule: BurnRule
    long_burn: float | None
    short_burn: float | None
    firing: bool

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.to_dict(), "long_burn": self.long_burn, "short_burn": self.short_burn, "firing": self.firing}


def evaluate(rule: BurnRule, long_ev: Events, short_ev: Events, target: float) -> RuleResult:
    lb, sb = burn_rate(long_ev, target), burn_rate(short_ev, target)
    return RuleResult(rule, lb, sb, lb is not None and sb is not None and lb > rule.factor and sb > rule.factor)
