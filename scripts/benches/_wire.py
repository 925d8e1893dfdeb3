"""Bytes on the wire between one agent and the broker, measured: a counting TCP proxy plus the kernel's segment counts.

The agent connects over mTLS (as in production) to a proxy that forwards to a
secured Mosquitto; a real controller ingests the windows and acknowledges them
to the device (ADR 0068), so the acks are in the count too. The proxy counts
the TCP payload both ways (TLS records, MQTT packets) and, from ``TCP_INFO`` of
its agent-facing socket, the segments that carried no data (ACKs, SYN, FIN).
Loopback segments are up to 64 KB, so data segments are counted as a cellular
link would cut them: ``ceil(chunk / MSS)`` per chunk read from the socket.
Every segment costs ``HEADER`` bytes of IPv4 + TCP (with timestamps).
"""

from __future__ import annotations

import math
import socket
import struct
import threading
from dataclasses import dataclass

MSS = 1448  # bytes of TCP payload per segment on a 1500-byte MTU with TCP timestamps
HEADER = 20 + 20 + 12  # IPv4 + TCP + timestamp option, per segment


@dataclass(frozen=True)
class Count:
    payload: int  # TCP payload bytes, both ways
    data_segments: int  # as cut at MSS
    other_segments: int  # segments without data (ACK, SYN, FIN), from the kernel

    @property
    def wire(self) -> int:
        return self.payload + HEADER * (self.data_segments + self.other_segments)

    def __sub__(self, other: Count) -> Count:
        return Count(
            self.payload - other.payload,
            self.data_segments - other.data_segments,
            self.other_segments - other.other_segments,
        )


def _segments(sock: socket.socket) -> tuple[int, int]:
    """(segments, data segments) both ways, from the kernel (Linux TCP_INFO, 4.6+)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160)
    segs_out, segs_in = struct.unpack_from("=II", info, 136)
    data_in, data_out = struct.unpack_from("=II", info, 152)
    return segs_out + segs_in, data_in + data_out


class CountingProxy:
    """Forwards one TCP connection at a time to ``target`` and counts what crosses it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._lock = threading.Lock()
        self._payload = 0
        self._data_segments = 0
        self._agent_side: socket.socket | None = None
        self._closed_other = 0  # segments without data of earlier connections
        self._stop = threading.Event()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def count(self) -> Count:
        with self._lock:
            other = self._closed_other
            if self._agent_side is not None:
                try:
                    segs, data = _segments(self._agent_side)
                    other += segs - data
                except OSError:
                    pass
            return Count(self._payload, self._data_segments, other)

    def close(self) -> None:
        self._stop.set()
        self._srv.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                agent, _ = self._srv.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._agent_side = agent
            done = threading.Event()
            for src, dst in ((agent, upstream), (upstream, agent)):
                threading.Thread(target=self._pump, args=(src, dst, done), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, done: threading.Event) -> None:
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                with self._lock:
                    self._payload += len(chunk)
                    self._data_segments += math.ceil(len(chunk) / MSS)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            if not done.is_set():
                done.set()
                with self._lock:
                    if self._agent_side is not None:
                        try:
                            segs, data = _segments(self._agent_side)
                            self._closed_other += segs - data
                        except OSError:
                            pass
                        self._agent_side = None
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
