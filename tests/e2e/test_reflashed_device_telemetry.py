"""A re-flashed device's telemetry windows and events are stored, each once (ADR 0080).

Wiping a device's data directory (re-flash, new SD card, factory reset) restarts its seq
counter at 0. The controller dedupes by (device, stream, seq): the agent makes a new random
stream id with a new counter, so the new windows and events are not taken for copies of the
old ones (before, they were dropped as duplicates, and acknowledged, so the agent deleted them).

Real broker, real controller process, real agent processes.
"""

from __future__ import annotations

import shutil
import threading
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
from shared.messages import Event, decode
from shared.topics import Kind, device_topic
from shared.wire import decode_windows

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DEVICE = "reflashed-1"
KEEP = ("agent.toml", "agent.log")  # what a re-flash keeps: the provisioning (device id, broker), and our log


def wait_for(cond: Callable[[], object], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out: {what()}"
        time.sleep(0.1)


class Tap:
    """A bystander on the device's telemetry and events topics: which agent run sent which seqs."""

    def __init__(self, broker: MosquittoProcess) -> None:
        self.windows: set[tuple[str, int]] = set()  # (boot id of the agent run, seq)
        self.events: list[int] = []  # seqs, in order (an event sent again appears again)
        self._lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tap-{uuid.uuid4().hex[:8]}")
        c.on_connect = lambda cl, *_: cl.subscribe([(device_topic(DEVICE, k), 1) for k in (Kind.TELEMETRY, Kind.EVENTS)])
        c.on_message = self._on_message
        c.connect(broker.host, broker.port)
        c.loop_start()
        self.client = c

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.topic.endswith("/events"):
                event = decode(Kind.EVENTS, bytes(msg.payload))
                assert isinstance(event, Event)
                self.events.append(event.seq)
            else:
                self.windows |= {(str(w.agent.get("boot")), w.seq) for w in decode_windows(bytes(msg.payload))}

    def snapshot(self) -> tuple[set[tuple[str, int]], list[int]]:
        with self._lock:
            return set(self.windows), list(self.events)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def accepted(ctrl: ControllerProc) -> float:
    prefix = 'edgefleet_ingest_messages_total{kind="telemetry",outcome="accepted"} '
    with ctrl.client() as api:
        lines = api.get("/metrics").text.splitlines()
    return sum(float(ln[len(prefix) :]) for ln in lines if ln.startswith(prefix))


def stored_events(db_url: str) -> list[int]:
    eng = create_engine(db_url)
    try:
        with eng.connect() as c:
            return [int(s) for (s,) in c.execute(text("SELECT seq FROM deviceevent WHERE device_id = :d"), {"d": DEVICE})]
    finally:
        eng.dispose()


def test_a_reflashed_device_has_every_new_window_and_event_stored_once(tmp_path: Path) -> None:
    """The device sends windows, is re-flashed (its data directory wiped: the seq counter starts again at
    0), and sends windows whose seqs are the old ones again; then the same for events. Every window and
    every event of every run is stored, each exactly once."""
    broker = MosquittoProcess(tmp_path / "broker")
    broker.start()
    db_url = f"sqlite:///{tmp_path}/controller/controller.db"
    ctrl = start_controller(tmp_path, broker_host=broker.host, broker_port=broker.port, database_url=db_url)
    tap = Tap(broker)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    data_dir = tmp_path / DEVICE
    agent = None
    try:
        with ctrl.client() as api:
            assert api.post("/v1/devices", json={"id": DEVICE}).status_code == 201

        def run(*, window_s: float, n_events: int = 0, n_windows: int = 0) -> tuple[set[tuple[str, int]], list[int]]:
            """Start the agent, have it refuse ``n_events`` desired states (one event each) and close
            ``n_windows`` windows, stop it cleanly (it waits for the controller's acks); what it sent."""
            nonlocal agent
            windows_before, events_before = tap.snapshot()
            agent = start_agent(
                tmp_path, DEVICE, broker_host=broker.host, broker_port=broker.port, director_keys=[director_key_hex()],
                extra=f"[telemetry]\nwindow_s = {window_s}\nsystem_metrics = false\nack_timeout_s = 1\n",
            )  # fmt: skip
            wait_for(lambda: "connected to broker" in agent.log(), 20, lambda: f"agent log:\n{agent.log()[-2000:]}")
            refused = "agent.daemon: event desired.rejected"
            at_start = agent.log().count(refused)
            for i in range(n_events):  # the first is sent again until the agent has subscribed
                deadline = time.monotonic() + 20
                while i == 0 and agent.log().count(refused) == at_start:
                    assert time.monotonic() < deadline, "the agent never refused a desired state"
                    pub.publish(device_topic(DEVICE, Kind.DESIRED), b'{"not": "signed"}', qos=1)
                    time.sleep(1.5)
                if i:
                    pub.publish(device_topic(DEVICE, Kind.DESIRED), b'{"not": "signed %d"}' % i, qos=1)
            wait_for(lambda: len(tap.snapshot()[1]) >= len(events_before) + n_events, 30, lambda: agent.log()[-2000:])
            wait_for(lambda: len(tap.snapshot()[0]) >= len(windows_before) + n_windows, 30, lambda: "windows sent")
            time.sleep(1.0)  # a desired state sent again before the agent had subscribed may still be refused
            wait_for(
                lambda: not queued_seqs(data_dir, "events"),
                20,
                lambda: f"events unacknowledged: {queued_seqs(data_dir, 'events')}",
            )
            agent.stop()  # an event raised during the stop may stay on the disk the re-flash wipes: never sent, fine
            agent = None
            windows, events = tap.snapshot()
            return windows - windows_before, events[len(events_before) :]

        def reflash() -> None:  # the data directory is empty again; the provisioning (device id, broker) is kept
            for p in data_dir.iterdir():
                if p.name not in KEEP:
                    p.unlink() if p.is_file() or p.is_symlink() else shutil.rmtree(p)

        def seqs(windows: set[tuple[str, int]]) -> set[int]:
            return {s for _, s in windows}

        first = run(window_s=0.3, n_windows=20)[0]
        reflash()
        second = run(window_s=0.3, n_windows=10)[0]
        assert seqs(second) & seqs(first), "the new run's window seqs are the old ones again (the case under test)"
        reflash()
        events_before = run(window_s=60, n_events=8)[1]  # long windows: the events take the first seqs
        reflash()
        events_after = run(window_s=60, n_events=3)[1]
        assert set(events_after) & set(events_before), f"event seqs are reused: {events_before} then {events_after}"

        windows = tap.snapshot()[0]
        want = (len(windows), len(set(events_before)) + len(set(events_after)))
        deadline = time.monotonic() + 20
        while (accepted(ctrl), len(stored_events(db_url))) != want and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # nothing more comes: every window and event stored exactly once
        got = (accepted(ctrl), len(stored_events(db_url)))
        assert got == want, f"(windows, events) stored {got}, sent {want}: events {sorted(stored_events(db_url))}"
    finally:
        if agent is not None:
            agent.stop()
        tap.close()
        pub.loop_stop()
        pub.disconnect()
        ctrl.stop()
        broker.stop()
