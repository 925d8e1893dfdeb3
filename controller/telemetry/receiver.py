"""The controller's MQTT side: publish retained desired state, ingest device messages.

Device topics are read through a shared subscription so several replicas split
the load. Every payload is validated; a malformed one is counted and logged
and never stops the loop: each paho callback runs under a ``CallbackGuard``
(``guard.py``) that catches whatever escapes, counts it and logs it at a bounded
rate, and ``loop_state()`` tells a dead or stalled receive loop apart. Messages are acknowledged by the handler once they
are durable (``manual_ack``): a controller that dies mid-batch has not
acknowledged what it had not written. A telemetry window's or an event's acknowledgement
also goes to the device (``acks.py``): the agent keeps it until then, so nothing the broker
accepted is lost to a broker restart or a replica's death (ADR 0068, ADR 0078).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.identity.broker_auth import DYNSEC_TOPIC, REGISTER_CHUNK, kick_command, register_devices_command
from controller.telemetry.acks import AckPublisher
from controller.telemetry.decode import decode_telemetry_many
from controller.telemetry.guard import CallbackGuard, LoopState, LoopWatch, RateLimitedLog
from controller.telemetry.wire_windows import WireTelemetry
from shared import wire
from shared.canonical import canonical_json
from shared.errors import ProtocolError
from shared.messages import DeviceMessage, Event, Telemetry, decode
from shared.topics import Kind, Topic, device_topic, fleet_filter

log = logging.getLogger(__name__)
Ack = Callable[[], None]
Handler = Callable[[Topic, DeviceMessage | WireTelemetry, Ack], None]  # WireTelemetry: a v2 telemetry message
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
        clean_session: bool = True,
    ) -> None:
        """``client_id``: unique per replica. The session is clean, so a replica that is gone takes no
        share of the group's messages (the broker queues nothing for a dead member); only the ingest
        benchmark resumes a parked session (``clean_session=False``) to drain a queue it filled."""
        self._handler = handler
        self._kinds = kinds
        self._share_group = share_group
        self._on_malformed = on_malformed
        self.malformed = 0
        self.decoder_failures = 0  # malformed input that made the decoder raise something other than ProtocolError
        self.received = 0
        self.connected = threading.Event()  # connected and every subscription acknowledged (SUBACK)
        self.connects = 0  # broker connections so far (a new value: a new session, maybe a restarted broker)
        self._sub_mid: int | None = None
        self._stopping = False
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgefleet-controller-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
            clean_session=clean_session,
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
        self.connection = BrokerConnection(c)
        self.acks = AckPublisher(self.connection)

    def start(self) -> None:
        self._stopping = False
        self.acks.start()
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()
        self._running = True

    def stop(self) -> None:
        self._stopping = True
        self._running = False
        self.acks.stop()
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

    def publish_desired_all(self, items: Sequence[tuple[str, dict[str, Any]]], timeout: float = 10.0) -> None:
        """Many desired states at once (a fleet rollback): every message is sent before any acknowledgement is
        awaited, so they cost one round trip, not one per device. A device whose message fails is logged;
        the others still go (retained desired state is re-published by its next change or re-signing)."""
        sent = []
        for device_id, envelope in items:
            try:
                info = self._client.publish(device_topic(device_id, Kind.DESIRED), canonical_json(envelope), qos=1, retain=True)
                sent.append((device_id, info))
            except Exception:
                log.exception("publishing desired state to %s failed", device_id)
        deadline = time.monotonic() + timeout
        for device_id, info in sent:
            try:
                info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                log.exception("desired state to %s not acknowledged", device_id)

    def kick(self, device_id: str, timeout: float = 5.0) -> bool:
        """Drop a revoked device's live session now (the broker's dynamic-security admin channel)."""
        return self._dynsec(kick_command(device_id), timeout)

    def register_devices(self, device_ids: list[str], timeout: float = 10.0) -> bool:
        """Make enrolled devices dynsec clients whose role refuses ``$share/...`` subscriptions."""
        ok = True
        for i in range(0, len(device_ids), REGISTER_CHUNK):
            ok = self._dynsec(register_devices_command(device_ids[i : i + REGISTER_CHUNK]), timeout) and ok
        return ok

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
        self.connects += 1
        self.connection.opened()
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
        self.connection.closed()  # before paho reconnects (it empties its packet queue, then sends CONNECT)
        self.connected.clear()
        if self._stopping:
            return
        log.warning("controller disconnected from broker %s:%s (%s); reconnecting", self._host, self._port, reason)

    def _acked_to_device(self, ack: Ack, device_id: str, seq: int) -> Ack:
        def both() -> None:
            ack()
            self.acks.add(device_id, seq)

        return both

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        mid, qos, session = msg.mid, msg.qos, self.connection.number

        def ack() -> None:
            if qos == 1 and self.acks.running:
                self.acks.puback(mid, session)  # with the next flush of acks, in one write, on this connection only
            elif qos > 0:
                client.ack(mid, qos)

        raw_topic = bytes(msg._topic).decode("utf-8", "replace")  # the property raises on invalid UTF-8
        try:
            topic = Topic.parse(raw_topic)
            payload = bytes(msg.payload)
            messages: list[DeviceMessage | wire.Batch]
            if topic.kind is Kind.TELEMETRY and wire.is_v2(payload):
                messages = [wire.decode(payload)]  # counts stay coded: the ingester decodes a whole batch's at once
            elif topic.kind is Kind.TELEMETRY:
                messages = list(decode_telemetry_many(payload))
            else:
                messages = [decode(topic.kind, payload)]
            for message in messages:
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
        # Several windows in one message: the message is acknowledged once all of them are durable,
        # each window to its device as soon as it is.
        first = messages[0]
        if isinstance(first, wire.Batch):
            countdown = _Countdown(len(first.windows), ack)
            acks = tuple(self._acked_to_device(countdown, first.device_id, w.seq) for w in first.windows)
        else:
            countdown = _Countdown(len(messages), ack)
        try:
            for message in messages:
                if isinstance(message, wire.Batch):
                    self._handler(topic, WireTelemetry(message, acks), countdown.all)  # acks: one per window
                elif isinstance(message, Telemetry | Event):  # the device keeps both until acknowledged (ADR 0068, 0078)
                    self._handler(topic, message, self._acked_to_device(countdown, message.device_id, message.seq))
                else:
                    self._handler(topic, message, countdown)
        except Exception:
            self._log(
                f"handler:{topic.kind.value}",
                logging.ERROR,
                "failed to handle %s message from %s",
                topic.kind.value,
                topic.device_id,
                exc_info=True,
            )
            countdown.all()


class BrokerConnection:
    """``ControllerMqtt``'s broker connection as the ack thread writes to it (``acks.AckLink``).

    Connections are numbered (``opened`` on each CONNACK, ``closed`` in the disconnect callback,
    which paho runs before it reconnects). A write names the connection it is for and happens
    under the same lock as ``closed``: it is queued while that connection is up, or refused
    (False). So a PUBACK never reaches a later connection (where its packet id may name
    another message), and no packet is queued after paho has emptied its queue for a
    reconnect and before its CONNECT (the broker would drop the connection).
    """

    def __init__(self, client: mqtt.Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self.number = 0  # of the current (or last) connection
        self._up = False

    def opened(self) -> None:
        with self._lock:
            self.number += 1
            self._up = True

    def closed(self) -> None:
        with self._lock:
            self._up = False

    def session(self) -> int | None:
        with self._lock:
            return self.number if self._up else None

    def write(self, session: int, packets: bytes) -> bool | None:
        """Queue many ready-made packets (acks to devices, PUBACKs) as one write.

        Uses paho's internal packet queue, as ``ack()`` and ``publish()`` do; labelled a PUBACK so
        paho runs no per-PUBLISH bookkeeping for it. None if that queue is not there (another paho):
        the ack thread then sends one by one through the public API.
        """
        queue = getattr(self._client, "_packet_queue", None)
        if queue is None:
            return None
        with self._lock:
            if not self._up or self.number != session:
                return False
            queue(mqtt.PUBACK, packets, 0, 0)
        return True

    def publish(self, session: int, device_id: str, payload: bytes) -> bool:
        with self._lock:
            if not self._up or self.number != session:
                return False
            info = self._client.publish(device_topic(device_id, Kind.ACK), payload, qos=0)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def puback(self, session: int, mid: int) -> bool:
        with self._lock:
            if not self._up or self.number != session:
                return False
            return self._client.ack(mid, 1) == mqtt.MQTT_ERR_SUCCESS


class _Countdown:
    """Acknowledges a message on the ``n``-th call (one per window it carries), or at once with ``all()``; once."""

    def __init__(self, n: int, ack: Ack) -> None:
        self._left, self._ack, self._lock = n, ack, threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self._left -= 1
            done = self._left == 0
        if done:
            self._ack()

    def all(self) -> None:
        with self._lock:
            done, self._left = self._left > 0, 0
        if done:
            self._ack()
