"""Monitoring end to end: real agents serve a real int8 model; a sensor drift is injected; the
controller's leader raises a drift alert with its evidence; labels that a local app reports
late count for the window of the prediction they belong to.

Processes: Mosquitto, the controller (``python -m controller``) and two agents
(``python -m agent``), talking MQTT and HTTP as in a deployment. Windows are short
(agents 1 s, controller aggregates 2 s) so the test takes seconds, not minutes.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from agent.localapi.client import AgentClient
from firmware_sim.modelgen import load_digits
from firmware_sim.procs import start_agent, start_controller

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
AGENT_CFG = "[health]\nlive_window = 0.5\n[telemetry]\nwindow_s = 1.0\n"
CONTROLLER_ENV = {
    "EDGEFLEET_TELEMETRY_WINDOW_S": "2",
    "EDGEFLEET_MONITOR_INTERVAL_S": "1",
    "EDGEFLEET_MONITOR_DRIFT_WINDOWS": "2",
}
DEVICES = ("mon-1", "mon-2")
OFFSET = 0.4  # the injected sensor drift: every pixel reads this much too bright


def wait(what: str, cond, timeout: float = 60.0, every: float = 0.25):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


class Traffic:
    """A local app on each device: predicts continuously on digits, with an optional sensor offset."""

    def __init__(self, agents: list, x: np.ndarray) -> None:
        self.agents, self.x = agents, x
        self.offset = 0.0
        self.stop = threading.Event()
        self.log: list[tuple[str, str, float, int]] = []  # device, prediction id, time, row of x
        self.threads = [threading.Thread(target=self.run, args=(a,), daemon=True) for a in agents]

    def run(self, agent) -> None:  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(hash(agent.device_id) % 2**32)
        with AgentClient(agent.socket_path) as client:
            while not self.stop.is_set():
                i = int(rng.integers(len(self.x)))
                row = np.clip(self.x[i] + self.offset, 0.0, 1.5)
                out = client.predict(row[None, :].tolist())
                if out.get("ok"):
                    self.log.append((agent.device_id, out["prediction_id"], time.time(), i))
                time.sleep(0.004)

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


@pytest.fixture
def stack(mosquitto, tmp_path, make_bundle):
    controller = start_controller(tmp_path, broker_host=mosquitto.host, broker_port=mosquitto.port, env=CONTROLLER_ENV)
    agents = []
    try:
        with controller.client() as api:
            assert api.post("/v1/models", content=make_bundle(1)).status_code == 201
            controller.approve("digits", 1)
            key = api.get("/v1/trust").json()["director_public_key"]
            for d in DEVICES:
                assert api.post("/v1/devices", json={"id": d}).status_code == 201
                agents.append(
                    start_agent(
                        tmp_path,
                        d,
                        broker_host=mosquitto.host,
                        broker_port=mosquitto.port,
                        director_keys=[key],
                        controller_url=controller.url,
                        extra=AGENT_CFG,
                    )
                )
                assert api.put(f"/v1/devices/{d}/desired", json={"model": "digits", "version": 1}).status_code == 200
            for d in DEVICES:
                wait(
                    f"{d} serving v1",
                    lambda d=d: api.get(f"/v1/devices/{d}").json()["actual"].get("production", {}).get("version") == 1,
                )
        yield controller, agents
    finally:
        for a in agents:
            a.stop()
        controller.stop()


def test_injected_sensor_drift_raises_an_alert_with_evidence_and_late_labels_join_their_window(stack):
    controller, agents = stack
    x, y = load_digits()
    with controller.client() as api:
        check_drift_alert_and_late_labels(api, agents, x, y)


def check_drift_alert_and_late_labels(api, agents, x, y) -> None:  # type: ignore[no-untyped-def]
    with Traffic(agents, x) as traffic:
        time.sleep(6)  # clean traffic: several complete windows
        clean_until = time.time()
        firing = api.get("/v1/monitoring/alerts", params={"state": "firing", "kind": "drift"}).json()
        assert firing == [], f"drift alarm on clean traffic: {firing}"
        clean = [e for e in traffic.log if e[2] < clean_until - 0.5]

        traffic.offset = OFFSET
        injected = time.time()
        alert = wait(
            "a drift alert",
            lambda: next(iter(api.get("/v1/monitoring/alerts", params={"state": "firing", "kind": "drift"}).json()), None),
            timeout=60,
        )
        detected_after = time.time() - injected
    assert alert["key"] == "drift/digits/*/production/v1" and alert["model"] == "digits"
    ev = alert["evidence"]
    assert ev["drifted_features"] >= ev["features_tested"] // 2 > 0
    top = ev["top_features"][0]
    assert top["name"].startswith("px") and top["psi"] > top["psi_threshold"] and top["js"] > top["js_threshold"]
    assert ev["device_windows"] >= 2 and ev["windows"][0] <= ev["windows"][1]
    assert detected_after < 30, f"drift took {detected_after:.1f}s to alert"
    audit = api.get("/v1/audit", params={"action": "monitor.alert.fired"}).json()
    assert any(e["subject"] == alert["key"] and e["evidence"]["top_features"] for e in audit)
    since = int(injected) // 2 * 2  # the aggregate window the drift began in
    drift = wait("drift windows", lambda: api.get("/v1/monitoring/drift", params={"model": "digits", "since": since}).json())
    assert drift[0]["dataset_drift"] and drift[0]["drift_share"] > 0.5

    # A local app reports true labels for 30 clean-phase predictions, long after their windows closed.
    labelled = clean[:30]
    assert len(labelled) == 30
    by_device: dict[str, list] = {}
    for device, pid, _, i in labelled:
        by_device.setdefault(device, []).append((pid, i))
    agent_of = {a.device_id: a for a in agents}
    correct = 0
    for device, items in by_device.items():
        with AgentClient(agent_of[device].socket_path) as client:
            for pid, i in items:
                r = client.feedback(pid, int(y[i]))
                assert r["ok"], r
                correct += int(r["correct"])
    labels_sent = time.time()

    def joined():  # type: ignore[no-untyped-def]
        acc = api.get("/v1/monitoring/accuracy", params={"model": "digits"}).json()
        return acc if acc["labels"] == 30 else None

    acc = wait("the late labels at the controller", joined, timeout=30)
    windows = [w for w in acc["windows"] if w["labels"]]
    assert sum(w["correct"] for w in windows) == correct
    first_prediction = min(t for _, _, t, _ in labelled)
    # Each label counts for its prediction's window, not the label's arrival (well after clean_until). A prediction at t
    # lies in an agent window (1 s, longer when the machine is loaded) that starts on the controller's 2 s grid: ≥ t - 4.
    for w in windows:
        assert first_prediction - 4 <= w["window_start"] <= clean_until, (w, labels_sent)
        assert w["version"] == 1 and w["estimated"] is not None
