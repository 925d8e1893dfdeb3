"""Scenario files: a fleet, a timeline of actions and faults, and the checks that must hold at the end.

A scenario is YAML (or TOML) under ``firmware_sim/scenarios/``; ``edgefleet-sim run NAME``
plays it (:mod:`firmware_sim.play`). Reading is strict: an unknown key, action, fault or
check is an error naming where it is, before anything starts. Example::

    name: broker-outage
    controller: {window_s: 2, rollout_interval_s: 2}
    agent: {telemetry: {window_s: 2}}
    models:
      - {version: 1, epochs: 60}
    fleet:
      - {group: main, devices: 20, processes: 2, profiles: {rpi4: 1, rpi5: 1}, app: {rate_hz: 2}}
    timeline:
      - {at: 0, assign: 1}
      - {at: 0, wait: {all_on: 1, timeout_s: 120}}
      - {at: 5, fault: {broker_outage: {duration_s: 10}}}
    settle_s: 10
    checks: [verified_model, no_window_lost, {all_on: 1}]

``at`` is seconds after the fleet started; actions run in order (a ``wait`` delays the
ones after it). Faults with a ``duration_s`` end by themselves. A ``check`` step is
evaluated at that point of the timeline and reported with the final checks.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_sim.profiles import PROFILES
from firmware_sim.sensors import DRIFT_KINDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ACTIONS", "CHECKS", "FAULTS", "Scenario", "ScenarioError", "find", "load", "parse"]
SCENARIO_DIR = Path(__file__).parent / "scenarios"

ACTIONS = ("assign", "wait", "rollout", "experiment", "drift", "fault", "network", "register", "check")
FAULTS = (
    "broker_outage",  # {duration_s, mode: restart | hang}
    "partition",  # {group, duration_s}
    "power_loss",  # {group, timeout_s}: the group's processes are SIGKILLed at their pause point, then restarted
    "disk_full",  # {group, duration_s}: the group's small file system is filled
    "corrupt_download",  # {duration_s}: bundle bodies damaged on the way
    "truncated_download",  # {duration_s}: bundle downloads cut half way
    "slow_link",  # {group | http: true, rate, duration_s}
    "flapping",  # {group, period_s, duration_s}
)
CHECKS = (
    "verified_model",  # no device without a verified model
    "no_window_lost",  # every window a device committed is stored by the controller
    "all_on",  # N: every device reports version N
    "split",  # [N, M, ...]: every device reports one of these versions, and each of them runs somewhere in production
    "rollout_rolled_back",  # {within_intervals}: the last rollout rolled back, soon enough
    "rollout_completed",  # the last rollout completed
    "drift_detected",  # the controller's monitoring flags drift
    "no_worker_crash",  # no fleet process died except by the scenario's own power cuts
    "app_served",  # {min_share}: the apps' predictions mostly succeeded
)
WAITS = ("all_on", "rollout", "drift_detected", "seconds", "paused")


class ScenarioError(ValueError):
    """The scenario file is invalid; the message says where and what was expected."""


@dataclass(frozen=True)
class Group:
    name: str
    devices: int
    profiles: dict[str, float]
    app: dict[str, float]
    processes: int = 1
    relay: bool = False
    clock_skew_s: float = 0.0
    storage_mb: int | None = None  # a real small file system (tmpfs) for the group's data: disk-full faults
    pause_at: str | None = None


@dataclass(frozen=True)
class Step:
    at: float
    action: str
    args: Any


@dataclass(frozen=True)
class Model:
    version: int
    epochs: int = 60
    seed: int = 0
    latency_budget_ms: float = 1000.0
    approve: bool = True


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    groups: list[Group]
    models: list[Model]
    timeline: list[Step]
    checks: list[tuple[str, Any]]
    controller: dict[str, float] = field(default_factory=dict)
    agent: dict[str, Any] = field(default_factory=dict)
    settle_s: float = 10.0
    start_spread_s: float = 0.0

    @property
    def devices(self) -> int:
        return sum(g.devices for g in self.groups)


_CONTROLLER_KEYS = {
    "window_s": "EDGEFLEET_TELEMETRY_WINDOW_S",
    "rollout_interval_s": "EDGEFLEET_ROLLOUT_INTERVAL_S",
    "monitor_interval_s": "EDGEFLEET_MONITOR_INTERVAL_S",
    "monitor_drift_windows": "EDGEFLEET_MONITOR_DRIFT_WINDOWS",
    "experiment_interval_s": "EDGEFLEET_EXPERIMENT_INTERVAL_S",
}


def controller_env(s: Scenario) -> dict[str, str]:
    return {_CONTROLLER_KEYS[k]: str(v) for k, v in s.controller.items()}


def _only(where: str, d: Any, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    if not isinstance(d, dict):
        raise ScenarioError(f"{where}: expected a table, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ScenarioError(f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}")
    missing = sorted(required - set(d))
    if missing:
        raise ScenarioError(f"{where}: missing key {missing[0]!r}")
    return d


def _num(where: str, v: Any, lo: float = 0.0, hi: float = float("inf")) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise ScenarioError(f"{where}: expected a number within {lo:g}..{hi:g}, got {v!r}")
    return float(v)


def _group(where: str, d: Any) -> Group:
    g = _only(where, d, {"group", "devices", "profiles", "app", "processes", "relay", "clock_skew_s", "storage_mb", "pause_at"},
              {"group", "devices"})  # fmt: skip
    name = str(g["group"])
    if not name.replace("-", "").isalnum() or not name.islower():
        raise ScenarioError(f"{where}.group: expected lower-case letters, digits and '-', got {name!r}")
    profiles = g.get("profiles", {"rpi4": 1.0, "rpi5": 1.0, "jetson-orin-nano": 1.0})
    for p, share in _only(f"{where}.profiles", profiles, set(PROFILES)).items():
        _num(f"{where}.profiles.{p}", share)
    app = _only(f"{where}.app", g.get("app", {}), {"rate_hz", "label_rate", "label_delay_s"})
    _num(f"{where}.app.rate_hz", app.get("rate_hz", 1.0), 0, 1000)
    _num(f"{where}.app.label_rate", app.get("label_rate", 0.5), 0, 1)
    _num(f"{where}.app.label_delay_s", app.get("label_delay_s", 2.0), 0, 86400)
    storage = g.get("storage_mb")
    return Group(
        name=name,
        devices=int(_num(f"{where}.devices", g["devices"], 1, 100_000)),
        profiles={k: float(v) for k, v in profiles.items()},
        app={k: float(v) for k, v in app.items()},
        processes=int(_num(f"{where}.processes", g.get("processes", 1), 1, 64)),
        relay=bool(g.get("relay", False)),
        clock_skew_s=_num(f"{where}.clock_skew_s", g.get("clock_skew_s", 0.0), -86400 * 365, 86400 * 365),
        storage_mb=None if storage is None else int(_num(f"{where}.storage_mb", storage, 1, 1 << 20)),
        pause_at=None if g.get("pause_at") is None else str(g["pause_at"]),
    )


def _step(where: str, d: Any, groups: set[str]) -> Step:
    if not isinstance(d, dict) or "at" not in d:
        raise ScenarioError(f"{where}: expected a table with 'at' and one action ({', '.join(ACTIONS)})")
    at = _num(f"{where}.at", d["at"], 0, 86400)
    acts = [k for k in d if k != "at"]
    if len(acts) != 1 or acts[0] not in ACTIONS:
        raise ScenarioError(f"{where}: expected exactly one action of {', '.join(ACTIONS)}, got {acts}")
    action, args = acts[0], d[acts[0]]
    here = f"{where}.{action}"
    if action == "fault":
        f = _only(here, args, set(FAULTS))
        if len(f) != 1:
            raise ScenarioError(f"{here}: expected exactly one fault of {', '.join(FAULTS)}")
        kind, fa = next(iter(f.items()))
        fa = _only(f"{here}.{kind}", fa or {}, {"duration_s", "group", "rate", "period_s", "timeout_s", "http", "mode"})
        if kind in ("partition", "power_loss", "disk_full", "flapping") and fa.get("group") not in groups:
            raise ScenarioError(f"{here}.{kind}.group: expected one of {sorted(groups)}, got {fa.get('group')!r}")
        if kind == "broker_outage" and fa.get("mode", "restart") not in ("restart", "hang"):
            raise ScenarioError(f"{here}.broker_outage.mode: expected 'restart' or 'hang', got {fa.get('mode')!r}")
        if kind == "slow_link" and not fa.get("http") and fa.get("group") not in groups:
            raise ScenarioError(f"{here}.slow_link: expected 'http: true' or a group of {sorted(groups)}")
        args = {"kind": kind, **fa}
    elif action == "network":
        n = _only(here, args, {"group", "mode"}, {"group", "mode"})
        if n["group"] not in groups:
            raise ScenarioError(f"{here}.group: expected one of {sorted(groups)}, got {n['group']!r}")
    elif action == "drift":
        dr = _only(here, args, {"kind", "level", "group"}, {"kind"})
        if dr["kind"] not in DRIFT_KINDS:
            raise ScenarioError(f"{here}.kind: expected one of {', '.join(DRIFT_KINDS)}, got {dr['kind']!r}")
        _num(f"{here}.level", dr.get("level", 0.0), 0, 1)
        if "group" in dr and dr["group"] not in groups:
            raise ScenarioError(f"{here}.group: expected one of {sorted(groups)}, got {dr['group']!r}")
    elif action == "wait":
        w = _only(here, args, {*WAITS, "timeout_s"})
        if not set(w) & set(WAITS):
            raise ScenarioError(f"{here}: expected one of {', '.join(WAITS)}")
    elif action in ("assign",):
        args = int(_num(here, args, 1, 2**31 - 1))
    elif action == "rollout":
        _only(here, args, {"version", "stages", "thresholds"}, {"version"})
    elif action == "experiment":
        _only(here, args, {"name", "arms", "kind", "min_devices", "primary_metric", "seed"}, {"arms"})
    elif action == "register":
        args = _model(here, args)
    elif action == "check":  # evaluated now, reported with the final checks
        args = _check(here, args)
    return Step(at, action, args)


def _model(where: str, d: Any) -> Model:
    m = _only(where, d, {"version", "epochs", "seed", "latency_budget_ms", "approve"}, {"version"})
    return Model(
        version=int(_num(f"{where}.version", m["version"], 1, 2**31 - 1)),
        epochs=int(_num(f"{where}.epochs", m.get("epochs", 60), 1, 10_000)),
        seed=int(_num(f"{where}.seed", m.get("seed", 0), 0, 2**31 - 1)),
        latency_budget_ms=_num(f"{where}.latency_budget_ms", m.get("latency_budget_ms", 1000.0), 0.001, 1e6),
        approve=bool(m.get("approve", True)),
    )


def _check(where: str, c: Any) -> tuple[str, Any]:
    if isinstance(c, str):
        name, args = c, None
    elif isinstance(c, dict) and len(c) == 1:
        name, args = next(iter(c.items()))
    else:
        raise ScenarioError(f"{where}: expected a check name or a one-key table, got {c!r}")
    if name not in CHECKS:
        raise ScenarioError(f"{where}: unknown check {name!r}; expected one of {', '.join(CHECKS)}")
    return name, args


def parse(data: Any, where: str = "scenario") -> Scenario:
    top = _only(
        where,
        data,
        {"name", "description", "controller", "agent", "models", "fleet", "timeline", "settle_s", "checks", "start_spread_s"},
        {"name", "fleet", "checks"},
    )
    groups = [_group(f"{where}.fleet[{i}]", g) for i, g in enumerate(top["fleet"] or [])]
    if not groups:
        raise ScenarioError(f"{where}.fleet: expected at least one group")
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{where}.fleet: group names must differ, got {names}")
    ctl = _only(f"{where}.controller", top.get("controller", {}), set(_CONTROLLER_KEYS))
    for k, v in ctl.items():
        _num(f"{where}.controller.{k}", v, 0.1, 86400)
    timeline = [_step(f"{where}.timeline[{i}]", s, set(names)) for i, s in enumerate(top.get("timeline") or [])]
    if any(b.at < a.at for a, b in itertools.pairwise(timeline)):
        raise ScenarioError(f"{where}.timeline: steps must be in order of 'at'")
    return Scenario(
        name=str(top["name"]),
        description=str(top.get("description", "")),
        groups=groups,
        models=[_model(f"{where}.models[{i}]", m) for i, m in enumerate(top.get("models") or [])],
        timeline=timeline,
        checks=[_check(f"{where}.checks[{i}]", c) for i, c in enumerate(top["checks"])],
        controller={k: float(v) for k, v in ctl.items()},
        agent=dict(top.get("agent") or {}),
        settle_s=_num(f"{where}.settle_s", top.get("settle_s", 10.0), 0, 86400),
        start_spread_s=_num(f"{where}.start_spread_s", top.get("start_spread_s", 0.0), 0, 3600),
    )


def find(name: str) -> Path:
    """A scenario file: a path, or a name under firmware_sim/scenarios/ (with or without .yaml/.toml)."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (SCENARIO_DIR / name, SCENARIO_DIR / f"{name}.yaml", SCENARIO_DIR / f"{name}.toml"):
        if cand.is_file():
            return cand
    known = sorted(f.stem for f in SCENARIO_DIR.glob("*.*ml"))
    raise ScenarioError(f"no scenario {name!r}: not a file, and not one of {', '.join(known)}")


def load(name: str) -> Scenario:
    path = find(name)
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            import yaml

            data = yaml.safe_load(path.read_text())
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    except Exception as exc:  # yaml.YAMLError
        raise ScenarioError(f"{path}: invalid YAML: {exc}") from None
    return parse(data, path.name)
