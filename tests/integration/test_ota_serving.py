"""Serving while updating: hot swap under load over the real Unix socket, disk full, label feedback."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from agent.config import HealthConfig
from agent.localapi.client import AgentClient
from agent.localapi.server import LocalApi, SocketServer
from agent.ota.state import State
from firmware_sim.modelgen import load_digits
from tests.diskfill import fill_completely
from tests.otalab import Lab

pytestmark = pytest.mark.integration


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path / "lab")
    yield lab
    lab.close()


def test_hot_swap_under_continuous_load_loses_no_request(lab, tmp_path, make_bundle):
    bundles = [make_bundle(1), make_bundle(2), make_bundle(3)]
    assignments = [lab.publish(b) for b in bundles]
    up = lab.updater(tmp_path / "dev", health=HealthConfig(live_inferences=30, live_window=5.0, latency_runs=5))
    up.apply(lab.desired("lab-dev", assignments[0]))
    server = SocketServer(tmp_path / "agent.sock", LocalApi(up.host))
    server.start()
    x, _ = load_digits()
    stop = threading.Event()
    failures: list[object] = []
    seen: set[int] = set()
    counts = [0]

    def hammer(i: int) -> None:
        with AgentClient(tmp_path / "agent.sock") as c:
            while not stop.is_set():
                r = c.predict(x[i : i + 1].tolist())
                counts[0] += 1
                if not r.get("ok"):
                    failures.append(r)
                else:
                    seen.add(r["version"])

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        for a in [assignments[1], assignments[2], assignments[0], assignments[1]]:
            up.apply(lab.desired("lab-dev", a))
            assert up.store.ota.state is State.COMMITTED, lab.events
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        server.stop()
    assert failures == []
    assert seen == {1, 2, 3}
    assert counts[0] > 200


def test_label_feedback_is_routed_with_its_prediction_id(lab, tmp_path, make_bundle):
    """The API validates feedback and hands it on; label accounting is the telemetry
    service's (tests/integration/test_telemetry_agent.py checks it end to end)."""
    up = lab.updater(tmp_path / "dev")
    up.apply(lab.desired("lab-dev", lab.publish(make_bundle(1))))
    got = []
    api = LocalApi(up.host, feedback=lambda pid, label: got.append((pid, label)) or {"ok": True, "correct": None})
    x, y = load_digits()
    r = api.handle({"op": "predict", "inputs": x[:1].tolist()})
    assert api.handle({"op": "feedback", "prediction_id": r["prediction_id"], "label": int(y[0])})["ok"]
    assert got == [(r["prediction_id"], int(y[0]))]
    assert "integer label" in api.handle({"op": "feedback", "prediction_id": "p", "label": "3"})["error"]
    assert "string prediction_id" in api.handle({"op": "feedback", "label": 3})["error"]
    assert "not enabled" in LocalApi(up.host).handle({"op": "feedback", "prediction_id": "p", "label": 1})["error"]
    assert len(got) == 1


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_during_download_fails_cleanly_and_the_old_model_serves(lab, small_disk, make_bundle):
    up = lab.updater(small_disk / "dev")
    up.apply(lab.desired("lab-dev", lab.publish(make_bundle(1))))
    assert up.host.get().manifest.version == 1
    a2 = lab.publish(make_bundle(2))
    st = os.statvfs(small_disk)
    free = st.f_bavail * st.f_frsize
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * max(free - 20 * 1024, 0))  # leaves 20 kB: metadata fits, the 30 kB bundle does not
    lab.events.clear()
    up.apply(lab.desired("lab-dev", a2))
    ev = lab.last("ota.rejected")
    assert "DiskFullError" in ev["message"], ev
    assert up.host.get().manifest.version == 1
    assert up.store.slot("production").version == 1
    assert not up.store.partial_downloads()
    filler.unlink()  # space comes back: the same release installs
    up.apply(lab.desired("lab-dev", a2))
    assert up.store.ota.state is State.COMMITTED and up.host.get().manifest.version == 2


def test_local_http_api_on_loopback(lab, tmp_path, make_bundle):
    import httpx

    from agent.localapi.http import HttpServer

    up = lab.updater(tmp_path / "dev")
    up.apply(lab.desired("lab-dev", lab.publish(make_bundle(1))))
    labels = []
    srv = HttpServer(0, LocalApi(up.host, feedback=lambda pid, label: labels.append(label) or {"ok": True, "correct": True}))
    srv.start()
    try:
        base = f"http://127.0.0.1:{srv.port}/v1"
        x, y = load_digits()
        r = httpx.post(f"{base}/predict", json={"inputs": x[:1].tolist()})
        assert r.status_code == 200 and r.json()["version"] == 1
        fb = httpx.post(f"{base}/feedback", json={"prediction_id": r.json()["prediction_id"], "label": int(y[0])})
        assert fb.json()["correct"] is True and labels == [int(y[0])]
        assert httpx.get(f"{base}/info").json()["models"]["production"]["runtime"] == "onnx"
        bad = httpx.post(f"{base}/predict", content=b"{]")
        assert bad.status_code == 400 and "bad request" in bad.json()["error"]
        wrong = httpx.post(f"{base}/predict", json={"inputs": [[1.0] * 3]})
        assert wrong.status_code == 422 and "expected shape" in wrong.json()["error"]
        assert httpx.post(f"{base}/shutdown", json={}).status_code == 404
    finally:
        srv.stop()


def test_a_refusal_is_decided_again_when_the_release_metadata_changes(lab, tmp_path, make_bundle):
    """Assigned before the release keys listed it: refused, not retried in a loop, and installed
    once new metadata lists it (the agent polls the image repository while a refusal stands)."""
    up = lab.updater(tmp_path / "dev")
    up.apply(lab.desired("lab-dev", lab.publish(make_bundle(1))))
    b2 = make_bundle(2)
    a2 = lab.assignment(b2)
    (lab.bundle_dir / f"{a2.sha256}.tar").write_bytes(b2)  # served, but not (yet) a signed release
    lab.events.clear()
    up.apply(lab.desired("lab-dev", a2))
    refused = lab.last("ota.not_converged")
    assert "not a signed release" in refused["message"] and refused["detail"]["retry_at"] is None
    status = up.ota_status()
    assert status["converged"] is False and status["pending"][0]["retry_at"] is None
    up.converger.converge()  # nothing changed: no new attempt
    assert lab.kinds().count("ota.rejected") == 1
    up.converger.metadata_poll_s = 0.0
    up.converger.converge()  # first poll: notes the current metadata
    lab.publish(b2)  # the release keys sign it
    up.converger.converge()  # the poll sees new metadata: the refusal is decided again
    assert up.host.get().manifest.version == 2
    assert up.ota_status()["converged"] is True and up.ota_status()["pending"] == []


@pytest.mark.parametrize("point", ["DOWNLOADING", "VERIFYING", "STAGED", "ACTIVATING", "HEALTH_CHECK"])
def test_a_record_that_cannot_be_written_is_a_survived_crash_and_the_update_lands_later(lab, small_disk, make_bundle, point):
    """The disk fills at each OTA point: the committed model serves, a restart on the full disk starts
    and serves it too, and once there is room the same assignment installs (no operator)."""
    up = lab.updater(small_disk / "dev")
    up.apply(lab.desired("lab-dev", lab.publish(make_bundle(1))))
    a2 = lab.publish(make_bundle(2))
    fillers: list[Path] = []
    up.checkpoint = lambda p, v: fillers.append(fill_completely(small_disk)) if (p, v) == (point, 2) and not fillers else None
    up.apply(lab.desired("lab-dev", a2))
    assert fillers, "the disk was filled mid-update"
    assert up.host.get().manifest.version == 1 and up.store.slot("production").version == 1
    assert "could not be written" in up.ota_status()["reason"] and not up.ota_status()["converged"]
    again = lab.updater(small_disk / "dev")  # a restart while the disk is still full
    again.restore()
    assert again.host.get().manifest.version == 1
    fillers[0].unlink()
    up.converger.reconnected()  # the next retry, without waiting for its backoff
    assert up.store.ota.state is State.COMMITTED and up.host.get().manifest.version == 2
    assert up.ota_status()["converged"] and up.ota_status()["reason"] == ""


def test_a_desired_state_that_arrives_on_a_full_disk_is_acted_on_when_room_returns(lab, small_disk, make_bundle):
    """The desired state cannot be saved (the disk is full): it is acted on from memory, the update waits for
    room, and once there is some the assignment installs without the desired state being delivered again."""
    up = lab.updater(small_disk / "dev")
    up.apply(lab.desired("lab-dev", lab.publish(make_bundle(1))))
    a2 = lab.publish(make_bundle(2))
    filler = fill_completely(small_disk)
    lab.events.clear()
    up.apply(lab.desired("lab-dev", a2))  # raised OSError before: the updater thread logged it and forgot the state
    assert "not saved" in lab.last("desired.unsaved")["message"]
    assert up.host.get().manifest.version == 1 and not up.ota_status()["converged"]
    filler.unlink()
    up.converger.reconnected()  # the next retry, without waiting for its backoff
    assert up.store.ota.state is State.COMMITTED and up.host.get().manifest.version == 2
    assert up.ota_status()["converged"]
    assert lab.updater(small_disk / "dev").store.counter == up.store.counter  # saved once there was room
