"""The attacks again, end to end: a real agent process, a real broker, signed desired
states on the device's topic, and the rejection read back from the device's events
and retained status (which must keep naming the model that really runs)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from securesystemslib.signer import CryptoSigner

from agent.localapi.client import AgentClient
from shared.topics import Kind, device_topic
from tests.mqttwatch import Watcher
from tests.otalab import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_attacks_over_mqtt_are_reported_and_the_model_keeps_serving(mosquitto, tmp_path, make_bundle):
    lab = Lab(tmp_path / "lab")
    device = "mqtt-attacks"
    watch = Watcher(mosquitto.host, mosquitto.port, device_topic(device, Kind.STATUS), device_topic(device, Kind.EVENTS))
    agent = lab.start_agent(tmp_path, device, mosquitto)
    topic = device_topic(device, Kind.DESIRED)
    try:
        v1, v2, v3 = make_bundle(1), make_bundle(2), make_bundle(3)
        watch.publish(topic, lab.desired(device, lab.publish(v1)), retain=True)
        watch.wait_for(lambda m: m.get("kind") == "ota.committed", "/events")

        def attack(payload: bytes, fragment: str) -> None:
            n = len([m for m in watch.json_messages("/events") if m.get("kind") in ("ota.rejected", "desired.rejected")])
            watch.publish(topic, payload, retain=True)
            watch.wait_for(
                lambda m: (
                    m.get("kind") in ("ota.rejected", "desired.rejected")
                    and len([x for x in watch.json_messages("/events") if x.get("kind") in ("ota.rejected", "desired.rejected")])
                    > n
                ),
                "/events",
            )
            rejections = [m for m in watch.json_messages("/events") if m.get("kind") in ("ota.rejected", "desired.rejected")]
            assert fragment in rejections[-1]["message"], rejections[-1]
            with AgentClient(agent.socket_path) as c:
                assert c.predict([[0.0] * 64])["version"] == 1

        strangers = [CryptoSigner.generate_ed25519() for _ in range(2)]
        attack(lab.desired(device, lab.publish(v2, signers=strangers)), "UnsignedMetadataError")
        other = make_bundle(3, seed=5)
        lab.publish(v3)
        (lab.bundle_dir / f"{lab.assignment(other).sha256}.tar").write_bytes(other)
        attack(lab.desired(device, lab.assignment(other)), "mix-and-match")
        attack(lab.desired(device, lab.assignment(v1), counter=1), "replayed or old desired state")
        lab.repo.expiry["timestamp"] = timedelta(seconds=-60)
        lab.repo.timestamp(lab.keys.online)
        attack(lab.desired(device, lab.assignment(v3)), "ExpiredMetadataError")
        status = watch.wait_for(
            lambda m: m.get("state") == "online" and "ExpiredMetadataError" in m.get("ota", {}).get("reason", ""), "/status"
        )
        assert status["ota"]["state"] == "IDLE"
        assert status["models"]["production"]["version"] == 1  # the status names what really runs
    finally:
        watch.close()
        agent.stop()
        lab.close()
