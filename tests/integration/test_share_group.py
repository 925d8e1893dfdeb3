"""Replicas in one shared-subscription group from configuration: a stopped replica takes no share.

Controller sessions are clean, so once a replica is gone the broker hands every message
to the members still connected (a persistent member would keep taking its share).
"""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest

from controller.telemetry.receiver import ControllerMqtt
from shared.messages import DeviceMessage
from shared.topics import Kind, Topic, device_topic

pytestmark = [pytest.mark.integration]


class Collect:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, topic: Topic, message: DeviceMessage, ack) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.seqs.append(message.seq)
        ack()


def event(device: str, seq: int) -> bytes:
    return (
        f'{{"schema": 1, "device_id": "{device}", "seq": {seq}, "sent_at": 1.0, "kind": "ota.state", '
        f'"severity": "info", "message": "m", "detail": {{}}}}'
    ).encode()


def test_members_of_the_configured_group_split_and_a_stopped_one_takes_nothing(mosquitto) -> None:
    a_got, b_got, other_got = Collect(), Collect(), Collect()
    kinds = (Kind.EVENTS,)
    a = ControllerMqtt(mosquitto.host, mosquitto.port, a_got, kinds=kinds, client_id="rep-a", share_group="team-x")
    b = ControllerMqtt(mosquitto.host, mosquitto.port, b_got, kinds=kinds, client_id="rep-b", share_group="team-x")
    other = ControllerMqtt(mosquitto.host, mosquitto.port, other_got, kinds=kinds, client_id="rep-o", share_group="team-y")
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    try:
        for m in (a, b, other):
            m.start()
            assert m.connected.wait(10)
        topic = device_topic("grp-1", Kind.EVENTS)
        for seq in range(1, 11):
            pub.publish(topic, event("grp-1", seq), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while len(a_got.seqs) + len(b_got.seqs) < 10 or len(other_got.seqs) < 10:
            assert time.monotonic() < deadline, (a_got.seqs, b_got.seqs, other_got.seqs)
            time.sleep(0.05)
        assert a_got.seqs and b_got.seqs, "both members of team-x take a share"
        assert sorted(a_got.seqs + b_got.seqs) == list(range(1, 11)), "each message once per group"
        assert sorted(other_got.seqs) == list(range(1, 11)), "another group gets its own copy"

        a.stop()  # gone: with a clean session the broker keeps nothing for it
        before = len(a_got.seqs)
        for seq in range(11, 21):
            pub.publish(topic, event("grp-1", seq), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while sorted(s for s in b_got.seqs if s > 10) != list(range(11, 21)):
            assert time.monotonic() < deadline, f"b got {b_got.seqs}"
            time.sleep(0.05)
        assert len(a_got.seqs) == before
        a2 = ControllerMqtt(mosquitto.host, mosquitto.port, a_got, kinds=kinds, client_id="rep-a", share_group="team-x")
        a2.start()
        assert a2.connected.wait(10)
        time.sleep(0.5)
        assert len(a_got.seqs) == before, "nothing was queued for the stopped member"
        a2.stop()
    finally:
        for m in (b, other):
            m.stop()
        pub.loop_stop()
        pub.disconnect()
