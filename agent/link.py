"""The agent's MQTT connection: presence, desired-state subscription, publishing.

Wraps paho-mqtt. The Last Will is a retained ``offline`` status so the fleet
view is right even when the device vanishes without a goodbye.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig
from agent.identity import broker_tls_context
from shared.messages import OFFLINE, SCHEMA_VERSION, encode, now
from shared.topics import Kind, device_topic

log = logging.getLogger(__name__)


class MqttLink:
    def __init__(
        self,
        cfg: AgentConfig,
        next_seq: Callable[[], int],
        on_desired: Callable[[bytes], None],
        on_connect: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self._next_seq = next_seq
        self._on_desired = on_desired
        self._on_connect_cb = on_connect
        self.connected = False
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgefleet-{cfg.device_id}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        c.enable_logger(logging.getLogger("agent.mqtt"))
        c.reconnect_delay_set(min_delay=int(cfg.broker.reconnect_min), max_delay=int(cfg.broker.reconnect_max))
        c.max_queued_messages_set(10_000)
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        self._tls = broker_tls_context(cfg.broker)  # mTLS with the device certificate, when configured
        if self._tls is not None:
            c.tls_set_context(self._tls)
        self._client = c
        self._set_will()

    def _set_will(self) -> None:
        will = {
            "schema": SCHEMA_VERSION,
            "device_id": self.cfg.device_id,
            "seq": self._next_seq(),
            "sent_at": now(),
            "state": OFFLINE,
        }
        self._client.will_set(device_topic(self.cfg.device_id, Kind.STATUS), encode(will), qos=1, retain=True)

    def reload_identity(self) -> None:
        """Use a renewed certificate from the next (re)connection on."""
        if self._tls is not None:
            self._tls.load_cert_chain(str(self.cfg.broker.cert_file), str(self.cfg.broker.key_file))

    def start(self) -> None:
        self._client.connect_async(self.cfg.broker.host, self.cfg.broker.port, keepalive=self.cfg.broker.keepalive)
        self._client.loop_start()

    def stop(self, goodbye: dict[str, Any] | None = None) -> None:
        if goodbye is not None and self.connected:
            info = self._client.publish(device_topic(self.cfg.device_id, Kind.STATUS), encode(goodbye), qos=1, retain=True)
            info.wait_for_publish(timeout=2.0)
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, kind: Kind, message: dict[str, Any], *, retain: bool = False) -> None:
        """Queue a message (QoS 1). paho keeps it while disconnected."""
        self._client.publish(device_topic(self.cfg.device_id, kind), encode(message), qos=1, retain=retain)

    # -- paho callbacks (network thread) -------------------------------------
    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if reason.is_failure:
            log.warning("broker refused connection: %s", reason)
            return
        self.connected = True
        log.info("connected to broker %s:%s", self.cfg.broker.host, self.cfg.broker.port)
        client.subscribe(device_topic(self.cfg.device_id, Kind.DESIRED), qos=1)
        self._on_connect_cb()

    def _handle_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        self.connected = False
        log.warning("disconnected from broker (%s); reconnecting with backoff", reason)

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_desired(bytes(msg.payload))
        except Exception:  # never let a bad message kill the network thread
            log.exception("error handling message on %s", msg.topic)
