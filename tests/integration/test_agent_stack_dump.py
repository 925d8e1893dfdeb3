"""A hung agent can be asked what it is doing: ``kill -USR1`` prints every thread's stack and the agent goes on."""

from __future__ import annotations

import signal
import time

import pytest

from agent.localapi.client import AgentClient
from tests.otalab import Lab

pytestmark = [pytest.mark.integration]


def test_sigusr1_prints_every_threads_stack_and_the_agent_keeps_serving(mosquitto, tmp_path):
    lab = Lab(tmp_path / "lab")
    agent = lab.start_agent(tmp_path, "dump-1", mosquitto)
    try:
        deadline = time.monotonic() + 30
        while not agent.socket_path.exists():
            assert time.monotonic() < deadline and agent.alive(), agent.log()[-3000:]
            time.sleep(0.1)
        agent.popen.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while "run_until_stopped" not in agent.log():  # the main thread's frame, by name: it is printed last
            assert time.monotonic() < deadline, agent.log()[-3000:]
            time.sleep(0.1)
        log = agent.log()
        assert log.count("Thread 0x") + log.count("Current thread 0x") >= 3, log[-3000:]  # main, MQTT and the rest
        time.sleep(0.5)
        assert agent.alive()
        with AgentClient(agent.socket_path) as c:
            assert "models" in c.info()
    finally:
        agent.stop()
        lab.close()
