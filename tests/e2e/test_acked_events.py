"""Device events are as durable as telemetry windows (ADR 0078).

Events (update refused, on-device rollback, retries, ...) feed rollout analysis and the
audit trail. The agent keeps each one on disk until a controller acknowledges it after
committing it, sends it again after ``ack_timeout_s``, and the controller stores a copy
once. Before, an event was handed to paho and forgotten: an agent restarted while offline
lost what paho held in memory, and the broker dropped events published while no
controller was subscribed (a SIGKILLed replica, a broker restart).

Real broker, real controller processes, real agents.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, text

from firmware_sim.mosquitto import MosquittoProcess
from firmware_sim.procs import ControllerProc, start_agent, start_controller
from firmware_sim.telemetry_rx import director_key_hex, queued_seqs
from shared.canonical import canonical_json
from shared.messages import Assignment
from shared.topics import Kind, device_topic
from tests.netcut import CuttableLink
from tests.otalab import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TELEMETRY = "[telemetry]\nwindow_s = 0.5\nsystem_metrics = false\nack_timeout_s = 1\n"


def wait_for(cond: Callable[[], object], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out: {what()}"
        time.sleep(0.1)


def stored(db_url: str, device: str, kind: str = "%") -> list[int]:
    """Seqs of the events (of ``kind``) the controller stored for ``device``, one entry per row."""
    eng = create_engine(db_url)
    try:
        with eng.connect() as c:
            q = text("SELECT seq FROM deviceevent WHERE device_id = :d AND kind LIKE :k ORDER BY seq")
            return [int(s) for (s,) in c.execute(q, {"d": device, "k": kind})]
    finally:
        eng.dispose()


def raised(log: str, kind: str = "") -> int:
    """Events (of ``kind``) an agent reported: it logs each one."""
    return log.count(f"agent.daemon: event {kind}")


def publisher(broker: MosquittoProcess) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def register(ctrl: ControllerProc, device: str) -> None:
    with ctrl.client() as api:
        assert api.post("/v1/devices", json={"id": device}).status_code == 201


def test_events_raised_while_offline_arrive_once_even_across_an_agent_restart(tmp_path: Path) -> None:
    """The device's link is cut while its updater keeps failing (the image repository is unreachable), so it
    reports ``ota.retry_scheduled`` events with nobody to send them to; it then restarts (a reboot) before the
    link is back. Every event it raised is stored by the controller once it reconnects, each once."""
    device, kind = "events-offline-1", "ota.retry_scheduled"
    broker = MosquittoProcess(tmp_path / "broker")
    broker.start()
    db_url = f"sqlite:///{tmp_path}/controller/controller.db"
    ctrl = start_controller(tmp_path, broker_host=broker.host, broker_port=broker.port, database_url=db_url)
    link = CuttableLink(broker.host, broker.port)  # the device's network path to the broker
    lab = Lab(tmp_path / "lab")
    repo_url = lab.server.url
    lab.server.close()  # the image repository is down: every update attempt fails and is retried
    pub = publisher(broker)
    agent = None
    try:
        register(ctrl, device)
        agent = start_agent(
            tmp_path, device, broker_host="127.0.0.1", broker_port=link.port, director_keys=[lab.director_key_hex],
            image_repo=(f"{repo_url}/metadata/", lab.repo.root_bytes(1)),
            extra=TELEMETRY + "[download]\nretry_base_s = 0.3\nretry_max_s = 0.6\n",
        )  # fmt: skip
        a = Assignment(model="digits", version=2, sha256="ab" * 32, length=1000, url=f"{repo_url}/bundles/x.tar")
        desired = lab.director.sign_desired(device, 1, {"production": a}, 3600)
        pub.publish(device_topic(device, Kind.DESIRED), canonical_json(desired), qos=1, retain=True)
        wait_for(lambda: stored(db_url, device, kind), 30, lambda: f"no {kind} event stored; agent log:\n{agent.log()[-2000:]}")

        link.cut()
        at_cut = raised(agent.log(), kind)
        wait_for(lambda: raised(agent.log(), kind) >= at_cut + 3, 30, lambda: "no events raised while offline")
        agent.stop()  # a reboot while offline: nothing is kept in memory across it
        unsent = queued_seqs(agent.data_dir, "events") - set(stored(db_url, device))  # on the device's disk

        link.restore()
        agent = start_agent(tmp_path, device, config_path=agent.config_path)
        wait_for(
            lambda: unsent <= set(stored(db_url, device)),
            30,
            lambda: f"never stored: {sorted(unsent - set(stored(db_url, device)))}",
        )
        agent.stop()  # cleanly: what waits is sent and acknowledged (events keep coming: some may stay on disk)
        agent = None
        rows = stored(db_url, device)
        assert len(rows) == len(set(rows)), "an event sent again is stored once"
        left = queued_seqs(tmp_path / device, "events")
        log = (tmp_path / device / "agent.log").read_text(errors="replace")
        assert len(set(rows) | left) == raised(log), "every event raised is stored or still on the device's disk"
        assert len(unsent) >= 3, "the events raised while offline were kept on the device's disk until stored"
    finally:
        if agent is not None:
            agent.stop()
        pub.loop_stop()
        pub.disconnect()
        lab.close()
        ctrl.stop()
        link.close()
        broker.stop()


def test_events_published_while_no_controller_is_subscribed_are_stored_once_after_one_is_back(tmp_path: Path) -> None:
    """The only controller is SIGKILLed; the device reports events meanwhile (desired states it refuses), which
    the broker accepts and drops (no member in the share group). A controller started again stores each of them
    once: the agent sent them again because no ack came."""
    device, kind = "events-killed-1", "desired.rejected"
    broker = MosquittoProcess(tmp_path / "broker")
    broker.start()
    db_url = f"sqlite:///{tmp_path}/controller/controller.db"
    ctrl = start_controller(tmp_path, broker_host=broker.host, broker_port=broker.port, database_url=db_url)
    pub = publisher(broker)
    agent = None
    try:
        register(ctrl, device)
        agent = start_agent(
            tmp_path, device, broker_host=broker.host, broker_port=broker.port, director_keys=[director_key_hex()],
            extra=TELEMETRY,
        )  # fmt: skip
        desired = device_topic(device, Kind.DESIRED)

        def refused(n: int) -> None:  # n desired states the agent refuses, each reported as one event
            before = raised(agent.log(), kind)
            for i in range(n):
                pub.publish(desired, b'{"not": "signed %d"}' % i, qos=1)
            wait_for(lambda: raised(agent.log(), kind) >= before + n, 20, lambda: f"agent log:\n{agent.log()[-2000:]}")

        wait_for(lambda: "connected to broker" in agent.log(), 20, lambda: f"agent log:\n{agent.log()[-2000:]}")
        refused(1)
        wait_for(lambda: len(stored(db_url, device, kind)) == 1, 20, lambda: "the first event was not stored")

        ctrl.kill()  # SIGKILL: no controller is subscribed now
        refused(4)
        time.sleep(1.5)  # the broker accepted and dropped them; their ack timeout passes with no controller
        assert len(stored(db_url, device, kind)) == 1

        ctrl = start_controller(tmp_path, broker_host=broker.host, broker_port=broker.port, database_url=db_url)
        wait_for(
            lambda: len(set(stored(db_url, device, kind))) >= 5,
            30,
            lambda: f"stored {stored(db_url, device, kind)}; agent still holds {sorted(queued_seqs(agent.data_dir, 'events'))}",
        )
        wait_for(lambda: not queued_seqs(agent.data_dir, "events"), 20, lambda: "the agent's disk never emptied")
        time.sleep(2.5)  # more than the ack timeout: nothing is sent, or stored, again
        rows = stored(db_url, device, kind)
        assert len(rows) == 5 == len(set(rows)) == raised(agent.log(), kind), f"each event stored once: {rows}"
    finally:
        if agent is not None:
            agent.stop()
        pub.loop_stop()
        pub.disconnect()
        ctrl.stop()
        broker.stop()
