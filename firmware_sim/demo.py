"""``make demo``: the whole loop on one machine, with real processes and real agents.

A private Mosquitto with mTLS, the controller on SQLite, ~50 simulated devices (Raspberry Pi 4/5,
Jetson Orin Nano profiles) running the real agent, enrolled with one-time tokens, with cameras
and local apps that send raw frames and report labels; the agents capture samples for retraining:

1. a trained int8 digits model is delivered to every device (signed, verified, health-checked);
2. a staged canary rollout of a bad candidate is rolled back automatically;
3. a staged canary rollout of a good candidate is promoted to every device;
4. the cameras age (brighter, noisier, blurred, askew); the controller's monitoring detects it;
5. the controller's pipeline decides by itself to retrain, builds a dataset from the samples the
   devices captured and labelled, trains and quantizes an int8 model, evaluates it against the
   fleet's model and registers it when the blessing gate passes (``demo_retrain``); approved,
   it is canaried and promoted to every device. No blessed model: the demo fails and says why.

A live terminal view shows devices, stages and drift while it runs; the summary gives
the web console's URL and the demo keeps running until Ctrl-C (``--no-wait`` ends it).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from firmware_sim.demo_retrain import PIPELINE_SETTINGS, PipelineWatch, capture, decision_line, run_report, run_summary
from firmware_sim.fleet import GroupSpec
from firmware_sim.simrun import COHORT, MODEL, SimRun, devices_for

console = Console()
PROFILES = {"rpi4": 0.4, "rpi5": 0.4, "jetson-orin-nano": 0.2}
STAGES = [
    {"share": 0.1, "min_duration_s": 6, "min_devices": 2, "min_inferences": 60, "max_duration_s": 600},
    {"share": 0.5, "min_duration_s": 6, "min_devices": 2, "min_inferences": 60, "max_duration_s": 600},
    {"share": 1.0, "min_duration_s": 2},
]
THRESHOLDS = {"min_labels": 30, "fail_min_inferences": 30, "max_accuracy_drop": 0.05, "latency_min_samples": 10**9,
              "max_prediction_shift": 0.5}  # fmt: skip
# An ageing sensor: the incumbent falls from ~93 % to ~77 % on it, a model retrained on what the fleet
# captured gets ~96 %, so the retrained candidate's rollout is judged on a real difference, not on noise.
DRIFT_KIND, DRIFT_LEVEL = "aged", 1.0


class View:
    """What the live view shows, refreshed from the fleet and the controller once a second."""

    def __init__(self, sim: SimRun, devices: int) -> None:
        self.sim = sim
        self.devices = devices
        self.phase = "starting"
        self.lines: deque[str] = deque(maxlen=12)  # the pipeline's progress fits
        self.rollouts: list[dict[str, Any]] = []
        self.versions: Counter[Any] = Counter()
        self.profiles: Counter[str] = Counter()
        self.connected = 0
        self.accuracy: float | None = None
        self.calls_per_s = 0.0
        self.drift: dict[int, tuple[float, bool]] = {}
        self.injected = "none"
        self.pipeline = "-"
        self._calls = (time.monotonic(), 0)
        self.error = ""  # why the last refresh failed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="demo-view", daemon=True)

    def log(self, msg: str) -> None:
        self.lines.append(msg)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.refresh()
            except Exception as exc:  # the controller is starting or busy: keep the last view
                self.error = f"{type(exc).__name__}: {exc}"

    def refresh(self) -> None:
        fleet = self.sim.fleet
        if fleet is None:
            return
        stats = fleet.stats()
        self.connected = sum(1 for v in stats.values() if v.get("connected"))
        self.versions = Counter(v.get("version") for v in stats.values())
        labels = sum(v.get("labels", 0) for v in stats.values())
        correct = sum(v.get("correct", 0) for v in stats.values())
        self.accuracy = correct / labels if labels else None
        calls = sum(v.get("calls", 0) for v in stats.values())
        at, before = self._calls
        now = time.monotonic()
        if now - at >= 5:
            self.calls_per_s = (calls - before) / (now - at)
            self._calls = (now, calls)
        with self.sim.api() as api:
            self.rollouts = list(api.get("/v1/rollouts").json())[-4:]
            r = api.get("/v1/monitoring/drift", params={"model": MODEL, "since": int(time.time()) - 30})
            if r.status_code == 200:
                self.drift = {int(d["version"]): (float(d["drift_share"]), bool(d["dataset_drift"])) for d in r.json()}
            runs = api.get("/v1/pipeline/runs", params={"model": MODEL, "limit": 1}).json()
            if runs:
                self.pipeline = f"run {runs[0]['id']} {runs[0]['state']}"

    def render(self) -> Any:
        head = Table.grid(padding=(0, 2))
        head.add_row(
            f"[bold]{self.phase}[/]",
            f"devices {self.connected}/{self.devices} connected",
            f"apps {self.calls_per_s:.0f} predictions/s",
            f"label accuracy {self.accuracy:.1%}" if self.accuracy is not None else "label accuracy -",
            f"camera drift: {self.injected}",
            f"pipeline: {self.pipeline}",
        )
        versions = Table("version", "devices", "drift share (last 30 s)", title="fleet (what devices report)", expand=True)
        for v, n in sorted(self.versions.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
            share, flagged = self.drift.get(v, (0.0, False)) if v is not None else (0.0, False)
            drift = f"[red]{share:.0%} drifted[/]" if flagged else f"{share:.0%}"
            versions.add_row("none yet" if v is None else f"{MODEL} v{v}", str(n), drift if v is not None else "-")
        stages = Table("rollout", "candidate", "state", "stage", "share", "why", title="rollouts", expand=True)
        for r in self.rollouts:
            colour = {"ROLLED_BACK": "red", "COMPLETED": "green"}.get(r["state"], "yellow")
            cand = f"v{r['candidate_version']} (from v{r['baseline_version']})"
            stage = f"{r['stage']}/{len(r['stages'])}"
            why = (r.get("reason") or "")[:70]
            stages.add_row(str(r["id"]), cand, f"[{colour}]{r['state']}[/]", stage, f"{r['stage_share']:.0%}", why)
        return Panel(Group(head, versions, stages, Panel("\n".join(self.lines), title="story")), title="edgefleet demo")


class Demo:
    def __init__(self, devices: int, workdir: Path, live: bool) -> None:
        self.devices = devices
        self.workdir = workdir
        self.live = live
        self.sim = SimRun(
            workdir,
            controller_env={
                "EDGEFLEET_TELEMETRY_WINDOW_S": "3",
                "EDGEFLEET_ROLLOUT_INTERVAL_S": "2",
                "EDGEFLEET_MONITOR_INTERVAL_S": "3",
                "EDGEFLEET_MONITOR_DRIFT_WINDOWS": "2",
                **PIPELINE_SETTINGS,
            },
            agent={
                "telemetry": {"window_s": 3},
                "download": {"retry_base_s": 2, "retry_max_s": 10},
                "capture": capture(devices),  # to the controller's public URL, signed with the device's enrolled key
            },
            start_spread_s=min(20.0, devices / 10),
            secure=True,  # mTLS broker; devices enrol with one-time tokens
        )
        self.view = View(self.sim, devices)
        self.summary: list[str] = []
        self.started = time.monotonic()

    def say(self, msg: str) -> None:
        msg = f"{time.monotonic() - self.started:4.0f}s  {msg}"
        self.view.log(msg)
        if not self.live:
            console.print(msg)

    def phase(self, text: str) -> None:
        self.view.phase = text
        self.say(f"[bold]{text}[/]")

    # -- the story -----------------------------------------------------------------
    def tell(self) -> None:
        from firmware_sim.modelgen import make_onnx_bundle

        sim = self.sim
        self.phase("starting Mosquitto and the controller (SQLite)")
        sim.start_stack()
        assert sim.controller is not None and sim.broker is not None
        self.say(f"controller {sim.controller.url}, broker 127.0.0.1:{sim.broker.port} (mTLS, the controller's device CA)")
        self.phase("training int8 digits models")
        v1 = sim.register(make_onnx_bundle(version=1, epochs=60, latency_budget_ms=1000.0))
        bad = sim.register(make_onnx_bundle(version=2, epochs=1, latency_budget_ms=1000.0))
        good = sim.register(make_onnx_bundle(version=3, epochs=63, seed=1, latency_budget_ms=1000.0))
        self.say(f"registered and approved v{v1}, v{bad} (1 training epoch: a bad candidate) and v{good}")
        self.phase(f"starting {self.devices} simulated devices")
        procs = max(1, min(4, self.devices // 100 + 1))
        app = {"rate_hz": 4.0, "label_rate": 0.8, "label_delay_s": 0.5, "raw": True}
        fleet = sim.start_fleet([GroupSpec("dev", devices_for("dev", self.devices, PROFILES, app), processes=procs)])
        fleet.wait(lambda s: len(s) == self.devices and all(v["connected"] for v in s.values()), 300, "every device connected")
        mix = Counter(d.profile for d in fleet.groups["dev"].devices)
        self.say(
            f"{self.devices} real agents in {procs} processes, each enrolled with a one-time token (its own key and "
            "certificate) and on its own mTLS connection: " + ", ".join(f"{n} {p}" for p, n in mix.items())
        )
        self.say("their apps send raw camera frames and labels; the agents capture samples for retraining")

        self.phase(f"delivering digits v{v1} to every device")
        sim.assign(v1)
        sim.wait_versions(lambda v: v == v1, 300, f"every device on v{v1}")
        self.say(f"every device verified (Ed25519 + TUF), health-checked and serves v{v1}")

        self.phase(f"canary rollout of v{bad} (the bad candidate)")
        r = self.rollout(bad)
        self.say(f"rollout {r['id']}: [red]{r['state']}[/] {r['reason'][:100]}")
        sim.wait_versions(lambda v: v == v1, 120, f"every device back on v{v1}")
        self.summary.append(f"bad candidate v{bad}: {r['state']} — {r['reason'][:100]}")

        self.phase(f"canary rollout of v{good} (a good candidate)")
        r = self.completed(self.rollout(good))
        self.say(f"rollout {r['id']}: [green]{r['state']}[/]")
        sim.wait_versions(lambda v: v == good, 120, f"every device on v{good}")
        self.summary.append(f"good candidate v{good}: {r['state']}, on every device")

        self.phase("drift: the cameras age (brighter, noisier, blurred, knocked askew)")
        fleet.drift(DRIFT_KIND, DRIFT_LEVEL)
        self.view.injected = f"{DRIFT_KIND} {DRIFT_LEVEL}"
        drift_at = time.time()
        detected = self.wait_drift(good, drift_at, 120)
        self.say(f"the controller's monitoring flags v{good}'s inputs: {detected:.0%} of features drifted")
        self.summary.append(
            f"drift injected ({DRIFT_KIND} sensor), detected by the controller after {time.time() - drift_at:.0f} s"
        )
        self.retrain(good, drift_at)

    def retrain(self, incumbent: int, drift_at: float) -> None:
        """The controller's pipeline decides, builds the dataset, trains, evaluates, registers; the demo approves
        on the evidence and canaries the new version to every device."""
        sim, watch = self.sim, PipelineWatch(self.sim.api, self.say, MODEL)
        assert sim.controller is not None
        self.phase("the controller's retraining policy watches the captured samples")
        d = watch.retrain_decision(drift_at, 240)
        self.say(decision_line(d))
        run_id = int(d["run_id"])
        self.phase(f"pipeline run {run_id}: dataset, quality gate, TensorFlow training, int8, evaluation")
        run = watch.follow(run_id, 600)
        for line in run_report(run):  # PipelineFailed with the controller's reasons when nothing was registered
            self.say(line)
        retrained = int(run["version"])
        if run["parent_version"] != incumbent:
            self.say(f"[yellow]note: the pipeline compared with v{run['parent_version']}, the fleet runs v{incumbent}[/]")
        self.summary.append(
            f"pipeline run {run_id} ({d['trigger']} trigger, decided {d['at'] - drift_at:.0f} s after the drift): "
            + run_summary(run)
        )
        ev = watch.evidence(retrained)
        verdict = ev.get("verdict") or {}
        sim.controller.approve(MODEL, retrained, reason=f"pipeline run {run_id}: {'; '.join(verdict.get('reasons', []))}")
        self.say(f"approved v{retrained} (registered by 'pipeline'; approved by a person, on its evidence)")

        self.phase(f"canary rollout of the retrained v{retrained}")
        r = self.completed(self.rollout(retrained))
        sim.wait_versions(lambda v: v == retrained, 120, f"every device on v{retrained}")
        self.say(f"rollout {r['id']}: [green]{r['state']}[/]; every device on v{retrained}")
        self.summary.append(f"retrained v{retrained}: {r['state']}, on every device")
        self.phase("done: the loop closed")

    def rollout(self, version: int) -> dict[str, Any]:
        with self.sim.api() as api:
            r = api.post(
                "/v1/rollouts",
                json={"cohort": COHORT, "model": MODEL, "version": version, "stages": STAGES, "thresholds": THRESHOLDS},
            )
            if r.status_code >= 400:
                raise RuntimeError(f"rollout refused: HTTP {r.status_code}: {r.text[:300]}")
            rid = int(r.json()["id"])
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with self.sim.api() as api:
                got = dict(api.get(f"/v1/rollouts/{rid}").json())
            if got["state"] in ("ROLLED_BACK", "COMPLETED", "PAUSED", "HALTED"):  # each waits for a person or is final
                return got
            time.sleep(1.0)
        raise TimeoutError(f"rollout {rid} did not finish in 300 s")

    def completed(self, r: dict[str, Any]) -> dict[str, Any]:
        """A good candidate's rollout that did not complete ends the demo with the controller's reason."""
        if r["state"] != "COMPLETED":
            self.say(f"rollout {r['id']}: [red]{r['state']}[/] {r.get('reason') or ''}")
            raise RuntimeError(f"rollout {r['id']} of v{r['candidate_version']} ended {r['state']}: {r.get('reason')}")
        return r

    def wait_drift(self, version: int, since: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.sim.api() as api:
                r = api.get("/v1/monitoring/drift", params={"model": MODEL, "version": version, "since": int(since) + 1})
                for d in r.json() if r.status_code == 200 else []:
                    if d["dataset_drift"]:
                        return float(d["drift_share"])
            time.sleep(2.0)
        raise TimeoutError(f"no drift detected within {timeout:.0f} s")

    def print_summary(self, ok: bool, started: float) -> None:
        c = self.sim.controller
        assert c is not None
        t = Table.grid(padding=(0, 2))
        for line in self.summary:
            t.add_row("•", line)
        t.add_row("•", f"{self.devices} devices, {time.monotonic() - started:.0f} s from start")
        t.add_row("•", f"web console: [bold]{c.url}/ui[/] (log in with the token [bold]{c.token}[/])")
        t.add_row("•", f"API: {c.url}/docs   files: {self.workdir}")
        title = "[green]demo complete[/]" if ok else "[red]demo failed[/]"
        console.print(Panel(t, title=title))


def run(devices: int = 50, workdir: Path = Path(".demo"), wait: bool = True, live: bool = True) -> int:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    live = live and console.is_terminal
    demo = Demo(devices, workdir, live)
    started = time.monotonic()
    ok = False
    live_view = Live(demo.view.render(), console=console, refresh_per_second=2, get_renderable=demo.view.render) if live else None
    try:
        if live_view is not None:
            live_view.start()
        demo.view.start()
        try:
            demo.tell()
            ok = True
        except Exception as exc:
            demo.say(f"[red]failed: {type(exc).__name__}: {exc}[/]")
        if live_view is not None:
            live_view.stop()
        demo.print_summary(ok, started)
        if wait and ok:
            console.print("the fleet keeps running; Ctrl-C ends the demo")
            with Live(console=console, refresh_per_second=1, get_renderable=demo.view.render) if live else _Null():
                while True:
                    time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        if live_view is not None:
            live_view.stop()
        demo.view.stop()
        demo.sim.stop()
    return 0 if ok else 1


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
