"""The private broker fixture and the shipped Mosquitto settings, for real."""

import pytest

from controller.identity.broker_config import MosquittoConfig
from tests.mqttwatch import Watcher

pytestmark = pytest.mark.integration


def test_private_broker_delivers_and_retains(mosquitto):
    pub = Watcher(mosquitto.host, mosquitto.port, "fixture/#")
    pub.publish("fixture/retained", b'{"n": 1}', retain=True)
    pub.wait_for(lambda m: m == {"n": 1}, "fixture/retained", timeout=10)
    late = Watcher(mosquitto.host, mosquitto.port, "fixture/retained")
    late.wait_for(lambda m: m == {"n": 1}, "fixture/retained", timeout=10)
    assert late.messages[0][2] is True  # delivered as retained to a late subscriber
    pub.close()
    late.close()


def test_private_broker_is_not_the_system_broker(mosquitto):
    assert mosquitto.port != 1883
    assert mosquitto.conf_path.read_text() == mosquitto.config.render()


def test_shipped_config_raises_queue_limits():
    text = MosquittoConfig(port=1).render()
    assert "max_queued_messages 100000" in text
    assert "max_inflight_messages 100" in text
    assert "max_packet_size 1048576" in text
