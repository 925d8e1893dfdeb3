"""The agent's MQTT connection: presence, desired-state subscription, publishing.

Wraps paho-mqtt. The Last Will is a retained ``offline`` status so the fleet
view is right even when the device vanishes without a goodbye.

Reconnecting is driven here, not by paho's ``reconnect_delay_set``: after a
broker restart every device of a fleet loses its connection at the same
instant, and a deterministic exponential backoff would bring them all back at
the same instants too. :func:`backoff_delay` adds full jitter (a uniform
draw between 0 and the exponential ceiling), which spreads them out.

By default the link runs its own thread around paho's ``loop()``. Given an
:class:`agent.mqttloop.MqttLoop`, it is driven by that shared loop instead (many
agents in one process: the simulator); connecting and backing off are the same.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.config import AgentConfig
from agent.identity import broker_tls_context
from agent.mqttclient import mqtt
from shared.errors import ProtocolError
from shared.messages import OFFLINE, DeviceMessage, Status, decode_ack, encode, now
from shared.topics import Kind, device_topic

if TYPE_CHECKING:
    from agent.mqttloop import MqttLoop

log = logging.getLogger(__name__)


def backoff_delay(attempt: int, base: float, cap: float, *, jitter: bool = True, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): ``min(cap, base * 2**attempt)``, jittered.

    With jitter the delay is uniform in ``[0, ceiling]`` ("full jitter").
    """
    ceiling = min(cap, base * 2 ** min(attempt, 32))
    return (rng or random).uniform(0.0, ceiling) if jitter else ceiling


def _loop_thread_writes(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Queued packets are written by the link thread's ``loop()`` (woken through paho's socket pair)."""


class MqttLink:
    def __init__(
        self,
        cfg: AgentConfig,
        next_seq: Callable[[], int],
        on_desired: Callable[[bytes], None],
        on_connect: Callable[[], None],
        loop: MqttLoop | None = None,  # a shared network loop; None: a thread of our own
    ) -> None:
        self.cfg = cfg
        self._loop = loop
        self._attempt = 0
        self._connects_before = 0
        self._next_seq = next_seq
        self._on_desired = on_desired
        self._on_connect_cb = on_connect
        self.connected = False
        self.last_contact: float | None = None  # unix time the broker last answered (connect, ack, message)
        self.connects = 0  # successful connections so far (a new value means a new session)
        self.malformed = 0  # messages that could not be handed over (wrong topic, handler crash)
        self.on_published: Callable[[int], None] | None = None  # called with the mid of each acknowledged QoS 1 publish
        self.on_window_ack: Callable[[tuple[int, ...]], None] | None = None  # seqs the controller has stored
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgefleet-{cfg.device_id}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        c.enable_logger(logging.getLogger("agent.mqtt"))
        c.max_queued_messages_set(10_000)
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        c.on_publish = self._handle_publish
        # Only the link thread may touch the socket. Without this, paho writes a publish from the
        # caller's thread (we run our own loop, not loop_start), concurrently with the link thread's
        # read: harmless on TCP, but it corrupts a TLS session ("wrong version number"). With a
        # write-registration callback set, paho only queues the packet and wakes the loop.
        # A shared loop sets its own socket callbacks, which do the same.
        c.on_socket_register_write = _loop_thread_writes
        if loop is not None:
            loop.attach(c)
        self._tls = broker_tls_context(cfg.broker)  # mTLS with the device certificate, when configured
        if self._tls is not None:
            c.tls_set_context(self._tls)
        self._client = c
        self._set_will()

    def _set_will(self) -> None:
        will = Status(device_id=self.cfg.device_id, seq=self._next_seq(), sent_at=now(), state=OFFLINE)
        self._client.will_set(device_topic(self.cfg.device_id, Kind.STATUS), encode(will), qos=1, retain=True)

    def reload_identity(self) -> None:
        """Use a renewed certificate from the next (re)connection on."""
        if self._tls is not None:
            self._tls.load_cert_chain(str(self.cfg.broker.cert_file), str(self.cfg.broker.key_file))

    def start(self) -> None:
        if self._loop is not None:
            self._loop.call_soon(self._connect_once)
            return
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._thread.start()

    def stop(self, goodbye: Status | None = None) -> None:
        if goodbye is not None and self.connected:
            info = self._client.publish(device_topic(self.cfg.device_id, Kind.STATUS), encode(goodbye), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                pass
        self._stopping.set()
        self._client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._loop is not None:
            deadline = time.monotonic() + 5.0
            while self._client.socket() is not None and time.monotonic() < deadline:
                time.sleep(0.02)  # the loop writes the DISCONNECT and closes the socket
            self._loop.detach(self._client)

    # -- on a shared loop (its thread) -------------------------------------------
    def _connect_once(self) -> None:
        """One connection attempt; a failure (or a later drop, ``_handle_disconnect``) schedules the next."""
        if self._stopping.is_set():
            return
        b = self.cfg.broker
        self._connects_before = self.connects
        try:
            self._client.connect(b.host, b.port, keepalive=b.keepalive)
        except (OSError, ValueError) as exc:
            log.info("cannot reach broker %s:%s: %s", b.host, b.port, exc)
            self._reconnect_later()

    def _reconnect_later(self) -> None:
        assert self._loop is not None
        if self._stopping.is_set():
            return
        if self.connects != self._connects_before:
            self._attempt = 0  # the broker accepted us; a later drop starts the backoff afresh
            self._connects_before = self.connects
        b = self.cfg.broker
        delay = backoff_delay(self._attempt, b.reconnect_min, b.reconnect_max, jitter=b.reconnect_jitter)
        self._attempt += 1
        log.info("reconnecting in %.2fs (attempt %d)", delay, self._attempt)
        self._loop.call_later(delay, self._connect_once)

    def _run(self) -> None:
        """Connect, run the network loop until the connection drops, back off with jitter, repeat."""
        b = self.cfg.broker
        attempt = 0
        while not self._stopping.is_set():
            connects_before = self.connects
            try:
                self._client.connect(b.host, b.port, keepalive=b.keepalive)
            except (OSError, ValueError) as exc:
                log.info("cannot reach broker %s:%s: %s", b.host, b.port, exc)
            else:
                while not self._stopping.is_set():
                    rc = self._client.loop(timeout=0.5)
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
            self.connected = False
            if self.connects != connects_before:
                attempt = 0  # the broker accepted us; a later drop starts the backoff afresh
            if self._stopping.is_set():
                break
            delay = backoff_delay(attempt, b.reconnect_min, b.reconnect_max, jitter=b.reconnect_jitter)
            attempt += 1
            log.info("reconnecting in %.2fs (attempt %d)", delay, attempt)
            self._stopping.wait(delay)

    def publish(self, kind: Kind, message: DeviceMessage, *, retain: bool = False) -> None:
        """Queue a message (QoS 1), checked against its schema first. paho keeps it while disconnected."""
        self._client.publish(device_topic(self.cfg.device_id, kind), encode(message), qos=1, retain=retain)

    def publish_bytes(self, kind: Kind, payload: bytes) -> int | None:
        """Publish ready-made bytes (QoS 1) if connected; the mid to match with ``on_published``, else None."""
        if not self.connected:
            return None
        info = self._client.publish(device_topic(self.cfg.device_id, kind), payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        return int(info.mid)

    # -- paho callbacks (network thread) -------------------------------------
    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if reason.is_failure:
            log.warning("broker refused connection: %s", reason)
            client.disconnect()
            return
        # Subscribed (clean session: on every connection) before anyone may publish: the broker handles a client's
        # packets in order, so the ack topic is ours before any window of this connection reaches a controller.
        client.subscribe([(device_topic(self.cfg.device_id, Kind.DESIRED), 1), (device_topic(self.cfg.device_id, Kind.ACK), 0)])
        self.connects += 1
        self.connected = True
        self.last_contact = time.time()
        log.info("connected to broker %s:%s", self.cfg.broker.host, self.cfg.broker.port)
        self._on_connect_cb()

    def _handle_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        self.connected = False
        if self._stopping.is_set():
            return
        log.warning("disconnected from broker (%s); reconnecting with backoff", reason)
        if self._loop is not None:
            self._reconnect_later()

    def _handle_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any = None, props: Any = None) -> None:
        self.last_contact = time.time()
        cb = self.on_published
        if cb is not None:
            cb(mid)  # must not block or take locks held around publish(): paho holds its own lock here

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == device_topic(self.cfg.device_id, Kind.ACK):
            self._handle_ack(bytes(msg.payload))
            return
        if msg.topic != device_topic(self.cfg.device_id, Kind.DESIRED):
            self.malformed += 1
            log.warning("message on unexpected topic %r ignored", msg.topic[:200])
            return
        try:
            self._on_desired(bytes(msg.payload))
        except Exception:  # never let a bad message kill the network thread
            self.malformed += 1
            log.exception("error handling message on %s", msg.topic)

    def _handle_ack(self, payload: bytes) -> None:
        try:
            seqs = decode_ack(payload).seqs
        except ProtocolError as exc:
            self.malformed += 1
            log.warning("malformed telemetry ack ignored: %.200s", exc)
            return
        self.last_contact = time.time()
        cb = self.on_window_ack
        if cb is not None:
            cb(seqs)  # must not block: this is the network thread
