"""A secured fleet end to end: real Mosquitto with the generated mTLS config, the real
controller and agent as processes, a device enrolled with a one-time token.

Shows: enrolment through the agent's CLI; the enrolled certificate cannot subscribe to
a shared subscription (no share of other devices' telemetry); the agent online over mTLS; a desired
state not signed by the director is rejected by the agent; a device that puts
another device's id in its payload is rejected by the controller; revocation
through the API disconnects the agent at once and it cannot reconnect.
"""

from __future__ import annotations

import getpass
import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.identity import IdentityPaths, enrol
from controller.fleet.director import Director
from controller.identity import pki
from controller.identity.broker_auth import ClientIdentity, controller_identities, provision, render_dynsec, write_identity
from controller.identity.broker_config import BrokerSecurity, MosquittoConfig
from firmware_sim.mosquitto import MosquittoProcess, free_port
from firmware_sim.procs import REPO, ControllerProc, start_agent, start_controller, write_agent_config
from shared.messages import SCHEMA_VERSION, now
from shared.topics import Kind, device_topic
from tests.tlsmqtt import TlsClient, device_identity

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass
class Stack:
    root: Path
    ca: pki.DeviceCA
    sec: BrokerSecurity
    broker: MosquittoProcess
    controller: ControllerProc
    ctl_identity: ClientIdentity
    watch_identity: ClientIdentity  # a second controller identity: the broker makes the CN the client id

    def watcher(self) -> TlsClient:
        w = TlsClient(
            self.broker.host, self.broker.port, self.watch_identity.ca, self.watch_identity.cert, self.watch_identity.key
        )
        assert w.connect(), w.events
        w.subscribe("edgefleet/v1/dev/+/status")
        w.subscribe("edgefleet/v1/dev/+/events")
        return w


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    ca = pki.DeviceCA.open(tmp_path / "controller" / "ca", create=True)  # the controller's own CA
    names = controller_identities(2)
    sec = provision(ca, tmp_path / "broker", controllers=names)
    ident = write_identity(ca, names[0], tmp_path / "controller-identity")
    watch_ident = write_identity(ca, names[1], tmp_path / "watcher-identity")
    pid = tmp_path / "run" / "mosquitto.pid"
    broker = MosquittoProcess(
        tmp_path / "run", MosquittoConfig(port=free_port(), security=sec, pid_file=pid, run_as=getpass.getuser())
    )
    broker.start()
    env = {
        "EDGEFLEET_BROKER_TLS": "true",
        "EDGEFLEET_BROKER_CA_FILE": str(sec.cafile),
        "EDGEFLEET_BROKER_CERT_FILE": str(ident.cert),
        "EDGEFLEET_BROKER_KEY_FILE": str(ident.key),
        "EDGEFLEET_BROKER_CRL_FILE": str(sec.crlfile),
        "EDGEFLEET_BROKER_PID_FILE": str(pid),
    }
    try:
        controller = start_controller(tmp_path, broker_host=broker.host, broker_port=broker.port, env=env)
    except Exception:
        broker.stop()
        raise
    yield Stack(tmp_path, ca, sec, broker, controller, ident, watch_ident)
    controller.stop()
    broker.stop()


def event(device_id: str, seq: int, kind: str) -> bytes:
    msg = {"schema": SCHEMA_VERSION, "device_id": device_id, "seq": seq, "sent_at": now()}
    return json.dumps({**msg, "kind": kind, "severity": "info", "message": "m", "detail": {}}).encode()


def test_enrolled_agent_over_mtls_and_revocation_takes_it_out(stack: Stack, tmp_path: Path) -> None:
    dev, other = "secure-1", "secure-2"
    api = stack.controller.client()
    assert api.post("/v1/devices", json={"id": dev, "arch": "x86_64"}).status_code == 201
    assert api.post("/v1/devices", json={"id": other}).status_code == 201
    director_key = api.get("/v1/trust").json()["director_public_key"]
    token = api.post("/v1/identity/tokens", json={"device_id": dev}).json()["token"]

    # Enrol through the agent's own CLI: key made on the device, mode 0600.
    idir = tmp_path / dev / "identity"
    extra = f'[identity]\ndirectory = "{idir}"\ncontroller_url = "{stack.controller.url}"'
    cfg = write_agent_config(
        tmp_path, dev, broker_host=stack.broker.host, broker_port=stack.broker.port, director_keys=[director_key], extra=extra
    )
    run_kw = {"cwd": REPO, "capture_output": True, "text": True, "timeout": 60, "env": {"PYTHONPATH": str(REPO)}}
    out = subprocess.run([sys.executable, "-m", "agent", "--config", str(cfg), "--enrol", token], **run_kw)  # type: ignore[call-overload]
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE((idir / "device.key").stat().st_mode) == 0o600

    # Enrolment made it a dynsec client whose role refuses every shared subscription: with its own
    # certificate it cannot join the controllers' group and take (and drop) other devices' telemetry.
    spy = TlsClient(stack.broker.host, stack.broker.port, idir / "ca.pem", idir / "device.pem", idir / "device.key")
    assert spy.connect(), spy.events
    for group in ("controllers", "edgefleet"):
        assert spy.subscribe(f"$share/{group}/edgefleet/v1/dev/+/telemetry") == [135]
    spy.close()

    watch = stack.watcher()
    agent = start_agent(tmp_path, dev, config_path=cfg)
    try:
        status = device_topic(dev, Kind.STATUS)
        watch.wait(lambda: any(json.loads(p).get("state") == "online" for p in watch.received(status)), 30, "agent online")

        # A desired state signed by anyone but the director is rejected by the agent,
        # even when it arrives on the right topic through the secured broker.
        forged = Director(Ed25519PrivateKey.generate()).sign_desired(dev, 10**6, {}, 3600)
        assert watch.publish(device_topic(dev, Kind.DESIRED), json.dumps(forged).encode()) == 0
        watch.wait(
            lambda: any(
                json.loads(p).get("kind") == "desired.rejected" and "unknown key" in json.loads(p)["message"]
                for p in watch.received(device_topic(dev, Kind.EVENTS))
            ),
            30,
            "desired.rejected event",
        )
        watch.publish(device_topic(dev, Kind.DESIRED), b"", retain=True)

        # Another enrolled device: its own topics work; speaking for `dev` does not.
        ident, _ = device_identity(stack.ca, other, tmp_path / "other", trust=stack.sec.cafile)
        imp = TlsClient(stack.broker.host, stack.broker.port, ident.ca, ident.cert, ident.key)
        assert imp.connect(), imp.events
        assert imp.publish(device_topic(dev, Kind.EVENTS), event(dev, 1, "forged.direct")) == 135  # broker ACL
        assert imp.publish(device_topic(other, Kind.EVENTS), event(dev, 2, "forged.payload")) == 0  # controller check
        assert imp.publish(device_topic(other, Kind.EVENTS), event(other, 3, "genuine")) == 0
        deadline = time.monotonic() + 15
        while [e["kind"] for e in api.get(f"/v1/devices/{other}/events").json()] != ["genuine"]:
            assert time.monotonic() < deadline, api.get(f"/v1/devices/{other}/events").json()
            time.sleep(0.2)
        kinds = {e["kind"] for e in api.get(f"/v1/devices/{dev}/events").json()}
        assert not kinds & {"forged.direct", "forged.payload"}
        imp.close()
        assert api.get(f"/v1/devices/{dev}").json()["online"] is True

        # Revoke: the broker drops the agent now and refuses it after (CRL re-read on SIGHUP).
        online_before = len(watch.received(device_topic(dev, Kind.STATUS)))
        r = api.post(f"/v1/identity/devices/{dev}/revoke")
        assert r.status_code == 200, r.text
        assert r.json()["broker_reloaded"] is True and r.json()["kicked"] is True
        t0 = time.monotonic()
        while f"{dev} been disconnected by administrative action" not in stack.broker.log_path.read_text():  # client id = CN
            assert time.monotonic() - t0 < 5, "revoked agent was not disconnected"
            time.sleep(0.05)
        while "certificate revoked" not in agent.log():  # its next attempt: the TLS handshake fails
            assert time.monotonic() - t0 < 15, agent.log()[-2000:]
            time.sleep(0.2)
        time.sleep(3)  # more retries (every 1-5 s), none gets in
        log = stack.broker.log_path.read_text()
        after = log[log.index("disconnected by administrative action") :]
        assert "certificate verify failed" in after and f"as {dev} " not in after, after
        assert watch.received(device_topic(dev, Kind.STATUS))[online_before:] == []
        assert agent.alive()  # it keeps serving locally; it just cannot reach the fleet
        assert api.get(f"/v1/devices/{dev}").json()["online"] is False

        # The operator re-provisions it: a new token, a new certificate, and it is back in.
        agent.stop()
        token = api.post("/v1/identity/tokens", json={"device_id": dev}).json()["token"]
        out = subprocess.run(
            [sys.executable, "-m", "agent", "--config", str(cfg), "--enrol", token],
            **run_kw,  # type: ignore[call-overload]
        )
        assert out.returncode == 0, out.stderr
        n = len(watch.received(status))
        agent = start_agent(tmp_path, dev, config_path=cfg)
        back = lambda: any(json.loads(p).get("state") == "online" for p in watch.received(status)[n:])  # noqa: E731
        watch.wait(back, 30, "re-enrolled agent online")
    finally:
        agent.stop()
        watch.close()
        api.close()


def test_the_leader_registers_devices_again_when_the_broker_lost_its_dynamic_security_state(stack: Stack, tmp_path: Path) -> None:
    """A broker redeployed with a fresh dynsec file knows no device: the controller's leader registers
    every enrolled device again once it is reconnected, so their shared subscriptions are refused again."""
    dev = "secure-3"
    api = stack.controller.client()
    assert api.post("/v1/devices", json={"id": dev}).status_code == 201
    token = api.post("/v1/identity/tokens", json={"device_id": dev}).json()["token"]
    paths = IdentityPaths(tmp_path / dev)
    enrol(stack.controller.url, token, dev, paths)
    share = "$share/controllers/edgefleet/v1/dev/+/telemetry"

    def shared_subscription_refused() -> bool:
        spy = TlsClient(stack.broker.host, stack.broker.port, paths.ca, paths.cert, paths.key)
        try:
            assert spy.connect(), spy.events
            return spy.subscribe(share) == [135]
        finally:
            spy.close()

    assert shared_subscription_refused()
    stack.broker.stop()
    assert stack.sec.dynsec_config is not None
    stack.sec.dynsec_config.write_text(render_dynsec(controller_identities(2)))  # what a fresh broker setup writes
    stack.broker.start()
    deadline = time.monotonic() + 30
    while not shared_subscription_refused():
        assert time.monotonic() < deadline, "the enrolled device was not registered with the broker again"
        time.sleep(0.5)
    api.close()
