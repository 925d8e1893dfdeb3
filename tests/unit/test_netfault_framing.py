"""The MQTT framing of ``firmware_sim.netfault`` (its ``drop-acks`` mode drops whole ack PUBLISH packets)."""

from __future__ import annotations

import pytest

from controller.telemetry.acks import puback_packets, publish_packet
from firmware_sim.netfault import Relay, mqtt_packets, publish_topic

pytestmark = pytest.mark.unit


def test_packets_are_cut_whole_whatever_the_chunks() -> None:
    packets = [publish_packet("edgefleet/v1/dev/a/ack", b"x" * n) for n in (0, 5, 200, 20_000)] + [puback_packets([7])]
    stream = b"".join(packets)
    for chunk in (1, 3, 127, 16384):
        buf, out = bytearray(), []
        for i in range(0, len(stream), chunk):
            buf += stream[i : i + chunk]
            out += mqtt_packets(buf)
        assert out == packets and not buf


def test_publish_topics_and_other_packets() -> None:
    assert publish_topic(publish_packet("edgefleet/v1/dev/a/ack", b"y" * 300)) == b"edgefleet/v1/dev/a/ack"
    assert publish_topic(puback_packets([1])) is None
    with pytest.raises(ValueError, match="remaining length"):
        mqtt_packets(bytearray(b"\x30\xff\xff\xff\xff\x01"))


def test_drop_acks_needs_an_mqtt_relay() -> None:
    relay = Relay("127.0.0.1", 1)
    try:
        with pytest.raises(ValueError, match="MQTT relay"):
            relay.set("drop-acks")
    finally:
        relay.close()
