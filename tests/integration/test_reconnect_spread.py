"""Presence: after a broker restart, 200 agents' links come back spread over time, not in one burst."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.config import AgentConfig, BrokerConfig
from agent.link import MqttLink
from firmware_sim.mosquitto import MosquittoProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N = 200


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_200_clients_reconnect_spread_over_time_after_a_broker_restart(tmp_path: Path):
    broker = MosquittoProcess(tmp_path / "broker")
    broker.start()
    connected_at: dict[int, list[float]] = {i: [] for i in range(N)}
    lock = threading.Lock()
    links = []
    try:
        bcfg = BrokerConfig(host=broker.host, port=broker.port, keepalive=10, reconnect_min=0.5, reconnect_max=4.0)
        for i in range(N):
            cfg = AgentConfig(
                device_id=f"spread-{i:03d}",
                data_dir=tmp_path,
                socket_path=tmp_path / "s",
                director_public_keys=("0" * 64,),
                broker=bcfg,
            )

            def on_connect(i: int = i) -> None:
                with lock:
                    connected_at[i].append(time.monotonic())

            link = MqttLink(cfg, lambda: 0, lambda payload: None, on_connect)
            link.start()
            links.append(link)
        wait_until(lambda: all(link.connected for link in links), 60, "not all clients connected at first")

        broker.stop()
        wait_until(lambda: not any(link.connected for link in links), 15, "clients did not notice the broker going away")
        time.sleep(2.0)  # down for a while: every client is in backoff
        restarted = time.monotonic()
        broker.start()
        wait_until(lambda: all(link.connects >= 2 for link in links), 60, "not all clients came back")

        delays = sorted(connected_at[i][1] - restarted for i in range(N))
        # Not all at once: no 250 ms slot holds more than a quarter of the fleet ...
        busiest = max(sum(1 for d in delays if s <= d < s + 0.25) for s in [x / 20 for x in range(0, 200)])
        assert busiest < N / 4, f"{busiest} of {N} clients reconnected within one 250 ms slot"
        # ... and the middle 80 % of reconnects span more than a second.
        p10, p90 = delays[N // 10], delays[9 * N // 10]
        assert p90 - p10 > 1.0, f"reconnects bunched: p10 {p10:.2f}s, p90 {p90:.2f}s"
        assert delays[-1] < 4.0 + 2.0, f"slowest reconnect {delays[-1]:.2f}s is beyond the backoff cap"
    finally:
        for link in links:
            link.stop()
        broker.stop()
