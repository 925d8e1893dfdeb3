"""A rollout lab: the real controller and real agents as processes, local apps sending labelled traffic.

Used by the rollout end-to-end tests and ``scripts/bench.py rollout``: devices
run digits v1, a candidate is rolled out to the cohort with short stages, and
the agents' own telemetry (errors, latency, labels) decides.
"""

from __future__ import annotations

import platform
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from agent.localapi.client import AgentClient
from firmware_sim.modelgen import load_digits
from firmware_sim.procs import AgentProc, ControllerProc, start_agent, start_controller

COHORT = "lab"
AGENT_EXTRA = "[telemetry]\nwindow_s = 1\n[health]\nlive_window = 1.0\nlive_inferences = 5\n"


class Traffic:
    """One local app per agent: a prediction every ``1 / rate_hz`` s, each followed by its true label."""

    def __init__(self, agents: list[AgentProc], rate_hz: float = 10.0) -> None:
        self.agents, self.rate_hz = agents, rate_hz
        self.calls = self.failures = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(a, i), daemon=True) for i, a in enumerate(agents)]

    def start(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self, agent: AgentProc, k: int) -> None:
        x, y = load_digits()
        i = k * 97
        while not self._stop.is_set():
            try:
                with AgentClient(agent.socket_path, timeout=5) as client:
                    while not self._stop.is_set():
                        i = (i + 1) % len(x)
                        out = client.predict(x[i : i + 1].tolist())
                        self.calls += 1
                        if out.get("ok"):
                            client.feedback(out["prediction_id"], int(y[i]))
                        else:
                            self.failures += 1
                        self._stop.wait(1 / self.rate_hz)
            except (OSError, ConnectionError, ValueError):
                self._stop.wait(0.2)  # the agent is starting or restarting; the app retries


class Lab:
    """A broker is given; the lab starts the controller and ``n`` agents in cohort ``lab`` on digits v1."""

    def __init__(self, workdir: Path, broker_host: str, broker_port: int, n: int, interval_s: float = 1.0) -> None:
        self.workdir, self.host, self.port, self.n, self.interval_s = workdir, broker_host, broker_port, n, interval_s
        self.controller: ControllerProc | None = None
        self.agents: list[AgentProc] = []
        self.devices = [f"lab-{i}" for i in range(n)]

    @property
    def api(self) -> httpx.Client:
        assert self.controller is not None
        return self.controller.client()

    def start(self, baseline: bytes) -> None:
        env = {"EDGEFLEET_ROLLOUT_INTERVAL_S": str(self.interval_s), "EDGEFLEET_TELEMETRY_WINDOW_S": "1"}
        self.controller = start_controller(self.workdir, broker_host=self.host, broker_port=self.port, env=env, timeout=120)
        with self.api as api:
            self.register(baseline)
            key = api.get("/v1/trust").json()["director_public_key"]
            for d in self.devices:
                _ok(api.post("/v1/devices", json={"id": d, "arch": platform.machine(), "hardware_class": "sim"}))
            _ok(api.post("/v1/cohorts", json={"name": COHORT, "members": self.devices}))
            for d in self.devices:
                self.agents.append(
                    start_agent(
                        self.workdir,
                        d,
                        broker_host=self.host,
                        broker_port=self.port,
                        director_keys=[key],
                        controller_url=self.controller.url if self.controller else None,
                        extra=AGENT_EXTRA,
                    )
                )
            _ok(api.put(f"/v1/cohorts/{COHORT}/desired", json={"model": "digits", "version": 1}))
        self.wait_actual(lambda v: v == 1, timeout=120, what="every device on v1")

    def register(self, bundle: bytes) -> int:
        assert self.controller is not None
        with self.api as api:
            r = api.post("/v1/models", content=bundle)
            _ok(r)
            version = int(r.json()["version"])
        self.controller.approve("digits", version)
        return version

    def actual(self) -> dict[str, int | None]:
        with self.api as api:
            out = {}
            for d in self.devices:
                prod = api.get(f"/v1/devices/{d}").json()["actual"].get("production")
                out[d] = prod["version"] if prod else None
            return out

    def wait_actual(self, ok: Any, timeout: float, what: str, devices: list[str] | None = None) -> dict[str, int | None]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.actual()
            if all(ok(got[d]) for d in devices or self.devices):
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}: {got}\n{self.logs()}")
            time.sleep(0.3)

    def create(self, version: int, stages: list[dict[str, Any]], thresholds: dict[str, Any]) -> dict[str, Any]:
        body = {"cohort": COHORT, "model": "digits", "version": version, "stages": stages, "thresholds": thresholds}
        with self.api as api:
            r = api.post("/v1/rollouts", json=body)
            _ok(r)
            return dict(r.json())

    def rollout(self, rid: int) -> dict[str, Any]:
        with self.api as api:
            return dict(api.get(f"/v1/rollouts/{rid}").json())

    def wait_rollout(self, rid: int, states: tuple[str, ...], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            r = self.rollout(rid)
            if r["state"] in states:
                return r
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout {rid} not in {states} after {timeout}s: {r['state']} {r['last_analysis']}")
            time.sleep(0.3)

    def logs(self) -> str:
        procs: list[Any] = [self.controller, *self.agents]
        return "\n".join(f"--- {p.name}\n{p.log()[-1500:]}" for p in procs if p is not None)

    def stop(self) -> None:
        for p in [*self.agents, self.controller]:
            if p is not None:
                p.stop()


def _ok(r: httpx.Response) -> None:
    if r.status_code >= 400:
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: HTTP {r.status_code}: {r.text[:500]}")
