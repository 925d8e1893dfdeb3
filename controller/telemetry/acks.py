"""Application-level acknowledgements of telemetry windows and device events, published to each device's ``ack`` topic.

Events are acknowledged by their seq exactly as windows are (ADR 0078); below, "window" stands for both.

Why (docs/adr/0068): the broker's PUBACK tells an agent only that the *broker* has a
window. Mosquitto then loses it in three ways the agent cannot see: no subscriber yet
after a broker restart, the in-flight messages of a SIGKILLed clean-session member of
the share group, and a batch the controller could not write. So the agent keeps each
window until the controller says it has committed it (or refused it for good), and sends
it again otherwise; the dedupe by seq makes the repeats harmless.

``AckPublisher.add`` is called where the MQTT message is acknowledged (after the commit);
a thread coalesces what arrived meanwhile into one QoS 0 message per device. A lost ack
costs one duplicate window, which is acknowledged again (docs/adr/0072).

The same thread also sends the broker's PUBACKs for the messages the ingester has made
durable (``puback``). With a ``bulk`` writer (``ControllerMqtt``), everything one flush has
to send — the acks to the devices and the PUBACKs — goes to the MQTT client as one write
of ready-made packets instead of one queued packet, one wake-up and one ``send`` each:
at one window per device per minute every window needs its own ack message, so this is
most of the controller's MQTT cost per window.

Everything is written to one broker connection, named by its number (``AckLink``):
while there is none, the acks to devices wait (bounded) and go out once the controller
is connected again; a PUBACK is only ever sent on the connection its message came in on
(its packet id means nothing on another one) and is dropped otherwise. The writer refuses
a connection that is gone, atomically with the disconnect, so no packet can be queued
ahead of the next CONNECT. Acks that could not be written are counted (``dropped``,
``pubacks_dropped``), never silently lost.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections import defaultdict
from typing import Protocol

from shared.messages import MAX_ACK_SEQS, SCHEMA_VERSION, WindowAck, encode
from shared.topics import Kind, device_topic

log = logging.getLogger(__name__)
MAX_HELD_SEQS = 100_000  # acks kept for devices while the controller has no broker connection; more are dropped


class AckLink(Protocol):
    """The controller's broker connection, as the ack thread sees it. Each method taking ``session`` writes only
    while connection number ``session`` is up, and returns False (nothing queued) otherwise."""

    def session(self) -> int | None:
        """The number of the broker connection that is up now; None while there is none."""

    def publish(self, session: int, device_id: str, payload: bytes) -> bool:
        """One ack to one device (QoS 0)."""

    def puback(self, session: int, mid: int) -> bool:
        """The broker's PUBACK of message ``mid`` received on connection ``session``."""

    def write(self, session: int, packets: bytes) -> bool | None:
        """Many ready-made MQTT packets as one write; None: this link cannot (send one by one)."""


def ack_payloads(pending: dict[str, list[int]]) -> list[tuple[str, bytes]]:
    """One payload per device (more when a device has more than ``MAX_ACK_SEQS`` seqs waiting)."""
    out: list[tuple[str, bytes]] = []
    for device_id, seqs in pending.items():
        for i in range(0, len(seqs), MAX_ACK_SEQS):
            out.append((device_id, encode(WindowAck(seqs=tuple(seqs[i : i + MAX_ACK_SEQS])))))
    return out


def ack_payload(seqs: list[int]) -> bytes:
    """``encode(WindowAck(seqs))`` for checked seqs (ints), without the reader's checks: it runs per window."""
    return b'{"schema":%d,"seqs":[%s]}' % (SCHEMA_VERSION, ",".join(map(str, seqs)).encode())


def publish_packet(topic: str, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH packet, QoS 0, not retained."""
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + payload
    n, length = len(body), bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        length.append(digit | (0x80 if n else 0))
        if not n:
            break
    return b"\x30" + bytes(length) + body


def puback_packets(mids: list[int]) -> bytes:
    return b"".join(struct.pack("!BBH", 0x40, 2, mid) for mid in mids)


class AckPublisher:
    def __init__(self, link: AckLink, *, bulk: bool = True, max_held: int = MAX_HELD_SEQS) -> None:
        self._link = link
        self._bulk = bulk
        self.max_held = max_held
        self._lock = threading.Lock()
        self._pending: defaultdict[str, list[int]] = defaultdict(list)
        self._held: dict[str, list[int]] = {}  # acks waiting for a broker connection (already counted as deferred)
        self._mids: list[tuple[int, int]] = []  # (connection, mid) of messages whose PUBACK is due
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0  # ack messages written
        self.windows_sent = 0  # windows (seqs) in them
        self.deferred = 0  # windows whose ack had to wait for a broker connection
        self.dropped = 0  # windows whose ack was given up (the device sends the window again after its ack timeout)
        self.pubacks_dropped = 0  # PUBACKs whose connection was gone (the broker has dropped or will redeliver those)

    def add(self, device_id: str, seq: int) -> None:
        with self._lock:
            self._pending[device_id].append(seq)
        if not self._wake.is_set():  # setting an Event takes its lock and notifies: once per flush is enough
            self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stop.is_set()

    def puback(self, mid: int, session: int) -> None:
        """Acknowledge a QoS 1 message received on connection ``session`` to the broker with the next flush."""
        with self._lock:
            self._mids.append((session, mid))
        if not self._wake.is_set():
            self._wake.set()

    def counts(self) -> dict[str, int]:
        """Windows by what happened to their ack (for metrics)."""
        return {"sent": self.windows_sent, "deferred": self.deferred, "dropped": self.dropped}

    @property
    def held(self) -> int:
        """Windows whose ack waits for a broker connection now."""
        with self._lock:
            return sum(len(v) for v in self._held.values())

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="telemetry-acks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def flush(self) -> None:
        with self._lock:
            new, self._pending = self._pending, defaultdict(list)
            held, self._held = self._held, {}
            mids, self._mids = self._mids, []
        if not new and not held and not mids:
            return
        session = self._link.session()
        due = [mid for s, mid in mids if s == session]
        self.pubacks_dropped += len(mids) - len(due)
        if session is None:
            self._hold(held, new)
            return
        pending = {d: list(seqs) for d, seqs in held.items()}
        for device_id, seqs in new.items():
            pending.setdefault(device_id, []).extend(seqs)
        acks = [(d, seqs[i : i + MAX_ACK_SEQS]) for d, seqs in pending.items() for i in range(0, len(seqs), MAX_ACK_SEQS)]
        if self._bulk:
            blob = b"".join(publish_packet(device_topic(d, Kind.ACK), ack_payload(seqs)) for d, seqs in acks)
            try:
                written = self._link.write(session, blob + puback_packets(due))
            except Exception:  # fall back to one by one
                log.exception("could not write %d acks at once", len(acks) + len(due))
                written = None
            if written:
                self._count_sent(acks)
                return
            if written is False:  # the connection went away since session(): nothing was queued
                self.pubacks_dropped += len(due)
                self._hold(held, new)
                return
        self._one_by_one(session, acks, due, held)

    def _one_by_one(self, session: int, acks: list[tuple[str, list[int]]], due: list[int], held: dict[str, list[int]]) -> None:
        for mid in due:
            try:
                ok = self._link.puback(session, mid)
            except Exception:
                log.exception("could not acknowledge message %d to the broker", mid)
                ok = False
            self.pubacks_dropped += not ok
        again: dict[str, list[int]] = {}  # not written for want of a connection: held as they were, or new
        fresh: dict[str, list[int]] = {}
        for device_id, seqs in acks:
            try:
                ok = self._link.publish(session, device_id, ack_payload(seqs))
            except Exception:  # a lost ack costs one re-sent window, never the thread
                log.exception("could not publish a telemetry ack to %s", device_id)
                self.dropped += len(seqs)
                continue
            if ok:
                self._count_sent([(device_id, seqs)])
                continue
            before = set(held.get(device_id, ()))
            again.setdefault(device_id, []).extend(s for s in seqs if s in before)
            fresh.setdefault(device_id, []).extend(s for s in seqs if s not in before)
        if again or fresh:
            self._hold(again, fresh)

    def _count_sent(self, acks: list[tuple[str, list[int]]]) -> None:
        self.sent += len(acks)
        self.windows_sent += sum(len(seqs) for _, seqs in acks)

    def _hold(self, held: dict[str, list[int]], new: dict[str, list[int]]) -> None:
        """Keep acks for the next connection (true whenever they arrive), oldest first, up to ``max_held`` seqs."""
        with self._lock:
            room = self.max_held - sum(len(v) for v in self._held.values())
            for acks, fresh in ((held, False), (new, True)):
                for device_id, seqs in acks.items():
                    keep = seqs[: max(0, room)]
                    room -= len(keep)
                    if keep:
                        self._held.setdefault(device_id, []).extend(keep)
                        self.deferred += len(keep) if fresh else 0
                    self.dropped += len(seqs) - len(keep)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            self.flush()
        self.flush()
