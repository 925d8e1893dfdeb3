"""The store-and-forward outage scenario, shared by the integration test and the benchmark.

A real agent process sends telemetry through a real Mosquitto to a receiver
with a persistent session. The broker stops for several windows; meanwhile the
agent is SIGKILLed and restarted; then the broker comes back and the agent
drains its on-disk queue.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from firmware_sim.procs import start_agent, write_agent_config
from firmware_sim.telemetry_rx import TelemetryReceiver, director_key_hex, persistent_broker, queued_seqs
from shared.messages import Telemetry


@dataclass
class OutageResult:
    windows: dict[int, Telemetry]  # deduplicated by seq
    received: int  # messages received, duplicates included
    malformed: int
    stored_before_kill: set[int]  # seqs in the killed agent's queue right after SIGKILL
    stored_during_outage: set[int]  # ... plus those the restarted agent queued before the broker returned
    drained: bool  # every stored window arrived and the queue emptied
    agents_alive_at_end: bool
    log_tail: str = ""
    by_boot: dict[str, list[int]] = field(default_factory=dict)  # window indices received per agent boot

    @property
    def recovered_ratio(self) -> float:
        """Distinct windows received / windows that existed (per boot 0..max index, plus stored ones never seen)."""
        expected = sum(max(ix) + 1 for ix in self.by_boot.values())
        expected += len((self.stored_before_kill | self.stored_during_outage) - self.windows.keys())
        got = sum(len(set(ix)) for ix in self.by_boot.values())
        return got / expected if expected else 0.0


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
    receiver = TelemetryReceiver(broker.host, broker.port, device)
    cfg = write_agent_config(
        workdir, device, broker_host=broker.host, broker_port=broker.port, director_keys=[director_key_hex()],
        extra=f"[telemetry]\nwindow_s = {window_s}\n",
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
        before_kill = queued_seqs(data_dir)
        agents.append(start_agent(workdir, device, config_path=cfg))
        # ... and goes on until the restarted agent has queued down_windows more.
        if not _wait(lambda: len(queued_seqs(data_dir) - before_kill) >= down_windows, 60 + down_windows * window_s):
            raise RuntimeError(f"the restarted agent queued {len(queued_seqs(data_dir) - before_kill)} windows")
        during = before_kill | queued_seqs(data_dir)
        broker.start()

        def all_arrived() -> bool:
            got = receiver.snapshot().keys()
            return during <= got and not (queued_seqs(data_dir) - got)

        drained = _wait(all_arrived, 60)
        windows = receiver.snapshot()
        by_boot: dict[str, list[int]] = defaultdict(list)
        for w in windows.values():
            by_boot[str(w.agent.get("boot"))].append(int(w.agent.get("window", -1)))
        return OutageResult(
            windows=windows,
            received=receiver.received,
            malformed=receiver.malformed,
            stored_before_kill=before_kill,
            stored_during_outage=during,
            drained=drained,
            agents_alive_at_end=agents[-1].alive(),
            log_tail=agents[-1].log()[-3000:],
            by_boot=dict(by_boot),
        )
    finally:
        for a in agents:
            a.stop()
        receiver.close()
        broker.stop()
