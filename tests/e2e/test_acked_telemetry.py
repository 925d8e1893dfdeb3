"""Telemetry windows are acknowledged by the controller, not the broker (ADR 0068).

The broker restarts while the controller cannot reach it (its link is cut): the agent
reconnects first and the broker accepts (PUBACKs) windows nobody is subscribed to yet.
With only the broker's PUBACK those windows are gone; with the controller's own ack the
agent keeps them and sends them again. A bystander with a persistent session on the
persistent broker sees every window the broker accepted; every one of them must be
merged into the controller's database, and none counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from firmware_sim.procs import ControllerProc, start_agent, start_controller
from firmware_sim.telemetry_rx import TelemetryReceiver, director_key_hex, persistent_broker
from tests.netcut import CuttableLink
from tests.telemetrydb import merged_seqs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DEVICE = "acked-1"
AGENT = "[telemetry]\nwindow_s = 0.3\nsystem_metrics = false\nack_timeout_s = 2\n"


def wait_for(cond: Callable[[], object], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out: {what()}"
        time.sleep(0.1)


def metric(ctrl: ControllerProc, prefix: str) -> float:
    with ctrl.client() as api:
        text = api.get("/metrics").text
    return sum(float(ln[len(prefix) :]) for ln in text.splitlines() if ln.startswith(prefix))


def ingest_count(ctrl: ControllerProc, outcome: str) -> float:
    return metric(ctrl, f'edgefleet_ingest_messages_total{{kind="telemetry",outcome="{outcome}"}} ')


def test_windows_the_broker_accepted_while_the_controller_was_away_are_stored_once(tmp_path) -> None:
    broker = persistent_broker(tmp_path / "broker")
    broker.start()
    link = CuttableLink(broker.host, broker.port)  # the controller's network path to the broker
    db_url = f"sqlite:///{tmp_path}/controller/controller.db"
    ctrl = start_controller(tmp_path, broker_host="127.0.0.1", broker_port=link.port, database_url=db_url)
    tap = TelemetryReceiver(broker.host, broker.port, DEVICE, ack=False)
    agent = None
    try:
        with ctrl.client() as api:
            assert api.post("/v1/devices", json={"id": DEVICE}).status_code == 201
        agent = start_agent(
            tmp_path, DEVICE, broker_host=broker.host, broker_port=broker.port, director_keys=[director_key_hex()], extra=AGENT
        )
        wait_for(lambda: len(merged_seqs(db_url, DEVICE)) >= 3, 30, lambda: "first windows stored")

        link.cut()
        broker.stop()
        broker.start()  # the agent and the bystander come back; the controller cannot
        before = set(tap.snapshot())
        wait_for(lambda: len(set(tap.snapshot()) - before) >= 5, 30, lambda: "windows accepted by the restarted broker")
        unheard = set(tap.snapshot()) - merged_seqs(db_url, DEVICE)
        assert unheard, "the broker accepted windows the controller has not stored yet"
        link.restore()

        def missing() -> set[int]:
            return set(tap.snapshot()) - merged_seqs(db_url, DEVICE)

        wait_for(lambda: unheard <= merged_seqs(db_url, DEVICE), 30, lambda: f"windows never stored: {sorted(missing())}")
        # Windows published while the controller was still re-subscribing were accepted by the broker and dropped
        # (no member in the share group yet); the agent holds them until their ack and sends them again. Stop it
        # now, so some are still held: a restart must hand them over from its on-disk queue.
        config = agent.config_path
        agent.stop()
        seen = set(tap.snapshot())
        agent = start_agent(tmp_path, DEVICE, config_path=config)
        wait_for(
            lambda: seen <= merged_seqs(db_url, DEVICE),
            30,
            lambda: f"windows never stored: {sorted(seen - merged_seqs(db_url, DEVICE))}",
        )
        agent.stop()
        agent = None
        wait_for(lambda: not missing(), 15, lambda: f"windows never stored: {sorted(missing())}")
        merged = merged_seqs(db_url, DEVICE)
        wait_for(
            lambda: ingest_count(ctrl, "accepted") >= len(merged),
            15,
            lambda: f"ingest counted {ingest_count(ctrl, 'accepted')} for {len(merged)} windows",
        )
        stable = merged_seqs(db_url, DEVICE)
        assert stable == merged, "nothing is stored after the agent stopped and everything it sent was stored"
        assert ingest_count(ctrl, "accepted") == len(stable), "each window is merged exactly once"
        assert stable == set(tap.snapshot()), "only the agent's telemetry windows are merged"
        # Every stored window was acknowledged to the device (more acks than windows: duplicates are acked again).
        assert metric(ctrl, 'edgefleet_telemetry_acks_total{outcome="sent"} ') >= len(stable)
        assert metric(ctrl, 'edgefleet_telemetry_acks_total{outcome="dropped"} ') == 0
    finally:
        if agent is not None:
            agent.stop()
        tap.close()
        ctrl.stop()
        link.close()
        broker.stop()
