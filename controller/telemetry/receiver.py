"""The controller's MQTT side: publish retained desired state, ingest device messages.

Device topics are read through a shared subscription so several replicas split
the load. Every payload is validated; a malformed one is counted and logged
and never stops the loop: each paho callback runs under a ``CallbackGuard``
(``guard.py``) that catches whatever escapes, counts it and logs it at a bounded
rate, and ``loop_state()`` tells a dead or stalled receive loop apart. Messages are acknowledged by the handler once they
are durable (``manual_ack``): a controller that dies mid-batch has not
acknowledged what it had not written.
"""

from __future__ import annotations

import logging
import ssl
import threading
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.identity.broker_auth import DYNSEC_TOPIC, kick_command
from controller.telemetry.decode import decode_telemetry
from controller.telemetry.guard import CallbackGuard, LoopState, LoopWatch, RateLimitedLog
from shared.canonical import canonical_json
from shared.errors import ProtocolError
from shared.messages import DeviceMessage, decode
from shared.topics import Kind, Topic, device_topic, fleet_filter

log = logging.getLogger(__name__)
Ack = Callable[[], None]
Handler = Callable[[Topic, DeviceMessage, Ack], None]
ALL_KINDS = (Kind.STATUS, Kind.EVENTS, Kind.TELEMETRY)


class _DropStopNoise(logging.Filter):
    """paho 2.2's network thread logs an error when it runs once more after a clean disconnect."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_PAHO_LOG = logging.getLogger("controller.mqtt.paho")
_PAHO_LOG.addFilter(_DropStopNoise())


class ControllerMqtt:
    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        kinds: tuple[Kind, ...] = ALL_KINDS,
        on_malformed: Callable[[str], None] | None = None,
        client_id: str | None = None,
        tls: ssl.SSLContext | None = None,  # mTLS with the controller's identity (controller/identity/wiring.py)
        share_group: str = "controllers",
        on_callback_error: Callable[[str], None] | None = None,
        stall_s: float = 60.0,
    ) -> None:
        """``client_id``: unique per replica. The session is clean, so a replica that is gone takes no
        share of the group's messages (the broker queues nothing for a dead member)."""
        self._handler = handler
        self._kinds = kinds
        self._share_group = share_group
        self._on_malformed = on_malformed
        self.malformed = 0
        self.decoder_failures = 0  # malformed input that made the decoder raise something other than ProtocolError
        self.received = 0
        self.connected = threading.Event()  # connected and every subscription acknowledged (SUBACK)
        self._sub_mid: int | None = None
        self._stopping = False
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgefleet-controller-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
            manual_ack=True,
        )
        c.enable_logger(_PAHO_LOG)
        c.reconnect_delay_set(1, 30)
        self._log = RateLimitedLog(log)
        self.guard = CallbackGuard(on_callback_error, self._log)
        self._running = False  # between start() and stop()
        self._watch = LoopWatch(self.guard, lambda: self._running, lambda: getattr(c, "_thread", None), stall_s)
        c.on_connect = self.guard.wrap("connect", self._on_connect)
        c.on_subscribe = self.guard.wrap("subscribe", self._on_subscribe)
        c.on_message = self.guard.wrap("message", self._on_message)
        if tls is not None:
            c.tls_set_context(tls)
        c.on_disconnect = self.guard.wrap("disconnect", self._on_disconnect)
        self._client = c
        self._host, self._port = host, port

    def start(self) -> None:
        self._stopping = False
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()
        self._running = True

    def stop(self) -> None:
        self._stopping = True
        self._running = False
        self._client.disconnect()
        self._client.loop_stop()
        # paho keeps the loop's wake-up socket pair open until garbage collection; close it now.
        reset = getattr(self._client, "_reset_sockets", None)
        if reset is not None:
            reset()

    def loop_state(self) -> LoopState:
        """Whether paho's receive loop runs, is stuck in one callback, or has died."""
        return self._watch.state()

    def publish_desired(self, device_id: str, envelope: dict[str, Any], timeout: float = 10.0) -> None:
        info = self._client.publish(device_topic(device_id, Kind.DESIRED), canonical_json(envelope), qos=1, retain=True)
        info.wait_for_publish(timeout=timeout)

    def kick(self, device_id: str, timeout: float = 5.0) -> bool:
        """Drop a revoked device's live session now (the broker's dynamic-security admin channel)."""
        return self._dynsec(kick_command(device_id), timeout)

    def _dynsec(self, command: bytes, timeout: float) -> bool:
        if not self.connected.is_set():
            return False
        info = self._client.publish(DYNSEC_TOPIC, command, qos=1)
        info.wait_for_publish(timeout=timeout)
        return info.is_published()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if reason.is_failure:
            log.error("broker refused the controller: %s", reason)
            return
        log.info("controller connected to broker %s:%s", self._host, self._port)
        if not self._kinds:
            self.connected.set()
            return
        _, self._sub_mid = client.subscribe(
            [(fleet_filter(kind, shared=True, group=self._share_group), 1) for kind in self._kinds]
        )

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any = None) -> None:
        if mid != self._sub_mid:
            return
        if any(r.is_failure for r in reasons):
            log.error("broker refused the controller's subscriptions: %s", [str(r) for r in reasons])
            return
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        self.connected.clear()
        if self._stopping:
            return
        log.warning("controller disconnected from broker %s:%s (%s); reconnecting", self._host, self._port, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        mid, qos = msg.mid, msg.qos

        def ack() -> None:
            if qos > 0:
                client.ack(mid, qos)

        raw_topic = bytes(msg._topic).decode("utf-8", "replace")  # the property raises on invalid UTF-8
        try:
            topic = Topic.parse(raw_topic)
            payload = bytes(msg.payload)
            message = decode_telemetry(payload) if topic.kind is Kind.TELEMETRY else decode(topic.kind, payload)
            if message.device_id != topic.device_id:
                raise ProtocolError(f"payload device_id {message.device_id!r} does not match topic {topic.device_id!r}")
        except Exception as exc:  # a ProtocolError normally; anything else is a decoder bug, same outcome
            self.malformed += 1
            kind = raw_topic.rsplit("/", 1)[-1]
            if isinstance(exc, ProtocolError):
                self._log(f"malformed:{kind}", logging.WARNING, "malformed message on %.200s: %.300s", raw_topic, exc)
            else:
                self.decoder_failures += 1
                self._log("decoder", logging.ERROR, "decoder failed on %.200s: %s", raw_topic, type(exc).__name__, exc_info=True)
            ack()
            if self._on_malformed is not None:
                self._on_malformed(kind)
            return
        try:
            self._handler(topic, message, ack)
        except Exception:
            self._log(
                f"handler:{topic.kind.value}",
                logging.ERROR,
                "failed to handle %s message from %s",
                topic.kind.value,
                topic.device_id,
                exc_info=True,
            )
            ack()
