"""Play a scenario: start the stack and the fleet, run the timeline and its faults, print the checks.

The result is a list of :class:`CheckResult`; ``edgefleet-sim run`` exits non-zero when one fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.config import TelemetryConfig
from firmware_sim.fleet import GroupSpec
from firmware_sim.scenario import Model, Scenario, controller_env
from firmware_sim.simrun import COHORT, MODEL, SimRun, devices_for, stored_seqs

__all__ = ["CheckResult", "play"]

Say = Callable[[str], None]


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


class Player:
    def __init__(self, sc: Scenario, workdir: Path, say: Say) -> None:
        self.sc = sc
        self.workdir = workdir
        self.say = say
        self.run = SimRun(workdir, controller_env=controller_env(sc), agent=sc.agent, start_spread_s=sc.start_spread_s)
        self.t0 = 0.0
        self.rollout_id: int | None = None
        self.power_cut_groups: set[str] = set()
        self.mounts: list[Path] = []
        self.fillers: dict[str, Path] = {}
        self._timers: list[threading.Timer] = []
        self.drift_at = 0.0  # unix time drift was injected
        self.early: list[CheckResult] = []  # checks made during the timeline

    # -- set-up --------------------------------------------------------------------
    def setup(self) -> None:
        self.run.start_stack()
        assert self.run.broker is not None and self.run.controller is not None
        self.say(f"stack: Mosquitto on port {self.run.broker.port}, controller {self.run.controller.url}")
        for m in self.sc.models:
            v = self._register(m)
            if v != m.version:
                raise RuntimeError(f"model registered as version {v}, the scenario expected {m.version}")
        groups = []
        for i, g in enumerate(self.sc.groups):
            root = None
            if g.storage_mb is not None:
                root = self._small_fs(g.name, g.storage_mb)
            groups.append(
                GroupSpec(
                    g.name, devices_for(g.name, g.devices, g.profiles, g.app, seed=i), processes=g.processes, relay=g.relay,
                    clock_skew_s=g.clock_skew_s, data_root=root, pause_at=g.pause_at,
                )
            )  # fmt: skip
        fleet = self.run.start_fleet(groups)
        self.say(f"fleet: {len(fleet.device_ids)} devices in {len(fleet.workers)} processes")
        fleet.wait(
            lambda s: len(s) == len(fleet.device_ids) and all(v["connected"] for v in s.values()), 300, "every device connected"
        )
        self.t0 = time.monotonic()
        self.say("every device connected; timeline starts")

    def _small_fs(self, group: str, mb: int) -> Path:
        mnt = self.workdir / f"fs-{group}"
        mnt.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"group {group}: storage_mb needs a small file system and mounting a tmpfs failed "
                               f"(run as root): {r.stderr.strip()}")  # fmt: skip
        self.mounts.append(mnt)
        return mnt

    # -- timeline --------------------------------------------------------------------
    def play(self) -> None:
        for step in self.sc.timeline:
            delay = self.t0 + step.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.say(f"t+{time.monotonic() - self.t0:5.1f}s {step.action}: {json.dumps(step.args, default=str)}")
            getattr(self, f"do_{step.action}")(step.args)
            dead = self.run.fleet.dead_workers() if self.run.fleet else []
            if dead:
                raise RuntimeError(f"fleet process {dead[0].name} died: see {dead[0].log_path}")

    def later(self, delay: float, fn: Callable[[], None], what: str) -> None:
        def run() -> None:
            self.say(f"t+{time.monotonic() - self.t0:5.1f}s end of {what}")
            fn()

        t = threading.Timer(delay, run)
        t.daemon = True
        t.start()
        self._timers.append(t)

    def _register(self, m: Model) -> int:
        from firmware_sim.modelgen import make_onnx_bundle

        bundle = make_onnx_bundle(version=m.version, epochs=m.epochs, seed=m.seed, latency_budget_ms=m.latency_budget_ms)
        return self.run.register(bundle, m.approve)

    def do_register(self, m: Model) -> None:
        self._register(m)

    def do_assign(self, version: int) -> None:
        self.run.assign(version)

    def do_rollout(self, a: dict[str, Any]) -> None:
        body = {"cohort": COHORT, "model": MODEL, "version": a["version"]}
        for k in ("stages", "thresholds"):
            if k in a:
                body[k] = a[k]
        with self.run.api() as api:
            r = api.post("/v1/rollouts", json=body)
            if r.status_code >= 400:
                raise RuntimeError(f"rollout refused: HTTP {r.status_code}: {r.text[:300]}")
            self.rollout_id = int(r.json()["id"])

    def do_experiment(self, a: dict[str, Any]) -> None:
        body = {"name": a.get("name", "sim"), "cohort": COHORT, "model": MODEL, **{k: v for k, v in a.items() if k != "name"}}
        with self.run.api() as api:
            r = api.post("/v1/experiments", json=body)
            if r.status_code >= 400:
                raise RuntimeError(f"experiment refused: HTTP {r.status_code}: {r.text[:300]}")

    def do_drift(self, a: dict[str, Any]) -> None:
        assert self.run.fleet is not None
        self.run.fleet.drift(a["kind"], float(a.get("level", 0.0)), group=a.get("group"))
        self.drift_at = time.time() if a["kind"] != "none" else 0.0

    def do_network(self, a: dict[str, Any]) -> None:
        self._relay(a["group"]).set(a["mode"])

    def _relay(self, group: str) -> Any:
        assert self.run.fleet is not None
        relay = self.run.fleet.relays.get(group)
        if relay is None:
            raise RuntimeError(f"group {group} has no relay: set 'relay: true' on it for network faults")
        return relay

    def do_wait(self, a: dict[str, Any]) -> None:
        timeout = float(a.get("timeout_s", 120))
        if "seconds" in a:
            time.sleep(float(a["seconds"]))
        elif "all_on" in a:
            v = int(a["all_on"])
            self.run.wait_versions(lambda got: got == v, timeout, f"every device on v{v}")
        elif "rollout" in a:
            want = tuple(a["rollout"]) if isinstance(a["rollout"], list) else (str(a["rollout"]),)
            self._until(lambda: self._rollout().get("state") in want, timeout, f"rollout in {want}")
        elif "drift_detected" in a:
            self._until(self._drift_detected, timeout, "drift detected by the controller")
        elif "paused" in a:
            self._until(lambda: self._paused(str(a["paused"])), timeout, f"group {a['paused']} paused")

    def _until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(1.0)

    def _rollout(self) -> dict[str, Any]:
        if self.rollout_id is None:
            return {}
        with self.run.api() as api:
            return dict(api.get(f"/v1/rollouts/{self.rollout_id}").json())

    def _drift_detected(self) -> bool:
        """The controller's drift report over the windows since the drift was injected flags the dataset."""
        since = int(self.drift_at) + 1 if self.drift_at else 0
        with self.run.api() as api:
            r = api.get("/v1/monitoring/drift", params={"model": MODEL, "since": since})
            if r.status_code >= 400:
                return False
            return any(d.get("dataset_drift") for d in r.json())

    def _paused(self, group: str) -> bool:
        assert self.run.fleet is not None
        root = self.run.fleet.groups[group].data_root or (self.workdir / "devices")
        return all((root / d.id / "paused").exists() for d in self.run.fleet.groups[group].devices)

    def do_fault(self, a: dict[str, Any]) -> None:
        kind = a["kind"]
        dur = float(a.get("duration_s", 10))
        fleet, run = self.run.fleet, self.run
        assert fleet is not None and run.broker is not None and run.http is not None
        if kind == "broker_outage" and a.get("mode", "restart") == "hang":
            proc = run.broker.proc
            assert proc is not None
            proc.send_signal(signal.SIGSTOP)  # connections stay open, nothing answers: keep-alives decide
            self.later(dur, lambda: proc.send_signal(signal.SIGCONT), "broker hang")
        elif kind == "broker_outage":
            run.broker.stop()
            self.later(dur, run.broker.start, "broker outage")
        elif kind == "partition":
            relay = self._relay(a["group"])
            relay.set("partition")
            self.later(dur, lambda: relay.set("up"), f"partition of {a['group']}")
        elif kind == "flapping":
            relay = self._relay(a["group"])
            period = float(a.get("period_s", 3))
            end = time.monotonic() + dur

            def flap() -> None:
                down = False
                while time.monotonic() < end:
                    down = not down
                    relay.set("partition" if down else "up")
                    if down:
                        relay.drop_connections()
                    time.sleep(period)
                relay.set("up")

            threading.Thread(target=flap, daemon=True).start()
        elif kind in ("corrupt_download", "truncated_download"):
            run.http.set("corrupt" if kind == "corrupt_download" else "truncate")
            self.later(dur, lambda: run.http.set("up") if run.http else None, kind)  # type: ignore[func-returns-value]
        elif kind == "slow_link":
            relay = run.http if a.get("http") else self._relay(a["group"])
            relay.set("slow", rate=float(a.get("rate", 4096)))
            self.later(dur, lambda: relay.set("up"), "slow link")
        elif kind == "power_loss":
            group = a["group"]
            self._until(lambda: self._paused(group), float(a.get("timeout_s", 120)), f"group {group} at its pause point")
            fleet.kill(group)
            self.power_cut_groups.add(group)
            self.say(f"  power cut: SIGKILL of group {group}'s processes; restarting them")
            fleet.restart(group)
        elif kind == "disk_full":
            group = a["group"]
            root = fleet.groups[group].data_root
            if root is None:
                raise RuntimeError(f"group {group} has no storage_mb: disk_full needs its small file system")
            filler = root / "filler"
            _fill(filler)
            self.fillers[group] = filler
            self.later(dur, lambda: filler.unlink(missing_ok=True), f"disk full on {group}")

    # -- checks ----------------------------------------------------------------------
    def checks(self) -> list[CheckResult]:
        return [*self.early, *(self.check(name, args) for name, args in self.sc.checks)]

    def check(self, name: str, args: Any) -> CheckResult:
        try:
            ok, detail = getattr(self, f"check_{name}")(args)
        except Exception as exc:  # a check that cannot be made is a failed check
            ok, detail = False, f"could not check: {type(exc).__name__}: {exc}"
        return CheckResult(name if args is None else f"{name} {json.dumps(args)}", ok, detail)

    def do_check(self, spec: tuple[str, Any]) -> None:
        r = self.check(*spec)
        r = CheckResult(f"{r.name} (at t+{time.monotonic() - self.t0:.0f}s)", r.ok, r.detail)
        self.say(f"  {'PASS' if r.ok else 'FAIL'}  {r.name}: {r.detail}")
        self.early.append(r)

    def check_verified_model(self, _: Any) -> tuple[bool, str]:
        """No device without a verified model: the controller sees one in production, of a registered hash."""
        registered = {v["sha256"] for v in self.run.versions.values()}
        bad = []
        stats = self.run.fleet.stats() if self.run.fleet else {}
        for dev, d in self.run.devices().items():
            prod = d["actual"].get("production")
            if not prod or prod.get("sha256") not in registered:
                bad.append(f"{dev}: {prod and prod.get('sha256', '')[:12]}")
            elif stats.get(dev, {}).get("sha256") not in (None, prod.get("sha256")):
                bad.append(f"{dev}: reports {prod['sha256'][:12]} but serves {stats[dev]['sha256'][:12]}")
        n = len(self.run.fleet.device_ids) if self.run.fleet else 0
        return (not bad, f"{n - len(bad)}/{n} devices serve a registered, verified bundle" + (f"; not: {bad[:5]}" if bad else ""))

    def check_no_window_lost(self, _: Any) -> tuple[bool, str]:
        """Every window a device committed (its record of seqs) is stored by the controller (its dedupe cursor)."""
        fleet = self.run.fleet
        assert fleet is not None and self.run.controller is not None
        seqs = fleet.window_seqs()
        telemetry = self.sc.agent.get("telemetry", {})
        window = float(telemetry.get("window_s", 60))
        batch = int(telemetry.get("windows_per_publish", TelemetryConfig().windows_per_publish))  # ADR 0076: they wait
        db = self.run.controller.data_dir / "controller.db"
        deadline = time.monotonic() + max(30.0, (3 + batch) * window)
        while True:
            has = stored_seqs(db, fleet.device_ids)
            missing = {d: [q for q in qs if not has[d](q)] for d, qs in seqs.items()}
            missing = {d: m for d, m in missing.items() if m}
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(2.0)
        total = sum(len(q) for q in seqs.values())
        lost = sum(len(m) for m in missing.values())
        detail = f"{total - lost}/{total} windows stored"
        if missing:
            stats = fleet.stats()
            waiting = sum(len(set(m) & set(stats.get(d, {}).get("pending_seqs", []))) for d, m in missing.items())
            some = ", ".join(f"{d}: {m[:5]}" for d, m in list(missing.items())[:3])
            detail += (f"; missing {lost}: {waiting} still queued on their devices, {lost - waiting} acknowledged by "
                       f"the broker and never stored (e.g. {some})")  # fmt: skip
        return (total > 0 and not missing, detail)

    def check_all_on(self, version: Any) -> tuple[bool, str]:
        got = self.run.actual_versions()
        off = {d: v for d, v in got.items() if v != int(version)}
        return (
            not off,
            f"{len(got) - len(off)}/{len(got)} devices on v{version}"
            + (f"; others: {dict(list(off.items())[:5])}" if off else ""),
        )

    def check_split(self, versions: Any) -> tuple[bool, str]:
        want = {int(v) for v in versions}
        got = self.run.actual_versions()
        counts = {v: sum(1 for x in got.values() if x == v) for v in sorted(want)}
        others = {d: v for d, v in got.items() if v not in want}
        ok = not others and all(counts.values())
        return ok, f"devices per version {counts}" + (f"; on others: {dict(list(others.items())[:5])}" if others else "")

    def check_rollout_completed(self, _: Any) -> tuple[bool, str]:
        r = self._rollout()
        return (r.get("state") == "COMPLETED", f"rollout {self.rollout_id}: {r.get('state')} {r.get('reason', '')[:160]}")

    def check_rollout_rolled_back(self, args: Any) -> tuple[bool, str]:
        """Rolled back; with ``within_intervals``, within that many analysis intervals of the end of the first
        telemetry window in which a canary served the candidate (as ``scripts/bench.py rollout`` measures it)."""
        within = (args or {}).get("within_intervals")
        r = self._rollout()
        if r.get("state") != "ROLLED_BACK":
            return False, f"rollout {self.rollout_id}: {r.get('state')} ({r.get('reason', '')[:160]})"
        interval = float(self.sc.controller.get("rollout_interval_s", 60))
        decided = min((_ts(d["at"]) for d in r.get("decisions", []) if d.get("verdict") == "fail"), default=None)
        first_end = self._first_candidate_window_end(int(r["id"]), int(r["candidate_version"]))
        if decided is None or first_end is None:
            return within is None, f"rolled back, when unknown (decision {decided}, first canary window end {first_end})"
        took = (decided - first_end) / interval
        why = r.get("reason", "")[:120]
        detail = f"rolled back {took:.1f} intervals ({interval:g} s each) after the first canary window ended: {why}"
        return (within is None or took <= float(within), detail)

    def _first_candidate_window_end(self, rollout_id: int, version: int) -> float | None:
        assert self.run.controller is not None
        db = sqlite3.connect(f"file:{self.run.controller.data_dir / 'controller.db'}?mode=ro", uri=True, timeout=30)
        try:
            rows = db.execute(
                "SELECT window_start, window_s, roles FROM rolloutwindow WHERE rollout_id = ?", (rollout_id,)
            ).fetchall()
        finally:
            db.close()
        ends = [ws + wl for ws, wl, roles in rows if (json.loads(roles).get("production") or {}).get("version") == version]
        return min(ends, default=None)

    def check_drift_detected(self, _: Any) -> tuple[bool, str]:
        ok = self._drift_detected()
        return ok, "the controller's drift check flags the drifted inputs" if ok else "no drift flagged by the controller"

    def check_no_worker_crash(self, _: Any) -> tuple[bool, str]:
        fleet = self.run.fleet
        assert fleet is not None
        dead = [w.name for w in fleet.workers if not w.alive()]
        return (not dead, f"{len(fleet.workers)} fleet processes alive" if not dead else f"dead: {dead}")

    def check_app_served(self, args: Any) -> tuple[bool, str]:
        share = float((args or {}).get("min_share", 0.9))
        s = self.run.fleet.stats() if self.run.fleet else {}
        calls = sum(v["calls"] for v in s.values())
        errors = sum(v["errors"] for v in s.values())
        got = 1 - errors / calls if calls else 0.0
        return (got >= share, f"{calls - errors}/{calls} app predictions served ({got:.1%}, need {share:.0%})")

    def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        self.run.stop()
        for mnt in self.mounts:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(path: Path) -> None:
    """Write until the file system is full (unbuffered: nothing is left to fail at close)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 20, 64 << 10, 4096, 512):
            block = b"\0" * size
            try:
                while os.write(fd, block):
                    pass
            except OSError:
                continue
    finally:
        os.close(fd)


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def play(sc: Scenario, workdir: Path, say: Say = print, keep: bool = False) -> list[CheckResult]:
    """Play ``sc`` in ``workdir`` (emptied first); the check results (setup or timeline errors are a failed check)."""
    shutil.rmtree(workdir, ignore_errors=True)
    p = Player(sc, workdir, say)
    results: list[CheckResult] = []
    try:
        p.setup()
        p.play()
        if sc.settle_s:
            say(f"t+{time.monotonic() - p.t0:5.1f}s settling {sc.settle_s:.0f}s")
            time.sleep(sc.settle_s)
        results = p.checks()
    except Exception as exc:
        results = [CheckResult("scenario ran to the end", False, f"{type(exc).__name__}: {exc}")]
        if p.run.fleet is not None:
            for name, text in p.run.fleet.logs(1500):
                if "Traceback" in text or "ERROR" in text:
                    say(f"--- {name}\n{text}")
    finally:
        p.stop()
        if not keep and all(r.ok for r in results):
            shutil.rmtree(workdir, ignore_errors=True)
    return results
