"""The store-and-forward outage scenario, shared by the integration test and the benchmark.

A real agent process sends telemetry through a real Mosquitto to the
controller's real ingest path (receiver, batcher, SQLite; it acknowledges each
stored window to the device, ADR 0068). The broker stops for several windows;
meanwhile the agent is SIGKILLed and restarted; then the broker comes back, the
agent drains its on-disk queue (every window queued during the outage stored by
the controller and acknowledged to the agent, so gone from its disk: ``drained``,
``heal_s``) and is stopped cleanly (its last, partial window included).
``recovered_ratio`` is the windows the controller stored over the windows the
agents closed.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_sim.procs import start_agent, write_agent_config
from firmware_sim.telemetry_rx import director_key_hex, persistent_broker, queued_seqs
from shared import wire
from shared.messages import Telemetry
from shared.topics import Kind, Topic


class StoringController:
    """The controller's ingest path on SQLite, with a tap on the windows it is handed."""

    def __init__(self, host: str, port: int, workdir: Path, device: str) -> None:
        import threading

        from sqlmodel import Session

        from controller.core.db import init_db, make_engine
        from controller.core.metrics import Metrics
        from controller.core.tables import Device
        from controller.telemetry.batch import TelemetryIngest
        from controller.telemetry.ingest import Ingestor
        from controller.telemetry.receiver import ControllerMqtt

        self.engine = make_engine(f"sqlite:///{workdir}/controller.db")
        init_db(self.engine)
        with Session(self.engine) as s:
            s.add(Device(id=device))
            s.commit()
        self.metrics = Metrics()
        self.ingest = TelemetryIngest(self.engine, self.metrics, linger_s=0.02)
        self._ingestor = Ingestor(self.engine, self.metrics, self.ingest)
        self._lock = threading.Lock()
        self.windows: dict[int, Telemetry] = {}
        self.received = 0
        self.ctl = ControllerMqtt(host, port, self._handle, kinds=(Kind.TELEMETRY,))
        self.ingest.start()
        self.ctl.start()

    def _handle(self, topic: Topic, message: Any, ack: Any) -> None:
        ws = wire.to_telemetry(message.batch) if hasattr(message, "batch") else [message]
        with self._lock:
            self.received += len(ws)
            for w in ws:
                self.windows.setdefault(w.seq, w)
        self._ingestor(topic, message, ack)

    @property
    def stored(self) -> int:
        return int(self.metrics.value("telemetry", "accepted"))

    @property
    def malformed(self) -> int:
        return self.ctl.malformed + int(self.metrics.value("telemetry", "malformed"))

    def snapshot(self) -> dict[int, Telemetry]:
        with self._lock:
            return dict(self.windows)

    def close(self) -> None:
        self.ctl.stop()
        self.ingest.stop()
        self.engine.dispose()


@dataclass
class OutageResult:
    windows: dict[int, Telemetry]  # handed to the controller, deduplicated by seq
    received: int  # windows received (several a message when batched), duplicates included
    malformed: int
    stored: int  # windows the controller stored (merged and committed, each once)
    closed: set[int]  # seqs of every window the agents closed: seen, queued at the kill, left queued at the end
    stored_before_kill: set[int]  # seqs in the killed agent's queue right after SIGKILL
    stored_during_outage: set[int]  # ... plus those the restarted agent queued before the broker returned
    drained: bool  # every window queued during the outage was stored and acknowledged (gone from the agent's disk)
    agents_alive_at_end: bool
    left: set[int] = field(default_factory=set)  # closed, not acknowledged at the clean stop: sent at the next start
    log_tail: str = ""
    by_boot: dict[str, list[int]] = field(default_factory=dict)  # window indices received per agent boot
    heal_s: float | None = None  # seconds from the broker's restart until ``drained``; None: not within the limit

    @property
    def recovered_ratio(self) -> float:
        """Windows the controller stored / windows the agents closed (the last ones included)."""
        return self.stored / len(self.closed) if self.closed else 0.0


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def run_outage(workdir: Path, *, window_s: float = 0.5, down_windows: int = 6, device: str = "outage-1") -> OutageResult:
    broker = persistent_broker(workdir / "broker")
    broker.start()
    receiver = StoringController(broker.host, broker.port, workdir, device)
    cfg = write_agent_config(
        workdir, device, broker_host=broker.host, broker_port=broker.port, director_keys=[director_key_hex()],
        extra=f"[telemetry]\nwindow_s = {window_s}\nack_timeout_s = 2.0\n",
    )  # fmt: skip
    data_dir = cfg.parent
    agents = [start_agent(workdir, device, config_path=cfg)]
    try:
        if not _wait(lambda: len(receiver.snapshot()) >= 3, 30):
            raise RuntimeError(f"no telemetry before the outage; agent log:\n{agents[0].log()[-2000:]}")
        broker.stop()
        # The outage lasts until the agent has queued down_windows windows on disk, then it is killed.
        if not _wait(lambda: len(queued_seqs(data_dir)) >= down_windows, 30 + down_windows * window_s):
            raise RuntimeError(f"the agent queued {len(queued_seqs(data_dir))} windows during the outage")
        agents[0].kill()
        _wait(lambda: len(queued_seqs(data_dir)) > 0, 5)  # a read racing the dying process's last write saw none once
        before_kill = queued_seqs(data_dir)
        agents.append(start_agent(workdir, device, config_path=cfg))
        # ... and goes on until the restarted agent has queued down_windows more.
        if not _wait(lambda: len(queued_seqs(data_dir) - before_kill) >= down_windows, 60 + down_windows * window_s):
            raise RuntimeError(f"the restarted agent queued {len(queued_seqs(data_dir) - before_kill)} windows")
        during = before_kill | queued_seqs(data_dir)
        broker.start()
        healing = time.monotonic()

        def healed() -> bool:
            # Arrived at the controller is not enough: the agent keeps a window until the controller's ack reaches it.
            return during <= receiver.snapshot().keys() and not (queued_seqs(data_dir) & during)

        drained = _wait(healed, 60)
        heal_s = round(time.monotonic() - healing, 2) if drained else None
        alive_before_stop = agents[-1].alive()
        agents[-1].stop()  # cleanly: the partial last window is closed and sent while acks come
        left = queued_seqs(data_dir)  # closed and not acknowledged: waits for the next start
        seen = receiver.snapshot().keys()
        closed = set(seen) | during | left
        _wait(lambda: receiver.stored >= len(closed), 10)  # the last windows may still be in a batch
        windows = receiver.snapshot()
        by_boot: dict[str, list[int]] = defaultdict(list)
        for w in windows.values():
            by_boot[str(w.agent.get("boot"))].append(int(w.agent.get("window", -1)))
        return OutageResult(
            windows=windows,
            received=receiver.received,
            malformed=receiver.malformed,
            stored=receiver.stored,
            closed=closed,
            left=left,
            stored_before_kill=before_kill,
            stored_during_outage=during,
            drained=drained,
            agents_alive_at_end=alive_before_stop,
            log_tail=agents[-1].log()[-3000:],
            by_boot=dict(by_boot),
            heal_s=heal_s,
        )
    finally:
        for a in agents:
            a.stop()
        receiver.close()
        broker.stop()
