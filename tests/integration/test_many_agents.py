"""Many real agents in one process: one shared MQTT loop (epoll) and one loaded-model cache.

The process's descriptors are pushed past 1023 first, where paho's own
``select()`` loop fails, so every agent socket here is one ``select()`` refuses.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.daemon import Agent
from agent.mqttloop import MqttLoop
from agent.runtime.cache import ModelCache
from firmware_sim.mosquitto import MosquittoProcess
from firmware_sim.telemetry_rx import director_key_hex
from tests.mqttwatch import Watcher

pytestmark = pytest.mark.integration
N = 12


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}")
        time.sleep(0.05)


@pytest.fixture
def high_fds() -> Iterator[None]:
    """Hold descriptors until the next ones are above select()'s limit (1023)."""
    held: list[int] = []
    try:
        while True:
            fd = os.open(os.devnull, os.O_RDONLY)
            held.append(fd)
            if fd >= 1100:
                break
    except OSError as exc:  # a lower limit than this test needs: say so rather than test less
        for fd in held:
            os.close(fd)
        raise AssertionError(f"raise the open-file limit to run this test (ulimit -n 2048): {exc}") from None
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)


def test_agents_share_one_loop_above_select_limit_and_reconnect_after_a_broker_restart(tmp_path: Path, high_fds: None) -> None:
    broker = MosquittoProcess(tmp_path / "broker")
    broker.start()
    loop = MqttLoop()
    loop.start()
    cache = ModelCache()
    agents: list[Agent] = []
    try:
        for i in range(N):
            cfg = parse_config(
                {
                    "device_id": f"many-{i:02d}", "data_dir": str(tmp_path / f"d{i}"),
                    "director_public_keys": [director_key_hex()],
                    "broker": {"host": broker.host, "port": broker.port, "reconnect_min": 0.2, "reconnect_max": 1.0},
                    "telemetry": {"window_s": 1, "system_metrics": False, "windows_per_publish": 1},  # each one sent
                }
            )  # fmt: skip
            agents.append(Agent(cfg, mqtt_loop=loop, models=cache, local_socket=False))
        for a in agents:
            a.start()
        wait_until(lambda: all(a.link.connected for a in agents), 30, "every agent connected on the shared loop")
        fds = [int(f) for f in os.listdir("/proc/self/fd")]
        assert max(fds) > 1023
        wait_until(lambda: all(a.telemetry.sender.sent >= 1 for a in agents), 30, "a window from every agent")
        wait_until(lambda: all(a.telemetry.queue.pending() <= 1 for a in agents), 30, "windows acknowledged (PUBACK)")

        broker.stop()
        wait_until(lambda: not any(a.link.connected for a in agents), 30, "every agent noticed the broker is gone")
        before = [a.link.connects for a in agents]
        broker.start()
        wait_until(
            lambda: all(a.link.connected and a.link.connects > n for a, n in zip(agents, before, strict=True)),
            60,
            "every agent reconnected",
        )
        assert loop.errors == 0
    finally:
        for a in agents:
            a.stop()
        loop.stop()
        broker.stop()


def test_stopping_one_agent_on_a_shared_loop_says_goodbye_and_leaves_the_others_connected(tmp_path: Path) -> None:
    broker = MosquittoProcess(tmp_path / "broker")
    broker.start()
    watcher = Watcher(broker.host, broker.port, "edgefleet/v1/dev/+/status")
    loop = MqttLoop()
    loop.start()
    agents = []
    try:
        for i in range(3):
            cfg = parse_config(
                {
                    "device_id": f"bye-{i}", "data_dir": str(tmp_path / f"d{i}"), "director_public_keys": [director_key_hex()],
                    "broker": {"host": broker.host, "port": broker.port}, "telemetry": {"system_metrics": False},
                }
            )  # fmt: skip
            agents.append(Agent(cfg, mqtt_loop=loop, local_socket=False))
        for a in agents:
            a.start()
        wait_until(lambda: all(a.link.connected for a in agents), 30, "connected")
        agents[0].stop()

        def offline() -> bool:
            for topic, payload, _ in list(watcher.messages):
                if topic.endswith("bye-0/status") and json.loads(payload).get("state") == "offline":
                    return True
            return False

        wait_until(offline, 10, "the stopped agent's goodbye status")
        time.sleep(1.5)  # a tick of the loop: the others keep their sessions
        assert agents[1].link.connected and agents[2].link.connected
        assert agents[1].link.connects == 1 and agents[2].link.connects == 1
    finally:
        for a in agents[1:]:
            a.stop()
        watcher.close()
        loop.stop()
        broker.stop()
