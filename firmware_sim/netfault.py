"""A TCP relay between simulated devices and the stack, where the network's faults are made.

Each relay forwards 127.0.0.1:``port`` to a target and has one mode at a time:

- ``up``: bytes pass unchanged;
- ``partition``: bytes stop flowing both ways on open connections (as a dropped
  route: the devices notice only by their keep-alive) and new connections are
  closed at once;
- ``slow``: every direction limited to ``rate`` bytes per second;
- ``corrupt`` / ``truncate`` (HTTP relays): on responses to ``GET /v1/bundles/``
  bytes of the body are flipped, or the connection is closed half way through the
  body, so the agent must notice (hash, length) and resume or retry.

- ``drop-acks`` (MQTT relays, ``mqtt=True``): broker→device PUBLISH packets on a
  device's ``ack`` topic are dropped, the rest passes: the controller's telemetry acks
  are lost (a QoS 0 message the broker could not deliver), nothing else is.

``flapping`` is driven from outside (the scenario's timeline alternates ``up`` and
``partition``). A thread per direction per connection: relays sit only in front of
the groups of devices a scenario puts faults on.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from firmware_sim.mosquitto import listening_socket

__all__ = ["MODES", "Relay", "mqtt_packets", "publish_topic"]
MODES = ("up", "partition", "slow", "corrupt", "truncate", "drop-acks")
_BUNDLE_GET = b"GET /v1/bundles/"
_ACK_SUFFIX = b"/ack"


def mqtt_packets(buf: bytearray) -> list[bytes]:
    """Take the whole MQTT packets off the front of ``buf``; a partial last one stays for more bytes."""
    out: list[bytes] = []
    while len(buf) >= 2:
        length, mult, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return out
            digit = buf[i]
            length += (digit & 0x7F) * mult
            mult *= 128
            i += 1
            if not digit & 0x80:
                break
            if i > 4:
                raise ValueError("malformed MQTT remaining length")
        if len(buf) < i + length:
            break
        out.append(bytes(buf[: i + length]))
        del buf[: i + length]
    return out


def publish_topic(packet: bytes) -> bytes | None:
    """The topic of a whole PUBLISH packet; None for any other packet."""
    if packet[0] >> 4 != 3:
        return None
    i = 1
    while packet[i] & 0x80:
        i += 1
    (n,) = struct.unpack_from("!H", packet, i + 1)
    return packet[i + 3 : i + 3 + n]


class Relay:
    def __init__(self, target_host: str, target_port: int, name: str = "relay", *, mqtt: bool = False) -> None:
        """``mqtt``: the relay frames what the broker sends into packets (needed for ``drop-acks``; plain MQTT only)."""
        self.name = name
        self.mqtt = mqtt
        self.dropped_acks = 0  # ack PUBLISH packets dropped in ``drop-acks``
        self.target = (target_host, target_port)
        self._server = listening_socket()
        self.port = int(self._server.getsockname()[1])
        self.mode = "up"
        self.rate = 16 * 1024.0  # bytes per second in ``slow``
        self.damaged = 0  # bundle responses corrupted or truncated so far
        self._lock = threading.Lock()
        self._live: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name=f"{name}-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: str, rate: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown network mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode == "drop-acks" and not self.mqtt:
            raise ValueError(f"relay {self.name}: 'drop-acks' needs an MQTT relay (mqtt=True)")
        if rate is not None:
            self.rate = float(rate)
        self.mode = mode

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            if self.mode == "partition" or self._closed:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._live += [client, upstream]
            bundle = threading.Event()  # this connection asked for a bundle
            threading.Thread(target=self._pipe, args=(client, upstream, bundle, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, bundle, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, bundle: threading.Event, response: bool) -> None:
        seen = 0  # response bytes passed on
        framing = bytearray() if response and self.mqtt else None  # broker bytes not yet a whole packet
        try:
            while data := src.recv(16384):
                while self.mode == "partition" and not self._closed:
                    time.sleep(0.1)  # the route is gone: nothing passes, nothing is closed
                if framing is not None:
                    framing += data
                    data = b"".join(p for p in mqtt_packets(framing) if not self._dropped_ack(p))
                    if not data:
                        continue
                if not response and data.startswith(_BUNDLE_GET):
                    bundle.set()
                if response and bundle.is_set() and self.mode in ("corrupt", "truncate"):
                    if self.mode == "truncate" and seen > 2048:
                        self.damaged += 1
                        break  # half way through the body: the connection drops
                    if self.mode == "corrupt" and seen + len(data) > 1024:
                        cut = max(0, 1024 - seen)
                        data = data[:cut] + bytes(b ^ 0x5A for b in data[cut : cut + 64]) + data[cut + 64 :]
                        self.damaged += 1
                        bundle.clear()  # one damage per response
                if self.mode == "slow":
                    time.sleep(len(data) / max(self.rate, 1.0))
                dst.sendall(data)
                seen += len(data)
        except (OSError, ValueError):  # ValueError: not MQTT after all; the connection is dropped
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _dropped_ack(self, packet: bytes) -> bool:
        if self.mode != "drop-acks":
            return False
        topic = publish_topic(packet)
        if topic is None or not topic.endswith(_ACK_SUFFIX):
            return False
        self.dropped_acks += 1
        return True

    def drop_connections(self) -> None:
        """Close every open connection (a link reset); new ones are accepted per the mode."""
        with self._lock:
            live, self._live = self._live, []
        for s in live:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed = True
        self.drop_connections()
        self._server.close()
