"""Lost telemetry acks heal by themselves (ADR 0068, 0072).

A controller ack is a QoS 0 message: the broker drops it when the device is not
subscribed at that instant, and the controller's MQTT client loses what it had queued
when its connection drops. Neither may leave a window on the device for good: the
agent sends an unacknowledged window again after ``ack_timeout_s``, the controller
acknowledges the duplicate, and acks the controller could not write wait for its next
broker connection.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controller.telemetry.receiver import ControllerMqtt
from firmware_sim.mosquitto import MosquittoProcess
from firmware_sim.netfault import Relay
from firmware_sim.outage import StoringController
from firmware_sim.procs import start_agent
from firmware_sim.telemetry_rx import director_key_hex, queued_seqs
from shared.messages import decode_ack
from shared.topics import Kind, device_topic
from tests.netcut import CuttableLink

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_for(cond: Callable[[], object], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out: {what()}"
        time.sleep(0.05)


def test_an_agent_whose_acks_are_lost_sends_again_and_its_disk_drains(tmp_path: Path) -> None:
    """The broker→device link drops every ack for a while: the controller stores the windows, the agent keeps them
    and sends them again; once acks pass, the duplicates are acknowledged and the agent's disk empties."""
    device = "lost-acks-1"
    broker = MosquittoProcess(tmp_path / "broker")
    broker.start()
    relay = Relay(broker.host, broker.port, name="device-link", mqtt=True)  # the device's path to the broker
    relay.set("drop-acks")
    rx = StoringController(broker.host, broker.port, tmp_path, device)
    agent = None
    try:
        agent = start_agent(
            tmp_path, device, broker_host="127.0.0.1", broker_port=relay.port, director_keys=[director_key_hex()],
            extra="[telemetry]\nwindow_s = 0.3\nack_timeout_s = 1.0\nsystem_metrics = false\n",
        )  # fmt: skip
        proc, data = agent, agent.data_dir

        def stuck() -> set[int]:  # stored by the controller, still on the agent's disk
            return set(rx.snapshot()) & queued_seqs(data)

        wait_for(lambda: len(stuck()) >= 4, 30, lambda: f"stored {sorted(rx.snapshot())}, queued {sorted(queued_seqs(data))}")
        held = stuck()
        wait_for(
            lambda: rx.metrics.value("telemetry", "duplicate") >= 2,
            15,
            lambda: f"no window sent again after its ack timeout (received {rx.received} for {len(rx.snapshot())})",
        )
        assert held <= queued_seqs(data), "an ack got through the relay"
        assert relay.dropped_acks >= 2, "the relay dropped no ack"
        relay.set("up")
        t0 = time.monotonic()
        wait_for(
            lambda: not (queued_seqs(data) & held),
            20,
            lambda: f"never acknowledged to the agent: {sorted(queued_seqs(data) & held)}; log:\n{proc.log()[-2000:]}",
        )
        healed_s = time.monotonic() - t0
        assert healed_s < 10, f"healed after {healed_s:.1f} s (ack timeout 1 s)"
        assert proc.alive()
        agent = None
        proc.stop()  # cleanly: the last window is sent and acknowledged too
        assert not queued_seqs(data), f"left on the agent's disk: {sorted(queued_seqs(data))}; log:\n{proc.log()[-2000:]}"
        windows = rx.snapshot()
        wait_for(lambda: rx.stored >= len(windows), 10, lambda: f"stored {rx.stored} of {len(windows)}")
        assert rx.stored == len(windows), "each window stored once; the ones sent again were duplicates"
        assert rx.malformed == 0
        assert rx.ctl.acks.counts()["dropped"] == 0
    finally:
        if agent is not None:
            agent.stop()
        rx.close()
        relay.close()
        broker.stop()


class AckWatcher:
    """Sees the acks the broker delivers to some devices (their view of their ``ack`` topics)."""

    def __init__(self, broker: MosquittoProcess, devices: list[str]) -> None:
        self.seqs: list[int] = []
        self.subscribed = False
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}")
        c.on_subscribe = lambda *a: setattr(self, "subscribed", True)
        c.on_message = lambda _c, _u, msg: self.seqs.extend(decode_ack(bytes(msg.payload)).seqs)
        c.connect(broker.host, broker.port)
        c.subscribe([(device_topic(d, Kind.ACK), 0) for d in devices])
        c.loop_start()
        self.client = c

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_acks_the_controller_could_not_write_go_out_on_its_next_connection(tmp_path: Path) -> None:
    """The controller's link to the broker drops after windows were committed: their acks wait and go out once it
    is connected again, none of them ahead of its CONNECT (which would make the broker drop the new connection)."""
    broker = MosquittoProcess(tmp_path / "broker")
    broker.start()
    link = CuttableLink(broker.host, broker.port)  # the controller's network path; devices reach the broker directly
    ctl = ControllerMqtt("127.0.0.1", link.port, lambda *a: None, kinds=())
    watcher = None
    try:
        watcher = AckWatcher(broker, ["dev-a", "dev-b"])
        ctl.start()
        wait_for(lambda: ctl.connected.is_set() and watcher.subscribed, 15, lambda: "connected")
        ctl.acks.add("dev-a", 1)
        wait_for(lambda: watcher.seqs == [1], 10, lambda: f"acks seen {watcher.seqs}")

        link.cut()
        wait_for(lambda: not ctl.connected.is_set(), 10, lambda: "the controller noticed the cut")
        ctl.acks.add("dev-a", 2)
        ctl.acks.add("dev-b", 3)
        ctl.acks.flush()  # what the ack thread does when the batch commits: the broker is unreachable

        def between_clear_and_connect(client: mqtt.Client, userdata: object) -> None:
            # paho calls this on its reconnect after emptying its packet queue and before queueing CONNECT: the
            # moment another thread's write would land ahead of the CONNECT.
            ctl.acks.add("dev-a", 4)
            ctl.acks.flush()

        ctl._client.on_pre_connect = between_clear_and_connect
        connects = ctl.connects
        link.restore()
        wait_for(
            lambda: sorted(watcher.seqs) == [1, 2, 3, 4],
            40,
            lambda: f"acks seen {sorted(watcher.seqs)}; controller connections {ctl.connects}",
        )
        assert ctl.connects == connects + 1, "the broker dropped a connection"
        counts = ctl.acks.counts()
        assert counts["sent"] == 4 and counts["deferred"] >= 3 and counts["dropped"] == 0, counts
    finally:
        ctl.stop()
        if watcher is not None:
            watcher.close()
        link.close()
        broker.stop()
