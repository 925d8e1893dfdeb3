"""When to retrain (pure: signals and a configuration in, one decision out).

Rules, in order:

1. Triggers (any fires, first listed wins): ``drift`` — in each of the last
   ``drift_windows`` windows at least ``drift_device_share`` of the cohort's judged
   devices (enough captured samples) drifted; ``accuracy`` — measured (else
   estimated) accuracy is at least ``accuracy_drop`` below the incumbent's;
   ``data`` — ``min_new_labels`` labelled samples arrived since the last run;
   ``schedule`` — ``schedule_s`` passed since the last run; ``manual`` — an operator asked.
2. No trigger: nothing to do (``none``).
3. One run at a time per model: a trigger while a run of the model is running is
   skipped with the run named.
4. Cooldown: a new run waits ``cooldown_s`` after the last one started, doubled for
   each run in a row that ended without a blessed model (refused, not blessed,
   failed), up to ``backoff_max_s``. A trigger inside it is skipped, saying until when.
   So a model that cannot be improved is retried ever more rarely, never in a loop.
5. Otherwise: retrain, with the trigger and its evidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TRIGGERS = ("drift", "accuracy", "data", "schedule", "manual")
UNSUCCESSFUL = ("refused", "not_blessed", "failed")


@dataclass(frozen=True)
class PolicyConfig:
    drift_device_share: float = 0.5  # share of a cohort's judged devices that must drift in a window
    drift_windows: int = 3  # consecutive windows
    accuracy_drop: float = 0.05  # absolute accuracy drop (0.05 = 5 points)
    min_new_labels: int = 1000  # labelled samples since the last run
    schedule_s: float = 0.0  # 0: no scheduled runs
    cooldown_s: float = 86400.0
    backoff_max_s: float = 7 * 86400.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DriftWindow:
    start: float  # unix seconds
    judged: int  # devices with enough samples in the window
    drifted: int
    devices: list[str] = field(default_factory=list)  # the drifted devices (evidence)

    @property
    def share(self) -> float:
        return self.drifted / self.judged if self.judged else 0.0


@dataclass(frozen=True)
class RunInfo:
    id: int
    state: str
    started_at: float
    cohort: str = ""


@dataclass(frozen=True)
class Signals:
    model: str
    cohort: str
    now: float
    drift: list[DriftWindow] = field(default_factory=list)  # oldest first
    accuracy: float | None = None
    accuracy_source: str = ""  # measured | estimated
    baseline_accuracy: float | None = None  # the incumbent's (from its registration)
    new_labels: int = 0
    last_run: RunInfo | None = None  # the latest run of the model (any cohort)
    running: RunInfo | None = None  # a run of the model that is still running
    unsuccessful_streak: int = 0  # runs in a row, newest back, that ended without a blessed model
    manual: str | None = None  # an operator's reason, for a manual trigger


@dataclass(frozen=True)
class Decision:
    action: str  # retrain | skip | none
    trigger: str  # the trigger that fired ("" for none)
    reason: str
    rule: str  # which rule decided: trigger | none | running | cooldown
    evidence: dict[str, Any]
    not_before: float | None = None  # skipped for the cooldown: when a run may start


def fired(sig: Signals, cfg: PolicyConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """Every trigger that fires, in priority order: (kind, reason, evidence)."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    if sig.manual is not None:
        out.append(("manual", f"requested: {sig.manual}", {"requested": sig.manual}))
    recent = sig.drift[-cfg.drift_windows :]
    if len(recent) == cfg.drift_windows and all(w.judged and w.share >= cfg.drift_device_share for w in recent):
        shares = ", ".join(f"{w.drifted}/{w.judged}" for w in recent)
        out.append(
            (
                "drift",
                f"drift in at least {cfg.drift_device_share:.0%} of the judged devices of {sig.cohort} for "
                f"{cfg.drift_windows} windows in a row ({shares})",
                {"windows": [{**asdict(w), "share": round(w.share, 4)} for w in recent]},
            )
        )
    if sig.accuracy is not None and sig.baseline_accuracy is not None:
        drop = sig.baseline_accuracy - sig.accuracy
        if drop >= cfg.accuracy_drop:
            out.append(
                (
                    "accuracy",
                    f"{sig.accuracy_source} accuracy {sig.accuracy:.2%} is {drop:.2%} below the incumbent's "
                    f"{sig.baseline_accuracy:.2%} (limit {cfg.accuracy_drop:.2%})",
                    {"accuracy": sig.accuracy, "source": sig.accuracy_source, "baseline": sig.baseline_accuracy, "drop": drop},
                )
            )
    if sig.new_labels >= cfg.min_new_labels > 0:
        out.append(
            (
                "data",
                f"{sig.new_labels} new labelled samples since the last run (at least {cfg.min_new_labels})",
                {"new_labels": sig.new_labels},
            )
        )
    if cfg.schedule_s > 0:
        since = sig.now - sig.last_run.started_at if sig.last_run is not None else None
        if since is None or since >= cfg.schedule_s:
            why = "no run yet" if since is None else f"{since:.0f} s since the last run"
            out.append(("schedule", f"scheduled every {cfg.schedule_s:.0f} s: {why}", {"since_last_run_s": since}))
    return out


def cooldown_s(cfg: PolicyConfig, streak: int) -> float:
    """The wait after the last run: the cooldown, doubled for each unsuccessful run in a row, capped."""
    return float(min(cfg.cooldown_s * 2 ** min(streak, 30), max(cfg.backoff_max_s, cfg.cooldown_s)))


def decide(sig: Signals, cfg: PolicyConfig) -> Decision:
    triggers = fired(sig, cfg)
    base: dict[str, Any] = {"config": cfg.to_dict(), "triggers": [{"kind": k, "reason": r, **e} for k, r, e in triggers]}
    if sig.accuracy is not None:
        base["accuracy"] = {"value": sig.accuracy, "source": sig.accuracy_source, "baseline": sig.baseline_accuracy}
    if not triggers:
        latest = sig.drift[-1] if sig.drift else None
        drift = f"; latest window {latest.drifted}/{latest.judged} devices drifted" if latest else ""
        return Decision("none", "", f"no trigger for {sig.model} in {sig.cohort}{drift}", "none", base)
    kind, reason, _ = triggers[0]
    if sig.running is not None:
        r = sig.running
        return Decision(
            "skip",
            kind,
            f"{kind} trigger ({reason}) not acted on: run {r.id} of {sig.model} is still running "
            f"(started {sig.now - r.started_at:.0f} s ago); one run at a time per model",
            "running",
            {**base, "running_run": r.id},
        )
    if sig.last_run is not None:
        wait = cooldown_s(cfg, sig.unsuccessful_streak)
        ready = sig.last_run.started_at + wait
        if sig.now < ready:
            backoff = (
                f", backed off x{2 ** min(sig.unsuccessful_streak, 30)} after {sig.unsuccessful_streak} run(s) without a "
                f"blessed model"
                if sig.unsuccessful_streak
                else ""
            )
            return Decision(
                "skip",
                kind,
                f"{kind} trigger ({reason}) refused: cooldown, run {sig.last_run.id} started "
                f"{sig.now - sig.last_run.started_at:.0f} s ago ({sig.last_run.state}); the next run may start in "
                f"{ready - sig.now:.0f} s (cooldown {cfg.cooldown_s:.0f} s{backoff})",
                "cooldown",
                {**base, "last_run": asdict(sig.last_run), "wait_s": wait, "unsuccessful_streak": sig.unsuccessful_streak},
                not_before=ready,
            )
    return Decision("retrain", kind, f"retrain {sig.model}: {reason}", "trigger", base)


def drift_since(d: Decision, window_s: float) -> float | None:
    """When the drift was under way, by the decision's evidence: the end of the first of the drifted windows (the
    drift may have begun inside it, so it holds inputs from before). None when the drift trigger did not fire."""
    for t in d.evidence.get("triggers", []):
        if t.get("kind") == "drift" and t.get("windows"):
            return float(min(w["start"] for w in t["windows"])) + window_s
    return None
