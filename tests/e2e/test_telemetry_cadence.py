"""Telemetry cadence end to end (ADR 0076): real agents, a real broker, the real controller.

Outside any rollout an agent batches its closed windows (up to ten a message, the
default); a rollout that includes it asks for each window as it closes, through the
signed desired state, and the agent publishes them one by one; when the rollout ends
the agent batches again. A bystander with a persistent session on the broker sees
every telemetry message; the controller stores every window exactly once, and none
is lost across the switches.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from agent.localapi.client import AgentClient
from firmware_sim.modelgen import make_onnx_bundle
from firmware_sim.rollout_lab import Lab, Traffic
from firmware_sim.telemetry_rx import TelemetryReceiver, queued_seqs
from tests.telemetrydb import aggregated_windows, merged_seqs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
HOLD = [{"share": 0.5, "min_duration_s": 600, "min_devices": 1, "max_duration_s": 900}, {"share": 1.0}]
THRESHOLDS = {"min_labels": 30, "fail_min_inferences": 30, "max_accuracy_drop": 0.1, "latency_min_samples": 10**9,
              "max_prediction_shift": 0.5}  # fmt: skip


def wait_for(cond: Callable[[], object], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out: {what()}"
        time.sleep(0.2)


def telemetry_status(lab: Lab, device: str) -> dict:
    agent = next(a for a in lab.agents if a.device_id == device)
    with AgentClient(agent.socket_path, timeout=5) as client:
        return dict(client.call({"op": "status"})["telemetry"])


def test_batched_outside_rollouts_fresh_inside_one_and_every_window_stored_once(mosquitto, tmp_path, make_bundle):
    lab = Lab(tmp_path, mosquitto.host, mosquitto.port, n=2, interval_s=1.0)  # 1 s windows
    taps = {d: TelemetryReceiver(mosquitto.host, mosquitto.port, d, ack=False) for d in lab.devices}  # before any agent
    traffic: Traffic | None = None
    try:
        lab.start(make_bundle(1))
        traffic = Traffic(lab.agents).start()

        # (a) no rollout: the agents batch their windows, ten a message (10 s of 1 s windows)
        for d, tap in taps.items():
            wait_for(lambda tap=tap: max(tap.sizes(), default=0) >= 8, 60, lambda tap=tap: f"a batch: {tap.sizes()}")
            assert telemetry_status(lab, d)["cadence"] == "batched"

        # (b) a rollout that includes both devices (one canary, one baseline) asks them for fresh telemetry
        v2 = lab.register(make_onnx_bundle(version=2, epochs=62, latency_budget_ms=1000.0))
        rid = lab.create(v2, HOLD, THRESHOLDS)["id"]
        holder = [f"rollout:{rid}"]
        with lab.api as api:
            assert all(api.get(f"/v1/devices/{d}").json()["sampling"]["telemetry_fresh"] == holder for d in lab.devices)
        for d, tap in taps.items():
            wait_for(lambda d=d: telemetry_status(lab, d)["fresh_for"] == holder, 30, lambda: "the signed request applied")
            since = time.time()
            wait_for(lambda tap=tap, t=since: len(tap.sizes(t)) >= 7, 30, lambda tap=tap, t=since: f"{tap.sizes(t)}")
            fresh = tap.sizes(since)[1:]  # the first may carry what waited when the request came
            assert sum(fresh) <= 1.5 * len(fresh) and max(fresh) <= 3, fresh  # one window a message (a slow step: two)
        assert lab.rollout(rid)["state"] == "RUNNING"

        # (c) the rollout ends: back to batches
        with lab.api as api:
            r = api.post(f"/v1/rollouts/{rid}/abort", json={"reason": "cadence test over"})
            assert r.status_code == 200, r.text
            assert all("telemetry_fresh" not in api.get(f"/v1/devices/{d}").json()["sampling"] for d in lab.devices)
        ended = time.time()
        for d, tap in taps.items():
            wait_for(lambda d=d: telemetry_status(lab, d)["cadence"] == "batched", 30, lambda: "back to batching")
            wait_for(lambda tap=tap: max(tap.sizes(ended), default=0) >= 8, 60, lambda tap=tap: f"{tap.sizes(ended)}")
        traffic.stop()
        traffic = None
    finally:
        if traffic is not None:
            traffic.stop()
        lab.stop()  # agents first (a clean stop sends what waits), then the controller (it commits its batch)

    time.sleep(1.0)
    db = f"sqlite:///{tmp_path}/controller/controller.db"
    roles = 0
    for d, tap in taps.items():
        seen = tap.snapshot()
        tap.close()
        assert tap.malformed == 0
        # nothing lost between agent and broker: window indices since boot have no hole (windows go oldest first)
        index = sorted(w.agent["window"] for w in seen.values())
        assert index == list(range(len(index))), f"{d}: windows missing: {sorted(set(range(index[-1])) - set(index))}"
        # every window the broker took was stored by the controller; only a last one may still wait on the device
        assert set(seen) <= merged_seqs(db, d), f"{d}: not stored: {sorted(set(seen) - merged_seqs(db, d))}"
        assert all(s > max(seen) for s in queued_seqs(tmp_path / d)), f"{d}: an older window still queued"
        roles += sum(len(w.roles) for w in seen.values())
    assert aggregated_windows(db) == roles  # merged exactly once: no window counted twice, none missing
