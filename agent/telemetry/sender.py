"""Forwards stored windows to the broker, oldest first, deleting each only once the controller has it.

Runs in its own thread. A window leaves the on-disk queue when the controller
acknowledges its seq on the device's ``ack`` topic (ADR 0068): the broker's
PUBACK only says the broker has it, and a broker restart or a dead controller
replica can still lose it there. A window not acknowledged ``ack_timeout``
seconds (connected) after it was sent is sent again; the controller drops the
duplicate by seq and acknowledges it again. With ``controller_acks=False`` the
PUBACK is enough (a receiver that sends no acks).

Acknowledgements arrive on paho's network thread while paho holds its own
lock, so they are handed over through a lock-free ``SimpleQueue`` and matched
to windows here, never under a lock that ``publish()`` also needs. A mid is
registered right after ``publish()`` returns and acks are drained only at the
start of the next step, so an ack can never be looked up before its mid is
known; PUBACKs of other messages (status) match nothing.

Several stored windows go out in one message (``shared.wire.rebatch``, up to
``windows_per_publish``), so the per-message TCP, TLS and MQTT overhead is paid
once for all of them, compressed with LZMA rather than zlib (~11 % smaller).
When a message goes is the cadence rule (``agent.telemetry.cadence``): a batch
that is not full waits at most ``batch_wait_s`` for more windows, unless the
desired state asks for fresh telemetry (``fresh()``) or a notable window was
closed (``hurry``). Each window is still acknowledged, timed out and deleted on
its own.

Device events (ADR 0078) wait in the same queue and go by the same rules (ack by seq,
sent again after ``ack_timeout``, within ``max_inflight``), one event a message on the
``events`` topic, ahead of windows and without waiting for company.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from agent.link import MqttLink
from agent.telemetry import cadence
from agent.telemetry.queue import WindowQueue
from shared import wire
from shared.errors import SchemaError
from shared.topics import Kind

log = logging.getLogger(__name__)
CONTROLLER_ACKS = "controller_acks_seen"  # queue mark: a controller has acknowledged windows of this queue


class Sender:
    def __init__(
        self,
        link: MqttLink,
        store: WindowQueue,
        *,
        max_inflight: int = 20,
        ack_timeout: float = 30.0,
        controller_acks: bool = True,
        windows_per_publish: int = 1,
        batch_wait_s: float = 0.0,
        fresh: Callable[[], bool] = lambda: False,
    ) -> None:
        self.link = link
        self.store = store
        self.max_inflight = max_inflight  # windows sent and not yet acknowledged
        self.ack_timeout = ack_timeout  # seconds connected without an ack before a window is sent again
        self.controller_acks = controller_acks
        self.windows_per_publish = windows_per_publish
        self.batch_wait_s = batch_wait_s  # seconds a message that is not full waits for more windows
        self.fresh = fresh  # the desired state asks for each window as soon as it closes
        self._urgent_through = -1  # windows up to this seq go without waiting for company (``hurry``)
        self._first_seen: dict[int, float] = {}  # seq -> when the sender first saw it waiting (monotonic)
        self.sent = 0
        self.messages = 0  # telemetry messages published (each with one or more windows)
        self.acked = 0  # windows acknowledged (by the controller, or the broker without controller acks)
        self.resent = 0  # windows and events sent again after ``ack_timeout``
        self.events_sent = 0  # event messages published
        self._events: queue.SimpleQueue[int | tuple[int, ...]] = queue.SimpleQueue()  # a PUBACK's mid, or acked seqs
        self._inflight: dict[int, tuple[int, float]] = {}  # seq -> (mid, sent or reconnected at)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._epoch = -1
        self._thread = threading.Thread(target=self._run, name="telemetry-sender", daemon=True)
        link.on_published = self._on_published
        link.on_window_ack = self._on_window_ack

    def _on_published(self, mid: int) -> None:
        if not self.controller_acks:
            self._events.put(mid)
            self._wake.set()

    def _on_window_ack(self, seqs: tuple[int, ...]) -> None:
        self._events.put(seqs)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def hurry(self, seq: int) -> None:
        """Send window ``seq`` and every window before it without waiting for a full batch."""
        self._urgent_through = max(self._urgent_through, seq)
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5.0)

    def acks_expected(self) -> bool:
        """Whether acks come: one came in this run, a controller acked this queue before, or the PUBACK is the ack."""
        return bool(self.acked) or not self.controller_acks or self.store.marked(CONTROLLER_ACKS)

    def drain(self, timeout: float) -> bool:
        """Send what waits now (a batch that is not full too) and wait up to ``timeout`` s until it is acknowledged."""
        self.hurry(2**63 - 1)
        deadline = time.monotonic() + timeout
        while self.store.pending():
            if time.monotonic() > deadline:
                return False
            self.wake()
            time.sleep(0.05)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # the sender must outlive any surprise; the windows stay on disk
                log.exception("telemetry sender step failed")
                time.sleep(1.0)
            self._wake.wait(0.5)
            self._wake.clear()

    def _drain_acks(self) -> list[int]:
        acked: list[int] = []
        by_mid: dict[int, list[int]] = {}
        if not self.controller_acks:
            for seq, (mid, _) in self._inflight.items():
                by_mid.setdefault(mid, []).append(seq)
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return acked
            if isinstance(event, tuple):
                acked.extend(event)  # also seqs sent by an earlier run of the agent
            elif event in by_mid:
                acked.extend(by_mid.pop(event))
        return acked

    def step(self) -> None:
        now = time.monotonic()
        acked = self._drain_acks()
        if acked and self.controller_acks and not self.acked:
            self.store.mark(CONTROLLER_ACKS)  # a restarted agent knows acks come (``Telemetry.stop`` waits for them)
        self.acked += len(acked)
        for seq in acked:
            self._inflight.pop(seq, None)
            self._first_seen.pop(seq, None)  # acked before it was sent (an earlier run sent it)
        if self.link.connects != self._epoch:
            # New session: paho re-sends its unacknowledged messages with the same mids; give them time.
            self._epoch = self.link.connects
            self._inflight = {seq: (mid, now) for seq, (mid, _) in self._inflight.items()}
        if self.link.connected:
            for seq, (_mid, at) in list(self._inflight.items()):
                if now - at > self.ack_timeout:
                    del self._inflight[seq]  # sent again below; the receiver drops a duplicate by seq
                    self.resent += 1
        self.store.ack(acked)
        if not self.link.connected or len(self._inflight) >= self.max_inflight:
            return
        if not self._send_events(now):
            return
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        k = self.windows_per_publish
        waiting = [(seq, p) for seq, p in self.store.oldest(room + len(self._inflight)) if seq not in self._inflight]
        for seq, _ in waiting:
            self._first_seen.setdefault(seq, now)
        fresh = self.fresh()
        for i in range(0, min(len(waiting), room), k):
            chunk = waiting[i : min(i + k, room)]
            oldest = chunk[0][0]
            urgent = oldest <= self._urgent_through
            wait_s = now - self._first_seen[oldest]
            if not cadence.due(len(chunk), wait_s, full=k, max_wait_s=self.batch_wait_s, fresh=fresh, urgent=urgent):
                break  # wait for more windows to share this message
            new_mid = self._publish(chunk)
            if new_mid is None:
                return
            self.sent += len(chunk)
            self.messages += 1
            for seq, _ in chunk:
                self._inflight[seq] = (new_mid, now)
                self._first_seen.pop(seq, None)
            if len(chunk) < min(k, len(waiting) - i):
                return  # sent fewer than it could (windows of an older agent, or of two runs): the rest next step

    def _send_events(self, now: float) -> bool:
        """Send the stored events not in flight, oldest first, as room allows; False if the link refused one."""
        room = self.max_inflight - len(self._inflight)
        for seq, payload in self.store.events(room + len(self._inflight)):
            if room <= 0:
                break
            if seq in self._inflight:
                continue
            mid = self.link.publish_bytes(Kind.EVENTS, payload)
            if mid is None:
                return False
            self._inflight[seq] = (mid, now)
            self.events_sent += 1
            room -= 1
        return True

    def _publish(self, chunk: list[tuple[int, bytes]]) -> int | None:
        if len(chunk) == 1:
            return self.link.publish_bytes(Kind.TELEMETRY, chunk[0][1])
        try:
            payload, n = wire.rebatch([p for _, p in chunk], dense=True)  # LZMA: metered links count every byte
        except SchemaError:  # e.g. windows stored by an older agent (v1): they go one by one
            log.info("telemetry windows %s cannot share a message; sending them one by one", [s for s, _ in chunk])
            del chunk[1:]
            return self.link.publish_bytes(Kind.TELEMETRY, chunk[0][1])
        del chunk[n:]  # windows of a later run of the agent (a restart): in the next message
        return self.link.publish_bytes(Kind.TELEMETRY, payload)
