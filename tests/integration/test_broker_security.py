"""The generated secure Mosquitto config, against a real Mosquitto and real certificates.

Each test names the attack it shows fails (docs/threat-model.md points here).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.identity import pki
from controller.identity.broker_auth import (
    DYNSEC_TOPIC,
    BrokerControl,
    controller_identities,
    kick_command,
    new_share_group,
    provision,
    register_devices_command,
    write_identity,
)
from controller.identity.broker_config import MosquittoConfig
from firmware_sim.mosquitto import MosquittoProcess, free_port
from shared.csr import make_csr
from shared.messages import Event
from shared.topics import Kind, device_topic, fleet_filter
from tests.tlsmqtt import TlsClient, device_identity

pytestmark = [pytest.mark.integration]

NOT_AUTHORIZED = 135  # MQTT 5 reason code in PUBACK / SUBACK


class SecureBroker:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = pki.DeviceCA.generate()
        self.sec = provision(self.ca, root / "broker", controllers=controller_identities(2))
        self.proc = MosquittoProcess(
            root / "run",
            MosquittoConfig(
                port=free_port(), security=self.sec, pid_file=root / "run" / "mosquitto.pid", run_as=getpass.getuser()
            ),
        )
        self.controller = write_identity(self.ca, pki.CONTROLLER_IDENTITY, root / "controller")
        self.replica2 = write_identity(self.ca, controller_identities(2)[1], root / "controller")
        self.control = BrokerControl(self.sec.crlfile, root / "run" / "mosquitto.pid")
        self.revoked: list[tuple[int, dt.datetime]] = []

    def client(self, device_id: str | None = None, client_id: str | None = None, **kw: object) -> TlsClient:
        if device_id is None:
            ident = self.controller
        else:
            ident, _ = device_identity(self.ca, device_id, self.root / "devices", trust=self.sec.cafile, **kw)  # type: ignore[arg-type]
        return TlsClient(self.proc.host, self.proc.port, ident.ca, ident.cert, ident.key, client_id=client_id)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    b = SecureBroker(tmp_path_factory.mktemp("securebroker"))
    b.proc.start()
    yield b
    b.proc.stop()


@pytest.fixture
def clients() -> Iterator[list[TlsClient]]:
    made: list[TlsClient] = []
    yield made
    for c in made:
        c.close()


def connected(broker: SecureBroker, clients: list[TlsClient], device_id: str | None, client_id: str | None = None) -> TlsClient:
    c = broker.client(device_id, client_id)
    clients.append(c)
    assert c.connect(), c.events
    return c


def test_generated_config_is_tls_only_with_certificate_identity(broker: SecureBroker) -> None:
    text = broker.proc.conf_path.read_text()
    for line in (
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "allow_anonymous false",
        "crlfile ",
    ):
        assert line in text
    assert "pattern write edgefleet/v1/dev/%u/telemetry" in broker.sec.acl_file.read_text()
    assert broker.sec.keyfile.stat().st_mode & 0o777 == 0o600


def test_device_publishes_under_its_own_id_and_the_controller_receives_it(broker, clients) -> None:
    ctl = connected(broker, clients, None)
    assert ctl.subscribe("$share/controllers/edgefleet/v1/dev/+/telemetry") == [1]
    a = connected(broker, clients, "sec-a1")
    assert a.publish(device_topic("sec-a1", Kind.TELEMETRY), b"own") == 0
    ctl.wait(lambda: ctl.received(device_topic("sec-a1", Kind.TELEMETRY)) == [b"own"], 5, "own telemetry not delivered")


def test_device_cannot_publish_telemetry_as_another_device(broker, clients) -> None:
    ctl = connected(broker, clients, None)
    ctl.subscribe("edgefleet/v1/dev/+/telemetry")
    ctl.subscribe("edgefleet/v1/dev/+/status")
    a = connected(broker, clients, "sec-a2")
    victim = "sec-b2"
    for kind in (Kind.TELEMETRY, Kind.STATUS, Kind.EVENTS):
        assert a.publish(device_topic(victim, kind), b"forged") == NOT_AUTHORIZED
    # Nor the controller's topic: desired state of itself or another device.
    assert a.publish(device_topic("sec-a2", Kind.DESIRED), b"forged") == NOT_AUTHORIZED
    assert a.publish(device_topic(victim, Kind.DESIRED), b"forged") == NOT_AUTHORIZED
    assert a.publish(device_topic("sec-a2", Kind.TELEMETRY), b"marker") == 0
    ctl.wait(lambda: bool(ctl.received(device_topic("sec-a2", Kind.TELEMETRY))), 5, "marker not delivered")
    assert ctl.received(device_topic(victim, Kind.TELEMETRY)) == []
    assert ctl.received(device_topic(victim, Kind.STATUS)) == []


def test_device_cannot_read_another_devices_desired_state(broker, clients) -> None:
    ctl = connected(broker, clients, None)
    a = connected(broker, clients, "sec-a3")
    b = connected(broker, clients, "sec-b3")
    ctl.publish(device_topic("sec-b3", Kind.DESIRED), b"retained-for-b", retain=True)
    codes = a.subscribe(device_topic("sec-b3", Kind.DESIRED))
    wild = a.subscribe("edgefleet/v1/dev/+/desired")
    assert b.subscribe(device_topic("sec-b3", Kind.DESIRED)) == [1]
    assert a.subscribe(device_topic("sec-a3", Kind.DESIRED)) == [1]
    ctl.publish(device_topic("sec-b3", Kind.DESIRED), b"live-for-b")
    ctl.publish(device_topic("sec-a3", Kind.DESIRED), b"for-a")
    b.wait(lambda: b.received(device_topic("sec-b3", Kind.DESIRED)) == [b"retained-for-b", b"live-for-b"], 5, "b's own desired")
    a.wait(lambda: b"for-a" in a.received(device_topic("sec-a3", Kind.DESIRED)), 5, "a's own desired")
    # Mosquitto 2.0 may grant the SUBACK but checks read access on every delivery: nothing of b's arrives.
    # Deliveries to a keep the controller's publish order, so anything of b's would have come before "for-a".
    assert [m for t, m in a.messages if t != device_topic("sec-a3", Kind.DESIRED)] == [], (codes, wild)
    ctl.publish(device_topic("sec-b3", Kind.DESIRED), b"", retain=True)


def test_connection_without_a_client_certificate_is_refused(broker, clients) -> None:
    c = TlsClient(broker.proc.host, broker.proc.port, broker.sec.cafile)
    clients.append(c)
    assert not c.connect(timeout=3), c.events


def test_plain_mqtt_without_tls_is_refused(broker) -> None:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    ok: list[object] = []
    ended = threading.Event()
    c.on_connect = lambda *a: (ok.append(a[3]), ended.set())
    c.on_disconnect = lambda *a: ended.set()
    try:
        c.connect(broker.proc.host, broker.proc.port, keepalive=5)
        c.loop_start()
        assert ended.wait(10), "the broker neither answered nor closed the plain connection"
    except OSError:
        pass
    finally:
        c.loop_stop()
    assert not any(not getattr(r, "is_failure", True) for r in ok)


def test_certificate_from_another_ca_is_refused(broker, clients, tmp_path) -> None:
    rogue = pki.DeviceCA.generate(name="edgefleet device CA")  # same name, different key
    ident, _ = device_identity(rogue, "sec-a4", tmp_path, trust=broker.sec.cafile)
    c = TlsClient(broker.proc.host, broker.proc.port, ident.ca, ident.cert, ident.key)
    clients.append(c)
    assert not c.connect(timeout=3), c.events
    # ...and a service identity forged by that CA does not make anyone the controller.
    forged = write_identity(rogue, pki.CONTROLLER_IDENTITY, tmp_path / "forged")
    f = TlsClient(broker.proc.host, broker.proc.port, broker.sec.cafile, forged.cert, forged.key)
    clients.append(f)
    assert not f.connect(timeout=3), f.events


def test_expired_certificate_is_refused(broker, clients, tmp_path) -> None:
    past = pki.utcnow() - dt.timedelta(days=3)
    ident, issued = device_identity(
        broker.ca, "sec-a5", tmp_path, validity=dt.timedelta(days=1), now=past, trust=broker.sec.cafile
    )
    assert issued.not_after < pki.utcnow()
    c = TlsClient(broker.proc.host, broker.proc.port, ident.ca, ident.cert, ident.key)
    clients.append(c)
    assert not c.connect(timeout=3), c.events


def test_revoked_device_is_disconnected_at_once_and_cannot_reconnect(broker, clients, tmp_path) -> None:
    ident, issued = device_identity(broker.ca, "sec-a6", tmp_path, trust=broker.sec.cafile)
    a = TlsClient(broker.proc.host, broker.proc.port, ident.ca, ident.cert, ident.key)
    clients.append(a)
    assert a.connect()
    ctl = connected(broker, clients, None)
    ctl.subscribe(f"{DYNSEC_TOPIC}/response")

    # Revoke: new CRL + SIGHUP first (no way back in), then kick the live session.
    broker.revoked.append((issued.serial, pki.utcnow()))
    assert broker.control.install_crl(broker.ca.crl(broker.revoked))

    def crl_in_force() -> bool:  # the broker reloads on SIGHUP in its main loop: wait until it refuses the certificate
        probe = TlsClient(broker.proc.host, broker.proc.port, ident.ca, ident.cert, ident.key)
        clients.append(probe)
        return not probe.connect(timeout=3)

    deadline = time.monotonic() + 15
    while not crl_in_force():
        assert time.monotonic() < deadline, "the broker still accepts the revoked certificate"
    ctl.publish(DYNSEC_TOPIC, kick_command("sec-a6"))
    assert a.disconnected.wait(5), a.events
    ctl.wait(lambda: bool(ctl.received(f"{DYNSEC_TOPIC}/response")), 5, "no dynsec response")
    responses = json.loads(ctl.received(f"{DYNSEC_TOPIC}/response")[-1])["responses"]
    assert all("error" not in r for r in responses), responses

    # paho retries on its own; every attempt fails the TLS handshake.
    time.sleep(2.5)
    assert not a.connected.is_set(), a.events
    again = TlsClient(broker.proc.host, broker.proc.port, ident.ca, ident.cert, ident.key)
    clients.append(again)
    assert not again.connect(timeout=3), again.events
    # Other devices are unaffected.
    connected(broker, clients, "sec-b6")


def test_brokersetup_writes_a_setup_mosquitto_runs_and_the_controller_can_use(tmp_path, clients) -> None:
    import subprocess

    from controller.identity.broker_setup import main

    port = free_port()
    out = tmp_path / "mosq"
    assert (
        main(
            [
                "--data-dir",
                str(tmp_path / "data"),
                "--out",
                str(out),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--run-as",
                getpass.getuser(),
            ]
        )
        == 0
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(out / "mosquitto.conf")], stderr=subprocess.DEVNULL)
    try:
        ident = tmp_path / "data" / "identity"
        c = TlsClient("127.0.0.1", port, out / "ca.pem", ident / "_controller.pem", ident / "_controller.key")
        clients.append(c)
        deadline = time.monotonic() + 10
        while not c.connect(timeout=2):
            assert time.monotonic() < deadline and proc.poll() is None, c.events
            c.close()
            c = TlsClient("127.0.0.1", port, out / "ca.pem", ident / "_controller.pem", ident / "_controller.key")
            clients.append(c)
            time.sleep(0.2)
        assert c.subscribe("edgefleet/v1/dev/+/status") == [1]
        # A device with a certificate from this CA (never registered with dynsec) cannot join a shared subscription.
        ca = pki.DeviceCA.open(tmp_path / "data" / "ca", create=False)
        dev, _ = device_identity(ca, "setup-dev", tmp_path / "dev", trust=out / "ca.pem")
        d = TlsClient("127.0.0.1", port, dev.ca, dev.cert, dev.key)
        clients.append(d)
        assert d.connect(), d.events
        assert d.subscribe("$share/controllers/edgefleet/v1/dev/+/telemetry") == [NOT_AUTHORIZED]
        assert c.subscribe("$share/controllers/edgefleet/v1/dev/+/telemetry") == [1]
    finally:
        proc.terminate()
        proc.wait(10)


def test_device_refuses_a_broker_not_certified_by_the_device_ca(broker, tmp_path, clients) -> None:
    """A network attacker posing as the broker: the agent's TLS context trusts only the device CA."""
    from agent.identity import tls_context

    rogue = pki.DeviceCA.generate(name="edgefleet device CA")
    sec = provision(rogue, tmp_path / "rogue")
    fake = MosquittoProcess(tmp_path / "rogue-run", MosquittoConfig(port=free_port(), security=sec, run_as=getpass.getuser()))
    fake.start()
    try:
        ident, _ = device_identity(broker.ca, "sec-a7", tmp_path / "dev", trust=broker.sec.cafile)
        ident.key.chmod(0o600)
        ctx = tls_context(ident.ca, ident.cert, ident.key)  # what agent/link.py uses
        with socket.create_connection((fake.host, fake.port), timeout=5) as raw, pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname=fake.host)
    finally:
        fake.stop()


def test_agent_link_uses_a_renewed_certificate_after_reload(broker, clients, tmp_path) -> None:
    """agent/link.py over mTLS; after renewal the old certificate can be revoked and the link still gets back in."""
    from agent.config import parse_config
    from agent.link import MqttLink

    ident, old = device_identity(broker.ca, "sec-a8", tmp_path, trust=broker.sec.cafile)
    ident.key.chmod(0o600)
    cfg = parse_config(
        {
            "device_id": "sec-a8",
            "data_dir": str(tmp_path),
            "director_public_keys": ["11" * 32],
            "broker": {
                "host": broker.proc.host,
                "port": broker.proc.port,
                "reconnect_min": 1,
                "reconnect_max": 2,
                "ca_file": str(ident.ca),
                "cert_file": str(ident.cert),
                "key_file": str(ident.key),
            },
        }
    )
    seq = iter(range(1, 1000))
    connects: list[float] = []
    link = MqttLink(cfg, lambda: next(seq), lambda payload: None, lambda: connects.append(time.monotonic()))
    link.start()
    try:
        deadline = time.monotonic() + 10
        while not connects:
            assert time.monotonic() < deadline, "agent link did not connect over mTLS"
            time.sleep(0.05)
        # Renew (same key, as agent/identity.py does), then make the old certificate useless.
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(ident.key.read_bytes(), password=None)
        new = broker.ca.issue_device("sec-a8", make_csr(key, "sec-a8"))  # type: ignore[arg-type]
        ident.cert.write_bytes(new.pem)
        link.reload_identity()
        broker.revoked.append((old.serial, pki.utcnow()))
        assert broker.control.install_crl(broker.ca.crl(broker.revoked))
        time.sleep(0.3)
        ctl = connected(broker, clients, None)
        ctl.publish(DYNSEC_TOPIC, kick_command("sec-a8"))
        deadline = time.monotonic() + 10
        while len(connects) < 2:
            assert time.monotonic() < deadline, "link did not come back with the renewed certificate"
            time.sleep(0.05)
    finally:
        link.stop()


def test_agent_link_survives_concurrent_publishes_and_deliveries_over_tls(broker, clients, tmp_path) -> None:
    """Publishes from several threads while the broker delivers to the link: the TLS session must
    never be written by two threads at once (it broke as "wrong version number" before the fix)."""
    from agent.config import parse_config
    from agent.link import MqttLink

    dev, n = "sec-conc", 600
    ident, _ = device_identity(broker.ca, dev, tmp_path, trust=broker.sec.cafile)
    ident.key.chmod(0o600)
    cfg = parse_config(
        {
            "device_id": dev,
            "data_dir": str(tmp_path),
            "director_public_keys": ["11" * 32],
            "broker": {
                "host": broker.proc.host,
                "port": broker.proc.port,
                "ca_file": str(ident.ca),
                "cert_file": str(ident.cert),
                "key_file": str(ident.key),
            },
        }
    )
    seq = iter(range(1, 100_000))
    lock = threading.Lock()
    desired: list[bytes] = []
    connects: list[float] = []

    def next_seq() -> int:
        with lock:
            return next(seq)

    link = MqttLink(cfg, next_seq, desired.append, lambda: connects.append(time.monotonic()))
    link.start()
    ctl = connected(broker, clients, None)
    ctl.subscribe(device_topic(dev, Kind.EVENTS))
    try:
        deadline = time.monotonic() + 10
        while not connects:
            assert time.monotonic() < deadline, "link did not connect"
            time.sleep(0.05)
        time.sleep(0.3)  # let the link's SUBACK arrive

        def publisher(k: int) -> None:
            for i in range(n):
                link.publish(Kind.EVENTS, Event(device_id=dev, seq=i, sent_at=0.0, kind=f"test.{k}", detail={"k": k, "i": i}))

        threads = [threading.Thread(target=publisher, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for i in range(n):  # deliveries to the link's socket meanwhile
            ctl.client.publish(device_topic(dev, Kind.DESIRED), json.dumps({"i": i}).encode(), qos=1)
        for t in threads:
            t.join(30)
        ctl.wait(lambda: len(ctl.received(device_topic(dev, Kind.EVENTS))) >= 3 * n, 30, "all events from the link")
        deadline = time.monotonic() + 30
        while len(desired) < n:
            assert time.monotonic() < deadline, f"link received {len(desired)} of {n} deliveries"
            time.sleep(0.05)
        assert len(connects) == 1, "the link lost its TLS session and reconnected"
    finally:
        link.stop()


def test_device_cannot_take_another_clients_id(broker, clients) -> None:
    """The broker binds the client id to the certificate CN: a device cannot knock another client off."""
    victim = connected(broker, clients, "sec-victim", client_id="sec-victim")
    ctl = connected(broker, clients, None, client_id="edgefleet-controller-1")
    r2 = broker.replica2
    replica = TlsClient(broker.proc.host, broker.proc.port, r2.ca, r2.cert, r2.key, client_id="edgefleet-controller-1")
    clients.append(replica)
    assert replica.connect(), replica.events  # a second replica with the same configured id does not kick the first
    assert replica.subscribe("$share/controllers/edgefleet/v1/dev/+/status") == [1]
    for stolen in ("sec-victim", "_controller", "_controller-2", "edgefleet-controller-1"):
        thief = connected(broker, clients, "sec-thief", client_id=stolen)
        time.sleep(0.3)
        assert victim.connected.is_set(), (stolen, victim.events)
        assert ctl.connected.is_set(), (stolen, ctl.events)
        assert replica.connected.is_set(), (stolen, replica.events)
        thief.close()
    assert not any(e.startswith("disconnect") for e in victim.events + ctl.events + replica.events)


def test_no_device_can_subscribe_to_any_shared_subscription(broker, clients, tmp_path, capsys) -> None:
    """Mosquitto 2.0's ACL file grants any SUBSCRIBE (read access is checked per delivered message), so a device
    in the controllers' group would be handed, and drop, a share of every device's messages. The share guard
    plugin refuses every ``$share/...`` SUBSCRIBE whose certificate CN is not a controller replica's, whatever
    the group: for an enrolled device (also refused by its dynsec role) and for one dynsec does not know (a
    certificate issued outside enrolment, or a broker that lost its dynsec state). The group name is also
    random (from the broker setup), and here the devices know it anyway."""
    import paho.mqtt.client as mqtt

    from controller.identity import broker_setup

    assert broker_setup.main(["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 0
    printed = dict(line.strip().split("=", 1) for line in capsys.readouterr().out.splitlines() if "EDGEFLEET_" in line)
    group = printed["EDGEFLEET_MQTT_SHARE_GROUP"]
    assert len(group) >= 32 and group != new_share_group()
    ctl = connected(broker, clients, None)
    ctl.subscribe(f"{DYNSEC_TOPIC}/response")
    ctl.publish(DYNSEC_TOPIC, register_devices_command(["sec-spy", "sec-honest"]))
    ctl.wait(lambda: bool(ctl.received(f"{DYNSEC_TOPIC}/response")), 5, "no dynsec response")
    assert ctl.subscribe(fleet_filter(Kind.TELEMETRY, shared=True, group=group)) == [1]
    enrolled = connected(broker, clients, "sec-spy")
    unknown = connected(broker, clients, "sec-unknown")  # never registered with dynsec
    ident, _ = device_identity(broker.ca, "sec-unknown311", tmp_path / "dev", trust=broker.sec.cafile)
    old = TlsClient(broker.proc.host, broker.proc.port, ident.ca, ident.cert, ident.key, protocol=mqtt.MQTTv311)
    clients.append(old)
    assert old.connect(), old.events
    filters = [fleet_filter(kind, shared=True, group=g) for g in (group, "controllers") for kind in Kind]
    filters += [f"$share/{group}/#", f"$share/{group}/edgefleet/v1/dev/#", f"$share/{group}/+/+/+/+/telemetry", "$share/x/#"]

    def all_refused() -> None:
        for f in filters:
            assert enrolled.subscribe(f) == [NOT_AUTHORIZED], ("enrolled", f)
            assert unknown.subscribe(f) == [NOT_AUTHORIZED], ("unknown to dynsec", f)
            assert old.subscribe(f) == [0x80], ("MQTT 3.1.1", f)  # SUBACK failure

    all_refused()
    broker.proc.reload()  # SIGHUP, as after every revocation: the plugin keeps refusing
    time.sleep(0.5)
    all_refused()
    for spy, dev in ((enrolled, "sec-spy"), (unknown, "sec-unknown")):
        assert spy.subscribe(device_topic(dev, Kind.DESIRED)) == [1]  # its own topics still work
        assert spy.publish(device_topic(dev, Kind.TELEMETRY), b"own") == 0
    ctl.wait(lambda: ctl.received(device_topic("sec-unknown", Kind.TELEMETRY)) == [b"own"], 5, "the unknown device's own")
    honest = connected(broker, clients, "sec-honest")
    topic = device_topic("sec-honest", Kind.TELEMETRY)
    for i in range(50):
        assert honest.publish(topic, str(i).encode()) == 0
    ctl.wait(lambda: len(ctl.received(topic)) == 50, 5, "the controller lost a share of the messages")
    assert ctl.received(topic) == [str(i).encode() for i in range(50)]
    assert [m for m in enrolled.messages + unknown.messages + old.messages if m[0] == topic] == []
    # Sent again (the leader does, every few minutes): nothing changes, nothing breaks.
    n = len(ctl.received(f"{DYNSEC_TOPIC}/response"))
    ctl.publish(DYNSEC_TOPIC, register_devices_command(["sec-spy"]))
    ctl.wait(lambda: len(ctl.received(f"{DYNSEC_TOPIC}/response")) > n, 5, "no dynsec response")
    assert enrolled.subscribe(fleet_filter(Kind.TELEMETRY, shared=True, group=group)) == [NOT_AUTHORIZED]
    assert enrolled.connected.is_set() and unknown.connected.is_set() and old.connected.is_set()
