"""Walking skeleton: controller, agent and Mosquitto as separate real processes.

An operator registers an int8 ONNX bundle over HTTP; the controller signs and
publishes a desired state; the agent downloads, verifies, loads and serves it
over its Unix socket, and reports what it runs in a retained status.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from agent.localapi.client import AgentClient
from firmware_sim.modelgen import load_digits
from firmware_sim.procs import start_agent, start_controller
from shared.topics import Kind, device_topic
from tests.mqttwatch import Watcher

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FAST_HEALTH = "[health]\nlive_window = 0.5\n"


def production_version(status: dict) -> int | None:
    prod = status.get("models", {}).get("production")
    return prod["version"] if status.get("state") == "online" and prod else None


@pytest.fixture
def controller(mosquitto, tmp_path):
    proc = start_controller(tmp_path, broker_host=mosquitto.host, broker_port=mosquitto.port)
    yield proc
    proc.stop()


@pytest.fixture
def fleet(tmp_path):
    procs = []
    yield procs
    for p in procs:
        p.stop()


def test_model_delivered_verified_and_served_end_to_end(mosquitto, controller, fleet, tmp_path, make_bundle):
    device = "e2e-dev-1"
    with controller.client() as api:
        r = api.post("/v1/models", content=make_bundle(1))
        assert r.status_code == 201, r.text
        assert r.json()["version"] == 1
        controller.approve("digits", 1)  # production needs an approver other than the uploader
        assert api.post("/v1/devices", json={"id": device, "arch": "x86_64"}).status_code == 201
        key = api.get("/v1/trust").json()["director_public_key"]

        watch = Watcher(mosquitto.host, mosquitto.port, device_topic(device, Kind.STATUS), device_topic(device, Kind.EVENTS))
        agent = start_agent(
            tmp_path,
            device,
            broker_host=mosquitto.host,
            broker_port=mosquitto.port,
            director_keys=[key],
            controller_url=controller.url,
            extra=FAST_HEALTH,
        )
        fleet.append(agent)
        watch.wait_for(lambda m: m.get("state") == "online", "/status")

        r = api.put(f"/v1/devices/{device}/desired", json={"model": "digits", "version": 1})
        assert r.status_code == 200, r.text
        status = watch.wait_for(lambda m: production_version(m) == 1, "/status")
        assert status["models"]["production"]["sha256"] == r.json()["desired"]["production"]["sha256"]
        retained = Watcher(mosquitto.host, mosquitto.port, device_topic(device, Kind.STATUS))
        assert production_version(retained.wait_for(lambda m: True, "/status", timeout=10)) == 1
        assert all(retain for _, _, retain in retained.messages[:1])
        retained.close()

        x, y = load_digits()
        with AgentClient(agent.socket_path) as client:
            correct = 0
            for i in range(20):
                out = client.predict(x[i : i + 1].tolist())
                assert out["ok"], out
                assert (out["model"], out["version"]) == ("digits", 1)
                correct += int(np.argmax(out["outputs"]["probs"][0]) == y[i])
            assert correct >= 16
            assert client.info()["models"]["production"]["version"] == 1

        deadline = time.monotonic() + 10
        while api.get(f"/v1/devices/{device}").json()["actual"].get("production", {}).get("version") != 1:
            assert time.monotonic() < deadline, "controller never recorded the actual version"
            time.sleep(0.2)
        watch.close()


def test_bad_input_is_rejected_and_the_old_model_keeps_serving(mosquitto, controller, fleet, tmp_path, make_bundle):
    device = "e2e-dev-2"
    with controller.client() as api:
        for v in (1, 2):
            assert api.post("/v1/models", content=make_bundle(v)).status_code == 201
            controller.approve("digits", v)
        api.post("/v1/devices", json={"id": device})
        key = api.get("/v1/trust").json()["director_public_key"]
        watch = Watcher(mosquitto.host, mosquitto.port, device_topic(device, Kind.STATUS), device_topic(device, Kind.EVENTS))
        agent = start_agent(
            tmp_path,
            device,
            broker_host=mosquitto.host,
            broker_port=mosquitto.port,
            director_keys=[key],
            controller_url=controller.url,
            extra=FAST_HEALTH,
        )
        fleet.append(agent)
        api.put(f"/v1/devices/{device}/desired", json={"model": "digits", "version": 1})
        watch.wait_for(lambda m: production_version(m) == 1, "/status")

        # Garbage and a forged desired state on the device's own topic.
        for junk in (b"", b"\xff\x00", b"{]", b'{"signed": {"device_id": "e2e-dev-2"}, "signatures": []}'):
            watch.publish(device_topic(device, Kind.DESIRED), junk)
        watch.wait_for(lambda m: m.get("kind") == "desired.rejected" and "no signatures" in m["message"], "/events")

        # A tampered bundle on the server: the signed hash no longer matches.
        v2 = api.get("/v1/models").json()[1]
        original = api.get(f"/v1/bundles/{v2['sha256']}").content  # fills this replica's local bundle cache
        blob = controller.data_dir / "cache" / "bundles" / f"{v2['sha256']}.tar"
        assert blob.read_bytes() == original
        blob.write_bytes(original[:-10] + b"x" * 10)
        api.put(f"/v1/devices/{device}/desired", json={"model": "digits", "version": 2})
        ev = watch.wait_for(lambda m: m.get("kind") == "ota.rejected", "/events")
        assert "does not match the signed" in ev["message"]
        assert agent.alive()
        with AgentClient(agent.socket_path) as client:
            assert client.predict([[0.0] * 64])["version"] == 1

        # Restored, the same assignment (re-signed with a new counter) goes through.
        blob.write_bytes(original)
        api.put(f"/v1/devices/{device}/desired", json={"model": "digits", "version": 2})
        watch.wait_for(lambda m: production_version(m) == 2, "/status")
        with AgentClient(agent.socket_path) as client:
            assert client.predict([[0.0] * 64])["version"] == 2
        watch.close()
