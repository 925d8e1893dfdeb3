"""Three controller replicas as real processes on one PostgreSQL and one broker, behind one address.

Push through A, sign the release with offline keys through B and C, assign through B: the
agent installs. Then the leader is SIGKILLed in the middle of the next release: the others
take over (a new leader keeps the short-lived TUF metadata fresh), the release completes
through a survivor and the agent installs it. Telemetry is stored exactly once: the set of
windows merged (read back from the dedupe cursor and its gaps) is every window the broker
accepted, including those the killed replica had received and not yet committed (the agent
keeps a window until a controller acknowledges it and sends it again: ADR 0068), and no
window is counted twice.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import create_engine, text

from agent.localapi.client import AgentClient
from controller.init import init
from controller.telemetry.decode import decode_telemetry_many
from firmware_sim.procs import REPO, ControllerProc, start_agent, start_controller
from firmware_sim.telemetry_rx import queued_seqs
from shared.topics import Kind, device_topic
from tests.conftest import PG_URL
from tests.lbproxy import LoadBalancer
from tests.mqttwatch import Watcher
from tests.telemetrydb import aggregated_windows, merged_seqs

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not PG_URL, reason="three replicas share one PostgreSQL: set EDGEFLEET_TEST_DATABASE_URL"),
]
TOKEN = "replica-e2e-admin-token-0123456789"
DEVICE = "rep-e2e-1"


@pytest.fixture
def pg_url():
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


class TelemetryTap:
    """A plain (non-shared) subscriber: every telemetry window the broker accepted, with when it saw it."""

    def __init__(self, host: str, port: int) -> None:
        self.seen: dict[int, float] = {}
        self.with_roles: set[int] = set()  # windows that carry role summaries (counted in aggregates)
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tap-{uuid.uuid4().hex[:6]}")
        c.on_connect = lambda cl, *a: cl.subscribe(device_topic(DEVICE, Kind.TELEMETRY), qos=1)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        c.connect(host, port)
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        for window in decode_telemetry_many(bytes(msg.payload)):
            self.seen.setdefault(window.seq, time.time())
            if window.roles:
                self.with_roles.add(window.seq)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def sign(ctrl: ControllerProc, key: Path) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "controller.cli", "release", "sign", "--key", str(key), "--url", ctrl.url, "--token", TOKEN],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def leader_of(ctrls: list[ControllerProc]) -> ControllerProc | None:
    for c in ctrls:
        if not c.alive():
            continue
        try:
            if httpx.get(f"{c.url}/healthz", timeout=2).json()["leader"]:
                return c
        except httpx.HTTPError:
            continue
    return None


def wait_for(cond, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return got


def test_three_replicas_share_work_and_survive_a_leader_sigkill(mosquitto, tmp_path, make_bundle, pg_url) -> None:
    secrets, offline = tmp_path / "secrets", tmp_path / "offline"
    init(secrets, offline, n_root=1, root_threshold=1, n_release=3, release_threshold=2)
    ctrls: list[ControllerProc] = []
    agent = None
    tap = None
    backends: list[str] = []
    with LoadBalancer(backends) as lb:
        common = {
            "EDGEFLEET_SECRETS_DIR": str(secrets),
            "EDGEFLEET_RELEASE_SIGNING": "offline",
            "EDGEFLEET_PUBLIC_URL": lb.url,
            "EDGEFLEET_LEADER_LEASE_S": "2",
            "EDGEFLEET_TUF_TIMESTAMP_EXPIRY_S": "4",
            "EDGEFLEET_TUF_SNAPSHOT_EXPIRY_S": "6",
            "EDGEFLEET_DESIRED_TTL_S": "8",
        }
        try:
            for name in ("a", "b", "c"):
                env = {**common, "EDGEFLEET_REPLICA_ID": name}
                ctrls.append(
                    start_controller(
                        tmp_path / name,
                        broker_host=mosquitto.host,
                        broker_port=mosquitto.port,
                        database_url=pg_url,
                        token=TOKEN,
                        env=env,
                    )
                )
            backends.extend(c.url for c in ctrls)
            a, b, c = ctrls
            assert not (a.data_dir / "keys").exists() or not (a.data_dir / "keys" / "director.pem").exists()
            keys = {httpx.get(f"{x.url}/v1/trust").json()["director_public_key"] for x in ctrls}
            assert len(keys) == 1, "every replica signs with the one shared director key"

            # Release 1: push via A, sign via B and C (2 of 3 release keys), assign via B.
            with a.client() as api:
                assert api.post("/v1/models", content=make_bundle(1)).status_code == 201
                assert api.post("/v1/devices", json={"id": DEVICE}).status_code == 201
            a.approve("digits", 1)
            sign(b, offline / "release-1.pem")
            assert "published" in sign(c, offline / "release-2.pem")

            tap = TelemetryTap(mosquitto.host, mosquitto.port)
            watch = Watcher(mosquitto.host, mosquitto.port, device_topic(DEVICE, Kind.STATUS))
            agent = start_agent(
                tmp_path,
                DEVICE,
                broker_host=mosquitto.host,
                broker_port=mosquitto.port,
                director_keys=[keys.pop()],
                controller_url=lb.url,
                extra="[health]\nlive_window = 0.5\n[telemetry]\nwindow_s = 0.5\nsystem_metrics = false\nack_timeout_s = 2\n",
            )
            with b.client() as api:
                r = api.put(f"/v1/devices/{DEVICE}/desired", json={"model": "digits", "version": 1})
                assert r.status_code == 200, r.text
            watch.wait_for(lambda m: (m.get("models", {}).get("production") or {}).get("version") == 1, "/status", timeout=60)
            stop_traffic = threading.Event()

            def traffic(path: Path = agent.socket_path) -> None:  # inferences, so windows carry summaries
                while not stop_traffic.wait(0.05):
                    try:
                        with AgentClient(path) as client:
                            client.predict([[0.0] * 64])
                    except OSError:
                        pass

            traffic_thread = threading.Thread(target=traffic, daemon=True)
            traffic_thread.start()

            # Release 2 is half-signed when the leader dies.
            with a.client() as api:
                assert api.post("/v1/models", content=make_bundle(2)).status_code == 201
            a.approve("digits", 2)
            sign(b, offline / "release-1.pem")
            old = wait_for(lambda: leader_of(ctrls), 15, "a leader")
            old_term = httpx.get(f"{old.url}/healthz").json()["leader_term"]
            time.sleep(1.5)  # telemetry flowing to every replica
            # Frozen first, so the broker surely hands it windows it never acknowledges (its share of the group,
            # in flight or queued for it), then killed: a clean-session member's messages die with it.
            old.popen.send_signal(signal.SIGSTOP)
            time.sleep(2.0)
            old.kill()
            survivors = [x for x in ctrls if x is not old]
            backends.remove(old.url)
            new = wait_for(lambda: leader_of(survivors), 15, "a new leader")
            assert httpx.get(f"{new.url}/healthz").json()["leader_term"] > old_term
            assert "published" in sign(survivors[0], offline / "release-3.pem")
            time.sleep(10)  # longer than the timestamp's lifetime: only a live leader keeps it valid
            with survivors[1].client() as api:
                r = api.put(f"/v1/devices/{DEVICE}/desired", json={"model": "digits", "version": 2})
                assert r.status_code == 200, r.text
            watch.wait_for(lambda m: (m.get("models", {}).get("production") or {}).get("version") == 2, "/status", timeout=60)
            watch.close()

            for x in survivors:  # each member of the share group received its part
                replica = httpx.get(f"{x.url}/healthz").json()["replica"]
                with x.client() as api:
                    metrics = api.get("/metrics").text
                line = next(ln for ln in metrics.splitlines() if ln.startswith("edgefleet_mqtt_received_messages_total{"))
                assert f'replica="{replica}"' in line and float(line.rsplit(" ", 1)[1]) > 0, line
            stop_traffic.set()
            traffic_thread.join(5)
            # Every window the agent closed is acknowledged by a survivor: its queue empties.
            wait_for(lambda: not queued_seqs(agent.data_dir), 30, "the agent's queue acknowledged")
            agent.stop()
            agent = None
            deadline = time.monotonic() + 15
            while lost := set(tap.seen) - merged_seqs(pg_url, DEVICE):
                assert time.monotonic() < deadline, f"windows the broker accepted and no replica stored: {sorted(lost)}"
                time.sleep(0.2)
            merged, counted = merged_seqs(pg_url, DEVICE), aggregated_windows(pg_url)
            seen = dict(tap.seen)
            assert seen, "the agent sent telemetry"
            print(f"windows: {len(seen)} accepted, {len(merged)} merged, {counted} aggregated")
            assert merged == set(seen), "every window the broker accepted is merged, and nothing else"
            assert tap.with_roles, "windows carried summaries"
            assert counted == len(merged & tap.with_roles), "every merged window is in the aggregates once"
        finally:
            if tap is not None:
                tap.close()
            if agent is not None:
                agent.stop()
            for x in ctrls:
                x.stop()
