"""Crash safety: SIGKILL the real agent process in every OTA state and mid-bundle-write.

The agent runs as its own process against a real Mosquitto, a real TUF
repository over HTTP and real int8 bundles. A test-only environment variable
(agent/ota/testhook.py) stops it dead at the chosen point; the test kills it
with SIGKILL (a power cut), restarts it, and asserts that it comes back
serving a verified model, with no corrupted slot, and then finishes the
update or rolls it back.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from agent.localapi.client import AgentClient
from firmware_sim.procs import start_agent
from shared import bundle as bundle_fmt
from shared.manifest import Manifest
from shared.topics import Kind, device_topic
from tests.mqttwatch import Watcher
from tests.otalab import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
HEALTH = "[health]\nlive_window = 0.3\nlatency_runs = 3\n"

# (pause point, bundle, expected state after restart, expected version served)
CASES = [
    ("DOWNLOADING", "good", "COMMITTED", 2),
    ("DOWNLOADING.half", "good", "COMMITTED", 2),
    ("VERIFYING", "good", "COMMITTED", 2),
    ("STAGED", "good", "COMMITTED", 2),
    ("ACTIVATING", "good", "ROLLED_BACK", 1),
    ("HEALTH_CHECK", "good", "ROLLED_BACK", 1),
    ("COMMITTED", "good", "COMMITTED", 2),
    ("ROLLING_BACK", "bad", "ROLLED_BACK", 1),
    ("ROLLED_BACK", "bad", "ROLLED_BACK", 1),
    ("IDLE", "foreign", "IDLE", 1),
]


def broken_golden(bundle: bytes) -> bytes:
    b = bundle_fmt.read(bundle)
    d = b.manifest.to_dict()
    d["golden"]["vectors"][0]["outputs"]["probs"] = [[1.0] + [0.0] * 9]
    return bundle_fmt.pack(Manifest.from_dict(d), b.model)


def wait_ota(data_dir: Path, states: set[str], version: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    rec: dict = {}
    while time.monotonic() < deadline:
        try:
            rec = json.loads((data_dir / "ota.json").read_bytes())
        except (FileNotFoundError, ValueError):
            rec = {}
        if rec.get("state") in states and (rec.get("target") or {}).get("version") == version:
            return rec
        time.sleep(0.05)
    raise TimeoutError(f"OTA never reached {states} for v{version}; last {rec}")


def wait_file(path: Path, proc, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        assert proc.alive(), proc.log()[-3000:]
        time.sleep(0.02)
    raise TimeoutError(f"{path} never appeared:\n{proc.log()[-3000:]}")


def served(status: dict) -> int | None:
    return (status.get("models") or {}).get("production", {}).get("version")


def assert_slots_verified(data_dir: Path) -> dict:
    state = json.loads((data_dir / "state.json").read_bytes())
    for role, slots in state["roles"].items():
        for which, entry in slots.items():
            path = data_dir / "bundles" / f"{entry['sha256']}.tar"
            assert path.exists(), f"{role}/{which} points to a missing bundle"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], f"{role}/{which} is corrupted"
    return state


def predict_version(sock: Path, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with AgentClient(sock, timeout=5) as c:
                r = c.predict([[0.0] * 64])
                if r.get("ok"):
                    return int(r["version"])
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("agent never served a prediction")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def bundles(make_bundle):
    v1, v2 = make_bundle(1), make_bundle(2)
    return {"v1": v1, "good": v2, "bad": broken_golden(v2)}


@pytest.mark.parametrize(("point", "kind", "final", "serves"), CASES, ids=[c[0] for c in CASES])
def test_sigkill_then_restart_serves_a_verified_model(mosquitto, tmp_path, bundles, point, kind, final, serves):
    lab = Lab(tmp_path / "lab")
    device = f"crash-{point.lower().replace('.', '-').replace('_', '-')}"
    try:
        a1 = lab.publish(bundles["v1"])
        hardware = {"arch": ["riscv64"]} if kind == "foreign" else None  # signed for other hardware: rejected
        a2 = lab.publish(bundles["bad" if kind == "bad" else "good"], hardware=hardware)
        cfg_kw = dict(
            broker_host=mosquitto.host,
            broker_port=mosquitto.port,
            director_keys=[lab.director_key_hex],
            image_repo=(f"{lab.server.url}/metadata/", lab.repo.root_bytes(1)),
            extra=HEALTH,
            development=True,  # the pause hook is refused otherwise
        )
        agent = start_agent(tmp_path, device, env={"EDGEFLEET_TEST_PAUSE_AT": f"{point}@2"}, **cfg_kw)
        pub = Watcher(mosquitto.host, mosquitto.port, device_topic(device, Kind.STATUS))
        try:
            pub.publish(device_topic(device, Kind.DESIRED), lab.desired(device, a1), retain=True)
            wait_ota(agent.data_dir, {"COMMITTED"}, 1)
            if point == "DOWNLOADING.half":  # the rest comes slowly: the power cut lands mid-download on a loaded machine too
                lab.server.faults.stall_after = a2.length // 2 + 1024
            pub.publish(device_topic(device, Kind.DESIRED), lab.desired(device, a2), retain=True)
            assert wait_file(agent.data_dir / "paused", agent) == f"{point}"
            agent.kill()  # SIGKILL, as in a power cut

            assert_slots_verified(agent.data_dir)
            ranges_before = len(lab.server.faults.range_requests)
            agent = start_agent(tmp_path, device, config_path=agent.config_path)
            assert predict_version(agent.socket_path) in (1, 2)  # serving right away, a verified model
            rec = wait_ota(agent.data_dir, {final}, 2)
            assert predict_version(agent.socket_path) == serves
            if final == "ROLLED_BACK" and kind == "good":
                assert f"restarted during {point}" in rec["reason"]
            if point == "DOWNLOADING.half":
                assert len(lab.server.faults.range_requests) > ranges_before, "the download did not resume with Range"
            status = pub.wait_for(
                lambda m: m.get("state") == "online" and m.get("ota", {}).get("state") == final and served(m) == serves, "/status"
            )
            assert status["models"]["production"]["sha256"] == (a2 if serves == 2 else a1).sha256
            state = assert_slots_verified(agent.data_dir)
            assert "candidate" not in state["roles"]["production"]
        finally:
            pub.close()
            agent.kill()
    finally:
        lab.close()
