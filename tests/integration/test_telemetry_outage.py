"""Store-and-forward: broker down for several windows, the agent SIGKILLed and restarted
meanwhile, broker back: every stored window reaches the receiver exactly once (dedupe by seq)."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict

import pytest

from firmware_sim.procs import start_agent, write_agent_config
from tests.telemetry_helpers import TelemetryReceiver, director_key_hex, persistent_broker, queued_seqs

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WINDOW_S = 0.5


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what()
        time.sleep(0.1)


def test_windows_survive_broker_outage_and_agent_sigkill(tmp_path):
    device = "outage-1"
    broker = persistent_broker(tmp_path / "broker")
    broker.start()
    receiver = TelemetryReceiver(broker.host, broker.port, device)
    cfg = write_agent_config(
        tmp_path, device, broker_host=broker.host, broker_port=broker.port, director_keys=[director_key_hex()],
        extra=f"[telemetry]\nwindow_s = {WINDOW_S}\n",
    )  # fmt: skip
    agents = []
    try:
        agents.append(start_agent(tmp_path, device, config_path=cfg))
        data_dir = cfg.parent
        wait_until(lambda: len(receiver.snapshot()) >= 3, 30, lambda: f"no windows arrived; log:\n{agents[0].log()[-2000:]}")

        broker.stop()  # outage starts
        time.sleep(6 * WINDOW_S)
        agents[0].kill()  # power cut in the middle of the outage
        stored_before_kill = queued_seqs(data_dir)
        assert len(stored_before_kill) >= 4, stored_before_kill
        agents.append(start_agent(tmp_path, device, config_path=cfg))
        time.sleep(6 * WINDOW_S)
        stored_during_outage = stored_before_kill | queued_seqs(data_dir)
        assert len(stored_during_outage) >= len(stored_before_kill) + 4

        broker.start()  # outage over
        wait_until(
            lambda: (
                stored_during_outage <= receiver.snapshot().keys() and not (queued_seqs(data_dir) - receiver.snapshot().keys())
            ),
            60,
            lambda: f"missing {sorted(stored_during_outage - receiver.snapshot().keys())}; log:\n{agents[1].log()[-2000:]}",
        )
        windows = receiver.snapshot()
        assert receiver.malformed == 0
        # Exactly once after dedupe: one seq per (boot, window index), and no gaps within a boot.
        by_boot = defaultdict(list)
        for w in windows.values():
            by_boot[w.agent["boot"]].append(w.agent["window"])
        assert len(by_boot) == 2
        for boot, indices in by_boot.items():
            assert len(indices) == len(set(indices)), f"boot {boot}: one window under two seqs"
            assert sorted(indices) == list(range(max(indices) + 1)), f"boot {boot}: windows missing: {sorted(indices)}"
        # Windows cover time without overlap within a boot.
        for boot in by_boot:
            ws = sorted((w for w in windows.values() if w.agent["boot"] == boot), key=lambda w: w.agent["window"])
            for a, b in itertools.pairwise(ws):
                assert b.window_start == pytest.approx(a.window_start + a.window_s, abs=0.002)
        assert receiver.received >= len(windows)  # duplicates are allowed on the wire (QoS 1) ...
        assert all(agent.alive() for agent in agents[1:])
    finally:
        for a in agents:
            a.stop()
        receiver.close()
        broker.stop()
