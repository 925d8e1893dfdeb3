"""Experiments end to end: real controller, Mosquitto and agent processes, real signed desired states.

Two versions of the digits model: v1 trained one epoch (about 72 % accurate),
v2 trained 200 epochs (about 97 %). Local apps send every prediction's true label
back with the feedback op; the agents report per-role windows every second and
the controller's leader looks at running experiments every second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.localapi.client import AgentClient
from controller.experiments.assign import assign_arm
from firmware_sim.modelgen import load_digits, make_onnx_bundle
from firmware_sim.procs import AgentProc, ControllerProc, start_agent, start_controller

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FAST = "[health]\nlive_window = 0.5\n[telemetry]\nwindow_s = 1.0\nsystem_metrics = false\n"
_BUNDLES: dict[int, bytes] = {}


def bundle(version: int) -> bytes:
    if version not in _BUNDLES:
        _BUNDLES[version] = make_onnx_bundle(version=version, epochs=1 if version == 1 else 200)
    return _BUNDLES[version]


@pytest.fixture
def controller(mosquitto: Any, tmp_path: Path) -> Iterator[ControllerProc]:
    proc = start_controller(
        tmp_path, broker_host=mosquitto.host, broker_port=mosquitto.port, env={"EDGEFLEET_EXPERIMENT_INTERVAL_S": "1"}
    )
    yield proc
    proc.stop()


def wait(cond: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = cond()
        except OSError:  # the agent's socket is not there yet
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def fleet(controller: ControllerProc, mosquitto: Any, tmp_path: Path, devices: list[str]) -> list[AgentProc]:
    with controller.client() as api:
        for v in (1, 2):
            assert api.post("/v1/models", content=bundle(v)).status_code == 201
            controller.approve("digits", v)
        for d in devices:
            assert api.post("/v1/devices", json={"id": d}).status_code == 201
        assert api.post("/v1/cohorts", json={"name": "lab", "members": devices}).status_code == 201
        key = api.get("/v1/trust").json()["director_public_key"]
    return [
        start_agent(
            tmp_path,
            d,
            broker_host=mosquitto.host,
            broker_port=mosquitto.port,
            director_keys=[key],
            controller_url=controller.url,
            extra=FAST,
        )
        for d in devices
    ]


def traffic(agent: AgentProc, n: int, offset: int = 0) -> dict[str, int]:
    """``n`` labelled predictions from a local app; how many each role served."""
    x, y = load_digits()
    served: dict[str, int] = {}
    with AgentClient(agent.socket_path) as app:
        for i in range(offset, offset + n):
            j = i % len(x)
            out = app.predict(x[j : j + 1].tolist())
            assert out["ok"], out
            served[out["role"]] = served.get(out["role"], 0) + 1
            fb = app.feedback(out["prediction_id"], int(y[j]))
            assert fb["ok"], fb
    return served


def test_bandit_shifts_weight_to_the_better_arm_through_signed_desired_states(controller, mosquitto, tmp_path):
    agents = fleet(controller, mosquitto, tmp_path, ["bandit-1", "bandit-2"])
    try:
        with controller.client() as api:
            r = api.post("/v1/experiments", json={
                "name": "bandit", "cohort": "lab", "model": "digits", "kind": "bandit", "floor": 0.05,
                "min_devices": 50,  # two devices never decide: the bandit runs until the operator stops it
                "arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2}],
            })  # fmt: skip
            assert r.status_code == 201, r.text
            eid = r.json()["id"]

            def arms_loaded(agent: AgentProc) -> bool:
                with AgentClient(agent.socket_path) as app:
                    info = app.info()
                return {"arm-a", "arm-b"} <= set(info["models"]) and info["routing"] is not None

            for a in agents:
                wait(lambda a=a: arms_loaded(a), f"{a.device_id} to install both arms and get weights")
            first = {a.device_id: traffic(a, 100) for a in agents}
            assert all(set(s) <= {"arm-a", "arm-b"} and len(s) == 2 for s in first.values()), first

            def shifted() -> dict[str, Any] | None:
                for k, a in enumerate(agents):
                    traffic(a, 60, offset=1000 + 100 * k)
                with AgentClient(agents[0].socket_path) as app:
                    routing = app.info()["routing"]
                return routing if routing and routing["weights"]["arm-b"] >= 0.8 else None

            routing = wait(shifted, "the weights to move to arm b", timeout=150)
            assert routing["experiment"] == eid and routing["weights"]["arm-a"] >= 0.05 - 1e-9
            exp = api.get(f"/v1/experiments/{eid}").json()
            assert exp["weights_version"] >= 1 and exp["weights"]["b"] >= 0.8 and exp["state"] == "RUNNING"
            late = traffic(agents[1], 200, offset=3000)
            assert late.get("arm-b", 0) > late.get("arm-a", 0) * 3, late
            audit = api.get("/v1/audit", params={"action": "experiment.weights"}).json()
            assert audit and audit[-1]["evidence"]["trials"]["b"] > 0

            # The operator ends it: v2 becomes production on both devices, the routing is cleared.
            r = api.post(f"/v1/experiments/{eid}/actions", json={"action": "promote", "arm": "b", "reason": "b wins"})
            assert r.status_code == 200, r.text

            def promoted(agent: AgentProc) -> bool:
                with AgentClient(agent.socket_path) as app:
                    info = app.info()
                    prod = info["models"].get("production")
                    return info["routing"] is None and prod is not None and prod["version"] == 2

            for a in agents:
                wait(lambda a=a: promoted(a), f"{a.device_id} to run v2 in production")
            assert traffic(agents[0], 10, offset=5000) == {"production": 10}
    finally:
        for a in agents:
            a.stop()


def test_ab_experiment_reaches_a_decision_and_promotes_the_winner(controller, mosquitto, tmp_path):
    # Two devices per arm: names whose stable hash (experiment 1, 50/50) puts them in each arm.
    names = [f"ab-{i}" for i in range(40)]
    picked = [n for n in names if assign_arm(1, n, [0.5, 0.5]) == 0][:2] + [
        n for n in names if assign_arm(1, n, [0.5, 0.5]) == 1
    ][:2]
    agents = fleet(controller, mosquitto, tmp_path, picked)
    try:
        with controller.client() as api:
            r = api.post("/v1/experiments", json={
                "name": "v2 vs v1", "cohort": "lab", "model": "digits", "min_devices": 2, "guardrails": ["error_rate"],
                "tau": 0.1,  # the effect worth detecting between these two models: decides within a few hundred labels
                "arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2}],
            })  # fmt: skip
            assert r.status_code == 201, r.text
            eid = r.json()["id"]
            assert eid == 1

            def on_arm(agent: AgentProc) -> bool:
                with AgentClient(agent.socket_path) as app:
                    prod = app.info()["models"].get("production")
                return prod is not None and prod["version"] == (1 if agent.device_id in picked[:2] else 2)

            for a in agents:
                wait(lambda a=a: on_arm(a), f"{a.device_id} to run its arm")

            def decided() -> dict[str, Any] | None:
                for k, a in enumerate(agents):
                    traffic(a, 50, offset=200 * k + int(time.time()) % 997)
                e = api.get(f"/v1/experiments/{eid}").json()
                return e if e["state"] == "COMPLETED" else None

            try:  # traffic keeps flowing while it waits; a loaded CI machine is slow to fill the windows
                exp = wait(decided, "the experiment to decide", timeout=300)
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {api.get(f'/v1/experiments/{eid}').json()}") from None
            assert exp["decision"]["decision"] == "ship" and exp["decision"]["arm"] == "b"
            assert exp["decision"]["srm"]["mismatch"] is False
            comp = next(c for c in exp["decision"]["comparisons"] if c["metric"] == "accuracy")
            assert comp["difference"]["low"] > 0
            entries = api.get("/v1/audit", params={"action": "experiment.decided"}).json()
            assert entries and entries[0]["subject"] == f"experiment:{eid}"
            for a in agents:
                wait(lambda a=a: _production_version(a) == 2, f"{a.device_id} to run the winner")
        from typer.testing import CliRunner

        from controller import cli

        out = CliRunner().invoke(cli.app, ["experiments", "show", str(eid), "--url", controller.url, "--token", controller.token])
        assert out.exit_code == 0, out.output
        assert "SRM check" in out.output and "decision: ship b (promoted b)" in out.output
        json.dumps(exp)
    finally:
        for a in agents:
            a.stop()


def _production_version(agent: AgentProc) -> int | None:
    with AgentClient(agent.socket_path) as app:
        prod = app.info()["models"].get("production")
    return None if prod is None else int(prod["version"])
