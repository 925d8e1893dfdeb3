"""Forwards stored windows to the broker, oldest first, deleting each only once acknowledged.

Runs in its own thread. Acknowledgements arrive on paho's network thread
while paho holds its own lock, so they are handed over through a lock-free
``SimpleQueue`` and matched to windows here, never under a lock that
``publish()`` also needs. A mid is registered right after ``publish()``
returns and acks are drained only at the start of the next step, so an ack
can never be looked up before its mid is known; acks of other messages
(status, events) match nothing and are ignored.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from agent.link import MqttLink
from agent.telemetry.queue import WindowQueue
from shared.topics import Kind

log = logging.getLogger(__name__)


class Sender:
    def __init__(self, link: MqttLink, store: WindowQueue, *, max_inflight: int = 20, ack_timeout: float = 30.0) -> None:
        self.link = link
        self.store = store
        self.max_inflight = max_inflight
        self.ack_timeout = ack_timeout  # seconds connected without a PUBACK before a window is sent again
        self.sent = 0
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._inflight: dict[int, tuple[int, float]] = {}  # mid -> (seq, sent or reconnected at)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._epoch = -1
        self._thread = threading.Thread(target=self._run, name="telemetry-sender", daemon=True)
        link.on_published = self._on_published

    def _on_published(self, mid: int) -> None:
        self._acks.put(mid)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # the sender must outlive any surprise; the windows stay on disk
                log.exception("telemetry sender step failed")
                time.sleep(1.0)
            self._wake.wait(0.5)
            self._wake.clear()

    def step(self) -> None:
        now = time.monotonic()
        acked: list[int] = []
        while True:
            try:
                done = self._acks.get_nowait()
            except queue.Empty:
                break
            if done in self._inflight:
                acked.append(self._inflight.pop(done)[0])
        if self.link.connects != self._epoch:
            # New session: paho re-sends its unacknowledged messages with the same mids; give them time.
            self._epoch = self.link.connects
            self._inflight = {mid: (seq, now) for mid, (seq, _) in self._inflight.items()}
        if self.link.connected:
            for mid, (_seq, at) in list(self._inflight.items()):
                if now - at > self.ack_timeout:
                    del self._inflight[mid]  # sent again below; the receiver drops a duplicate by seq
        self.store.ack(acked)
        if not self.link.connected or len(self._inflight) >= self.max_inflight:
            return
        busy = {seq for seq, _ in self._inflight.values()}
        room = self.max_inflight - len(self._inflight)
        for seq, payload in self.store.oldest(room + len(busy)):
            if seq in busy:
                continue
            if room <= 0:
                break
            new_mid = self.link.publish_bytes(Kind.TELEMETRY, payload)
            if new_mid is None:
                return
            self.sent += 1
            room -= 1
            self._inflight[new_mid] = (seq, now)
