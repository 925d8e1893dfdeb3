"""Every device converges without an operator: real controller, real agents, real Mosquitto.

- The controller cannot be reached when the assignment arrives: the agent
  reports why it has not converged, retries with backoff and installs once the
  controller answers again (no re-assignment, no restart).
- The agent's data directory fills up (a small tmpfs): the download fails, the
  verified model keeps serving, the status says so, and the update lands by
  itself when space comes back.
- The disk fills completely while a new model is under health check, so the
  OTA record cannot be written: the agent goes back to its committed model,
  says why, survives, and the update lands by itself when space comes back.
- The broker restarts in the middle of a rollout to several agents: all of them
  converge and the controller records it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.localapi.client import AgentClient
from controller.identity.broker_config import MosquittoConfig
from firmware_sim.modelgen import load_digits
from firmware_sim.mosquitto import MosquittoProcess, free_port
from firmware_sim.procs import AgentProc, ControllerProc, start_agent, start_controller
from shared.topics import Kind, device_topic
from tests.diskfill import fill_completely
from tests.mqttwatch import Watcher
from tests.netcut import CuttableLink

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FAST = "[health]\nlive_window = 0.5\n[download]\nattempts = 1\nretry_base_s = 0.5\nretry_max_s = 2\n"


def production_version(status: dict) -> int | None:
    prod = status.get("models", {}).get("production")
    return prod["version"] if status.get("state") == "online" and prod else None


@pytest.fixture
def controller(mosquitto, tmp_path) -> Iterator[ControllerProc]:
    proc = start_controller(tmp_path, broker_host=mosquitto.host, broker_port=mosquitto.port)
    yield proc
    proc.stop()


@pytest.fixture
def fleet() -> Iterator[list[AgentProc]]:
    procs: list[AgentProc] = []
    yield procs
    for p in procs:
        p.stop()


def release(controller: ControllerProc, make_bundle, *versions: int) -> str:
    """Register and approve bundles; return the director key devices pin."""
    with controller.client() as api:
        for v in versions:
            r = api.post("/v1/models", content=make_bundle(v))
            assert r.status_code == 201, r.text
            controller.approve("digits", v)
        return str(api.get("/v1/trust").json()["director_public_key"])


def add_device(controller: ControllerProc, device: str) -> None:
    with controller.client() as api:
        assert api.post("/v1/devices", json={"id": device, "arch": "x86_64"}).status_code == 201


def assign(controller: ControllerProc, device: str, version: int) -> None:
    with controller.client() as api:
        r = api.put(f"/v1/devices/{device}/desired", json={"model": "digits", "version": version})
        assert r.status_code == 200, r.text


def root_of(controller: ControllerProc) -> bytes:
    r = httpx.get(f"{controller.url}/v1/tuf/metadata/1.root.json", timeout=10)
    r.raise_for_status()
    return r.content


def test_an_install_that_failed_while_the_controller_was_away_converges_by_itself(
    mosquitto, controller, fleet, tmp_path, make_bundle
):
    device = "conv-away"
    key = release(controller, make_bundle, 1)
    add_device(controller, device)
    port = int(controller.url.rsplit(":", 1)[1])
    link = CuttableLink("127.0.0.1", port)  # the device's path to the controller
    watch = Watcher(mosquitto.host, mosquitto.port, device_topic(device, Kind.STATUS), device_topic(device, Kind.EVENTS))
    try:
        agent = start_agent(
            tmp_path,
            device,
            broker_host=mosquitto.host,
            broker_port=mosquitto.port,
            director_keys=[key],
            image_repo=(f"http://127.0.0.1:{link.port}/v1/tuf/metadata/", root_of(controller)),
            extra=FAST,
        )
        fleet.append(agent)
        watch.wait_for(lambda m: m.get("state") == "online", "/status")
        link.cut()
        assign(controller, device, 1)
        retry = watch.wait_for(lambda m: m.get("kind") == "ota.retry_scheduled", "/events")
        assert "metadata" in retry["message"] and retry["detail"]["retry_at"] is not None
        st = watch.wait_for(lambda m: m.get("ota", {}).get("converged") is False and bool(m["ota"]["pending"]), "/status")
        assert "image repository" in st["ota"]["pending"][0]["reason"]
        time.sleep(3)  # several attempts while the controller is away
        assert len([m for m in watch.json_messages("/events") if m.get("kind") == "ota.retry_scheduled"]) >= 2
        link.restore()  # nobody re-assigns, nobody restarts the agent
        done = watch.wait_for(lambda m: production_version(m) == 1 and m["ota"]["converged"], "/status", timeout=30)
        assert done["ota"]["pending"] == [] and done["ota"]["state"] == "COMMITTED"
    finally:
        watch.close()
        link.close()


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 4 MiB tmpfs for the agent's data directory (the test runs as root)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, f"cannot mount a tmpfs: {r.stderr.strip()}"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_keeps_the_verified_model_serving_and_the_update_lands_when_space_returns(
    mosquitto, controller, fleet, small_disk, make_bundle
):
    device = "conv-disk"
    key = release(controller, make_bundle, 1, 2)
    add_device(controller, device)
    watch = Watcher(mosquitto.host, mosquitto.port, device_topic(device, Kind.STATUS), device_topic(device, Kind.EVENTS))
    try:
        agent = start_agent(
            small_disk,
            device,
            broker_host=mosquitto.host,
            broker_port=mosquitto.port,
            director_keys=[key],
            controller_url=controller.url,
            extra=FAST,
        )
        fleet.append(agent)
        watch.wait_for(lambda m: m.get("state") == "online", "/status")
        assign(controller, device, 1)
        watch.wait_for(lambda m: production_version(m) == 1, "/status", timeout=30)
        st = os.statvfs(small_disk)
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * max(st.f_bavail * st.f_frsize - 16 * 1024, 0))  # the next bundle does not fit
        assign(controller, device, 2)
        retry = watch.wait_for(lambda m: m.get("kind") == "ota.retry_scheduled", "/events", timeout=30)
        assert "DiskFull" in retry["message"] or "No space" in retry["message"], retry
        pending = watch.wait_for(lambda m: bool(m.get("ota", {}).get("pending")), "/status")["ota"]["pending"][0]
        assert pending["version"] == 2 and pending["retry_at"] is not None
        x, _ = load_digits()
        with AgentClient(agent.socket_path) as client:  # the verified model keeps serving
            out = client.predict(x[:1].tolist())
            assert out["ok"] and out["version"] == 1, out
        assert agent.alive()
        filler.unlink()  # the fault clears; nobody touches the device
        watch.wait_for(lambda m: production_version(m) == 2, "/status", timeout=30)
        with AgentClient(agent.socket_path) as client:
            assert client.predict(x[:1].tolist())["version"] == 2
    finally:
        watch.close()


def test_a_disk_that_fills_mid_update_puts_the_committed_model_back_and_the_update_lands_later(
    mosquitto, controller, fleet, small_disk, make_bundle
):
    device = "conv-enospc"
    key = release(controller, make_bundle, 1, 2)
    add_device(controller, device)
    slow_health = FAST.replace("live_window = 0.5", "live_window = 4\nlive_inferences = 1000000")
    watch = Watcher(mosquitto.host, mosquitto.port, device_topic(device, Kind.STATUS), device_topic(device, Kind.EVENTS))
    try:
        agent = start_agent(
            small_disk,
            device,
            broker_host=mosquitto.host,
            broker_port=mosquitto.port,
            director_keys=[key],
            controller_url=controller.url,
            extra=slow_health,
        )
        fleet.append(agent)
        watch.wait_for(lambda m: m.get("state") == "online", "/status")
        assign(controller, device, 1)
        watch.wait_for(lambda m: production_version(m) == 1 and m["ota"]["state"] == "COMMITTED", "/status", timeout=30)
        assign(controller, device, 2)
        watch.wait_for(
            lambda m: m["ota"]["state"] == "HEALTH_CHECK" and m["ota"]["target"]["version"] == 2, "/status", timeout=30
        )
        filler = fill_completely(small_disk)  # the commit record cannot be written
        back = watch.wait_for(
            lambda m: production_version(m) == 1 and "could not be written" in m["ota"]["reason"] and m["ota"]["pending"],
            "/status",
            timeout=30,
        )
        assert back["ota"]["converged"] is False and back["ota"]["pending"][0]["version"] == 2, back["ota"]
        x, _ = load_digits()
        with AgentClient(agent.socket_path) as client:  # the committed model serves
            out = client.predict(x[:1].tolist())
            assert out["ok"] and out["version"] == 1, out
        time.sleep(3)  # retries fail while the disk stays full; nothing crashes
        assert agent.alive(), agent.log()[-3000:]
        filler.unlink()  # the fault clears; nobody touches the device
        watch.wait_for(lambda m: production_version(m) == 2 and m["ota"]["converged"], "/status", timeout=60)
        with AgentClient(agent.socket_path) as client:
            assert client.predict(x[:1].tolist())["version"] == 2
    finally:
        watch.close()


def test_every_agent_converges_when_the_broker_restarts_mid_rollout(fleet, tmp_path, make_bundle):
    broker = MosquittoProcess(tmp_path / "broker", MosquittoConfig(port=free_port(), data_dir=tmp_path / "broker-data"))
    (tmp_path / "broker-data").mkdir()
    broker.start()
    controller = start_controller(tmp_path, broker_host=broker.host, broker_port=broker.port)
    devices = [f"conv-roll-{i}" for i in range(3)]
    try:
        key = release(controller, make_bundle, 1, 2)
        for d in devices:
            add_device(controller, d)
            fleet.append(
                start_agent(
                    tmp_path,
                    d,
                    broker_host=broker.host,
                    broker_port=broker.port,
                    director_keys=[key],
                    controller_url=controller.url,
                    extra=FAST,
                )
            )
        with controller.client() as api:
            assert api.post("/v1/cohorts", json={"name": "roll", "members": devices}).status_code == 201

            def online() -> bool:
                return all(api.get(f"/v1/devices/{d}").json()["online"] for d in devices)

            wait(online, 30, "agents online")
            r = api.put("/v1/cohorts/roll/desired", json={"model": "digits", "version": 1, "reason": "v1 everywhere"})
            assert r.status_code == 200, r.text
            wait(lambda: all(actual(api, d) == 1 for d in devices), 60, "v1 on every device")
            r = api.put("/v1/cohorts/roll/desired", json={"model": "digits", "version": 2, "reason": "roll out v2"})
            assert r.status_code == 200, r.text
            broker.stop()  # mid-rollout: agents are fetching or health-checking, statuses are in flight
            time.sleep(2)
            broker.start()
            wait(lambda: all(actual(api, d) == 2 for d in devices), 90, "v2 on every device after the broker restart")
    finally:
        controller.stop()
        for p in fleet:
            p.stop()
        fleet.clear()
        broker.stop()


def actual(api: httpx.Client, device: str) -> int | None:
    v = api.get(f"/v1/devices/{device}").json().get("actual", {}).get("production", {})
    return v.get("version") if v else None


def wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.2)
