"""Metadata that never lapses: TUF timestamp/snapshot and signed desired states with lifetimes of
seconds, re-signed by the leader, so an agent still installs after several expiry periods,
including one that was offline across them and reads its retained desired state on return."""

from __future__ import annotations

import time

import pytest

from firmware_sim.procs import start_agent, start_controller
from shared.topics import Kind, device_topic
from tests.mqttwatch import Watcher

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FAST_HEALTH = "[health]\nlive_window = 0.5\n"
SHORT = {
    "EDGEFLEET_TUF_TIMESTAMP_EXPIRY_S": "3",
    "EDGEFLEET_TUF_SNAPSHOT_EXPIRY_S": "4",
    "EDGEFLEET_DESIRED_TTL_S": "4",
}


def production_version(status: dict) -> int | None:
    prod = status.get("models", {}).get("production")
    return prod["version"] if status.get("state") == "online" and prod else None


def test_agents_install_after_several_expiry_periods(mosquitto, tmp_path, make_bundle) -> None:
    controller = start_controller(tmp_path, broker_host=mosquitto.host, broker_port=mosquitto.port, env=SHORT)
    agent = None
    device = "expiry-dev-1"
    try:
        with controller.client() as api:
            for v in (1, 2):
                assert api.post("/v1/models", content=make_bundle(v)).status_code == 201
                controller.approve("digits", v)
            assert api.post("/v1/devices", json={"id": device}).status_code == 201
            key = api.get("/v1/trust").json()["director_public_key"]
            kw = dict(broker_host=mosquitto.host, broker_port=mosquitto.port, director_keys=[key], extra=FAST_HEALTH)
            watch = Watcher(mosquitto.host, mosquitto.port, device_topic(device, Kind.STATUS), device_topic(device, Kind.EVENTS))
            agent = start_agent(tmp_path, device, controller_url=controller.url, **kw)
            assert api.put(f"/v1/devices/{device}/desired", json={"model": "digits", "version": 1}).status_code == 200
            watch.wait_for(lambda m: production_version(m) == 1, "/status", timeout=60)
            first = api.get("/v1/tuf/metadata/timestamp.json").json()["signed"]

            # Offline across several lifetimes of everything; the assignment waits as retained desired state.
            agent.stop()
            assert api.put(f"/v1/devices/{device}/desired", json={"model": "digits", "version": 2}).status_code == 200
            assigned_counter = api.get(f"/v1/devices/{device}").json()["desired_counter"]
            time.sleep(13)
            ts = api.get("/v1/tuf/metadata/timestamp.json").json()["signed"]
            assert ts["version"] >= first["version"] + 3, "the leader re-signs the timestamp within each lifetime"
            assert api.get(f"/v1/devices/{device}").json()["desired_counter"] >= assigned_counter + 2, "desired re-signed"

            agent = start_agent(tmp_path, device, config_path=agent.config_path)
            watch.wait_for(lambda m: production_version(m) == 2, "/status", timeout=60)
            assert not [m for m in watch.messages if "expired" in str(m)], "nothing the agent saw had lapsed"
            watch.close()
    finally:
        if agent is not None:
            agent.stop()
        controller.stop()
