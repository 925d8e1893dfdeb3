"""The real telemetry path, end to end, against SQLite and PostgreSQL.

Real agent processes serve a model delivered over the air, count what their
local apps get back (calls, failed calls, predicted classes, labels), close
windows every second, encode them compactly and queue them on disk; the
agents' network link is cut for a while (the windows wait in their queues)
and comes back; the real controller process ingests, dedupes and aggregates
into the database; ``GET /v1/telemetry`` must answer exactly the sums the
agents' callers observed.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
import pytest

from agent.localapi.client import AgentClient
from firmware_sim.modelgen import load_digits
from firmware_sim.mosquitto import MosquittoProcess
from firmware_sim.procs import AgentProc, ControllerProc, start_agent, start_controller
from firmware_sim.telemetry_rx import queued_seqs
from shared.topics import Kind, device_topic
from tests.mqttwatch import Watcher
from tests.netcut import CuttableLink

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DEVICES = ("tp-1", "tp-2")
AGENT_EXTRA = "[telemetry]\nwindow_s = 1\n[health]\nlive_window = 0.5\n"


def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.1)


class Observed:
    """What the agents' callers saw, summed over devices."""

    def __init__(self) -> None:
        self.count = self.errors = self.labels = self.correct = 0
        self.classes: Counter[int] = Counter()

    def drive(self, socket_path: Any, start: int, n: int, bad: int, labelled: int) -> None:
        x, y = load_digits()
        with AgentClient(socket_path) as client:
            for i in range(start, start + n):
                out = client.predict(x[i : i + 1].tolist())
                assert out["ok"] and out["version"] == 1, out
                self.count += 1
                self.classes[int(np.argmax(out["outputs"]["probs"][0]))] += 1
                if i - start < labelled:
                    fb = client.feedback(out["prediction_id"], int(y[i]))
                    assert fb["ok"], fb
                    self.labels += 1
                    self.correct += int(fb["correct"])
            for _ in range(bad):
                assert not client.predict([[0.0] * 3])["ok"]  # wrong shape: a failed call
                self.count += 1
                self.errors += 1


def fleet_total(api: Any) -> dict[str, Any]:
    rows = api.get("/v1/telemetry", params={"model": "digits", "version": 1, "role": "production"}).json()
    total: dict[str, Any] = {"count": 0, "errors": 0, "samples": 0, "labels": 0, "correct": 0, "latency": 0, "classes": Counter()}
    for r in rows:
        s = r["summary"]
        total["count"] += r["count"]
        total["errors"] += r["errors"]
        total["samples"] += s["samples"]
        total["labels"] += s.get("labels", {}).get("count", 0)
        total["correct"] += s.get("labels", {}).get("correct", 0)
        total["latency"] += sum(s["latency_ms"])
        total["classes"].update({i: c for i, c in enumerate(s["predictions"]) if c})
    return total


def test_agents_telemetry_reaches_the_database_exactly_through_a_network_outage(tmp_path, database_url, make_bundle):
    broker = MosquittoProcess(tmp_path / "broker")
    broker.start()
    link = CuttableLink(broker.host, broker.port)  # the agents' network; the controller connects directly
    procs: list[AgentProc | ControllerProc] = []
    try:
        controller = start_controller(
            tmp_path,
            broker_host=broker.host,
            broker_port=broker.port,
            database_url=database_url,
            env={"EDGEFLEET_MQTT_CLIENT_ID": "tp-controller", "EDGEFLEET_TELEMETRY_WINDOW_S": "3600"},
        )
        procs.append(controller)
        with controller.client() as api:
            assert api.post("/v1/models", content=make_bundle(1)).status_code == 201
            controller.approve("digits", 1)
            key = api.get("/v1/trust").json()["director_public_key"]
            watch = Watcher(broker.host, broker.port, *(device_topic(d, Kind.STATUS) for d in DEVICES))
            agents = []
            for d in DEVICES:
                assert api.post("/v1/devices", json={"id": d}).status_code == 201
                agent = start_agent(
                    tmp_path,
                    d,
                    broker_host="127.0.0.1",
                    broker_port=link.port,
                    director_keys=[key],
                    controller_url=controller.url,
                    extra=AGENT_EXTRA,
                )
                procs.append(agent)
                agents.append(agent)
                assert api.put(f"/v1/devices/{d}/desired", json={"model": "digits", "version": 1}).status_code == 200
            for d in DEVICES:
                watch.wait_for(
                    lambda m, d=d: m.get("device_id") == d and m.get("models", {}).get("production", {}).get("version") == 1,
                    "/status",
                    timeout=60,
                )
            watch.close()

            seen = Observed()
            for i, agent in enumerate(agents):  # broker up
                seen.drive(agent.socket_path, start=0, n=25 + 10 * i, bad=2 + i, labelled=10)

            link.cut()  # store and forward: windows wait in each agent's on-disk queue
            for i, agent in enumerate(agents):
                before = queued_seqs(agent.data_dir)
                seen.drive(agent.socket_path, start=100, n=15 + 5 * i, bad=1, labelled=5)
                wait_until(lambda a=agent, b=before: len(queued_seqs(a.data_dir) - b) >= 2, 30, "windows queued on disk")
            link.restore()

            last: dict[str, Any] = {}

            def arrived() -> bool:
                last.update(fleet_total(api))
                return bool(last["count"] >= seen.count)

            try:
                wait_until(arrived, 90, f"aggregates reach {seen.count} calls")
            except AssertionError:
                logs = "\n".join(f"--- {p.name}\n{p.log()[-1500:]}" for p in procs)
                raise AssertionError(f"aggregates {last}, expected {seen.count} calls; logs:\n{logs}") from None
            for agent in agents:  # every queued window was acknowledged, so nothing more is coming
                wait_until(lambda a=agent: not queued_seqs(a.data_dir), 30, "agent queues drained")
            got = fleet_total(api)
        assert got["count"] == seen.count
        assert got["errors"] == seen.errors
        assert got["samples"] == seen.count - seen.errors
        assert got["latency"] == seen.count
        assert got["labels"] == seen.labels and got["correct"] == seen.correct
        assert got["classes"] == seen.classes
        assert all(a.alive() for a in procs)
    finally:
        for p in procs:
            p.stop()
        link.close()
        broker.stop()
