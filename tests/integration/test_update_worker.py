"""The update stack in a child process (ADR 0062): same decisions, none of its modules in the agent.

A real agent process with the default ``[download] isolated = true``, a real broker, a
real TUF repository and real Ed25519 keys: a signed release installs, a forged desired
state and an unsigned release are refused with the same reasons as before, a release
that fails its health check rolls back, the model keeps serving, and the agent's own
memory map never holds ``cryptography``'s library or python-tuf.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner

from agent.config import parse_config
from agent.localapi.client import AgentClient
from agent.ota.worker import Preempted, UpdateWorker
from firmware_sim.modelgen import make_onnx_bundle
from shared.errors import SignatureError
from shared.signing import public_key_hex, sign_document
from shared.topics import Kind, device_topic
from tests.mqttwatch import Watcher
from tests.otalab import Lab

pytestmark = [pytest.mark.integration]


def _events(watch: Watcher, kinds: tuple[str, ...]) -> list[dict]:
    return [m for m in watch.json_messages("/events") if m.get("kind") in kinds]


def test_an_isolated_agent_installs_refuses_and_rolls_back_without_loading_the_update_stack(mosquitto, tmp_path, make_bundle):
    lab = Lab(tmp_path / "lab")
    device = "isolated-1"
    watch = Watcher(mosquitto.host, mosquitto.port, device_topic(device, Kind.STATUS), device_topic(device, Kind.EVENTS))
    agent = lab.start_agent(tmp_path, device, mosquitto)
    topic = device_topic(device, Kind.DESIRED)
    rejected = ("desired.rejected", "ota.rejected")
    try:
        watch.publish(topic, lab.desired(device, lab.publish(make_bundle(1))), retain=True)
        watch.wait_for(lambda m: m.get("kind") == "ota.committed", "/events")

        # a desired state signed by a key the device does not trust
        forged = sign_document(
            json.loads(lab.desired(device, lab.publish(make_bundle(2))))["signed"], Ed25519PrivateKey.generate()
        )
        watch.publish(topic, json.dumps(forged).encode(), retain=True)
        watch.wait_for(lambda m: m.get("kind") == "desired.rejected", "/events")
        assert "unknown key" in _events(watch, rejected)[-1]["message"]
        # the trusted key's signature over something else
        tampered = json.loads(lab.desired(device, lab.assignment(make_bundle(2))))
        tampered["signed"]["counter"] += 1000
        watch.publish(topic, json.dumps(tampered).encode(), retain=True)
        watch.wait_for(lambda m: m.get("kind") == "desired.rejected" and "unknown key" not in m["message"], "/events")
        assert "signature" in _events(watch, rejected)[-1]["message"].lower()

        # a release the image repository's release keys did not sign
        strangers = [CryptoSigner.generate_ed25519() for _ in range(2)]
        watch.publish(topic, lab.desired(device, lab.publish(make_bundle(3), signers=strangers)), retain=True)
        watch.wait_for(lambda m: m.get("kind") == "ota.rejected" and "UnsignedMetadataError" in m.get("message", ""), "/events")

        # a signed release that fails its health check on this device: rolled back
        slow = make_onnx_bundle(version=4, latency_budget_ms=1e-6)
        watch.publish(topic, lab.desired(device, lab.publish(slow)), retain=True)
        watch.wait_for(lambda m: m.get("kind") == "ota.rolled_back", "/events")

        with AgentClient(agent.socket_path) as c:
            assert c.predict([[0.0] * 64])["version"] == 1
        maps = Path(f"/proc/{agent.popen.pid}/maps").read_text()
        assert "cryptography" not in maps  # its Rust library: Ed25519 ran in the update processes
        assert "ota.committed" in [e["kind"] for e in watch.json_messages("/events")]
    finally:
        watch.close()
        agent.stop()
        lab.close()


def test_where_no_child_can_start_the_agent_checks_signatures_itself(tmp_path):
    key = Ed25519PrivateKey.generate()
    cfg = parse_config({"device_id": "d1", "data_dir": str(tmp_path), "director_public_keys": [public_key_hex(key.public_key())]})
    envelope = sign_document({"device_id": "d1", "counter": 1}, key)
    for argv in (None, [str(tmp_path / "no-such-python")]):  # a real child, then none at all
        worker = UpdateWorker(cfg, argv=argv)
        assert worker.verify(envelope) == envelope["signed"]
        with pytest.raises(SignatureError):
            worker.verify({**envelope, "signed": {"device_id": "d1", "counter": 2}})
        assert worker.usable() is (argv is None)


def test_a_bundle_still_on_the_device_is_vouched_for_by_the_child_and_not_downloaded_again(mosquitto, tmp_path, make_bundle):
    lab = Lab(tmp_path / "lab")
    device = "isolated-2"
    watch = Watcher(mosquitto.host, mosquitto.port, device_topic(device, Kind.EVENTS))
    agent = lab.start_agent(tmp_path, device, mosquitto, "[download]\nvouched_max_age_s = 0\n")  # always ask
    topic = device_topic(device, Kind.DESIRED)
    try:
        a1, a2 = lab.publish(make_bundle(1)), lab.publish(make_bundle(2))
        for a in (a1, a2):
            watch.publish(topic, lab.desired(device, a), retain=True)
            watch.wait_for(lambda m, a=a: m.get("kind") == "ota.committed" and m["detail"]["version"] == a.version, "/events")
        lab.server.requests.clear()
        seq = _events(watch, ("ota.committed",))[-1]["seq"]
        watch.publish(topic, lab.desired(device, a1), retain=True)  # back to v1, whose bundle the device keeps
        watch.wait_for(lambda m: m.get("kind") == "ota.downloading" and "no download" in m["message"], "/events", timeout=30)
        watch.wait_for(lambda m: m.get("kind") == "ota.committed" and m["seq"] > seq, "/events", timeout=30)
        assert _events(watch, ("ota.committed",))[-1]["detail"]["version"] == 1
        assert any(p.startswith("/metadata/") for p in lab.server.requests)  # the child asked the repository
        assert not any(p.startswith("/bundles/") for p in lab.server.requests), lab.server.requests
        downloading = [m["message"] for m in _events(watch, ("ota.downloading",))]
        assert downloading[-1] == "on this device already, no download", downloading
    finally:
        watch.close()
        agent.stop()
        lab.close()


def _metadata(agent) -> dict:
    with AgentClient(agent.socket_path) as c:
        return c.call({"op": "status"})["ota"]["metadata"]


def _until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_agent_refreshes_its_metadata_on_its_own_and_a_later_rollback_takes_the_fast_path(mosquitto, tmp_path, make_bundle):
    """ADR 0082: with nothing assigned the agent refreshes every ``refresh_s``; a failing refresh is a warning and
    a status, not a change of model; a rollback long after the last install still finds a recent listing."""
    lab = Lab(tmp_path / "lab")
    device = "refresh-1"
    watch = Watcher(mosquitto.host, mosquitto.port, device_topic(device, Kind.EVENTS))
    agent = lab.start_agent(tmp_path, device, mosquitto, "[download]\nrefresh_s = 1.5\nvouched_max_age_s = 8\n")
    topic = device_topic(device, Kind.DESIRED)
    try:
        a1, a2 = lab.publish(make_bundle(1)), lab.publish(make_bundle(2))
        for a in (a1, a2):
            watch.publish(topic, lab.desired(device, a), retain=True)
            watch.wait_for(lambda m, a=a: m.get("kind") == "ota.committed" and m["detail"]["version"] == a.version, "/events")
        installed_at = time.time()
        lab.server.requests.clear()
        # nothing is assigned, and the agent asks the image repository on its own, again and again
        _until(lambda: lab.server.requests.count("/metadata/timestamp.json") >= 3, 20, "three refreshes")
        status = _metadata(agent)
        assert status["ok"] is True and status["refresh_s"] == 1.5 and time.time() - status["verified_at"] < 8

        lab.server.faults.replace["timestamp.json"] = b"not metadata"  # a broken repository
        failed = _until(lambda: (s := _metadata(agent))["failures"] >= 2 and s, 20, "two failed refreshes")
        assert failed["ok"] is False and "not refreshed" in failed["reason"]
        assert "image repository metadata not refreshed (failure 1" in agent.log_path.read_text()
        with AgentClient(agent.socket_path) as c:
            assert c.predict([[0.0] * 64])["version"] == 2  # what the device serves did not change
        del lab.server.faults.replace["timestamp.json"]
        _until(lambda: _metadata(agent)["ok"] is True, 20, "a working refresh")

        time.sleep(max(0.0, installed_at + 9 - time.time()))
        assert time.time() - installed_at > 8  # the install's own listing has aged out of the fast path
        seq = _events(watch, ("ota.committed",))[-1]["seq"]
        watch.publish(topic, lab.desired(device, a1), retain=True)  # the rollback
        watch.wait_for(lambda m: m.get("kind") == "ota.committed" and m["seq"] > seq, "/events", timeout=30)
        after = [m for m in watch.json_messages("/events") if m["seq"] > seq]
        stored = [m for m in after if m["kind"] == "ota.stored"]
        assert stored and "listed by the image repository" in stored[0]["message"], after
        assert "ota.downloading" not in [m["kind"] for m in after]  # no refresh on the rollback's path
    finally:
        watch.close()
        agent.stop()
        lab.close()


def test_a_metadata_refresh_in_progress_stops_at_once_for_an_install(tmp_path):
    """A refresh whose server never answers would hold the update process for its timeouts; an install does not
    wait for it (``preempt``), nor when it was already waiting as the refresh started."""
    lab = Lab(tmp_path / "lab")
    mute = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    root = tmp_path / "root.json"
    root.write_bytes(lab.repo.root_bytes(1))
    key = Ed25519PrivateKey.generate()
    cfg = parse_config(
        {
            "device_id": "d1",
            "data_dir": str(tmp_path / "dev"),
            "director_public_keys": [public_key_hex(key.public_key())],
            "image_repository": {"url": f"http://127.0.0.1:{mute.getsockname()[1]}/metadata/", "root": str(root)},
        }
    )
    (tmp_path / "dev").mkdir()
    worker = UpdateWorker(cfg)
    try:
        assert worker.usable()
        result: list[BaseException | tuple] = []

        def refresh() -> None:
            try:
                result.append(worker.metadata_digest())
            except Preempted as exc:
                result.append(exc)

        t = threading.Thread(target=refresh)
        t.start()
        _until(lambda: worker._running is not None, 10, "the refresh's process")
        t.join(1.5)
        assert t.is_alive()  # the refresh hangs on the mute server
        started = time.monotonic()
        assert worker.preempt()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - started < 2
        assert len(result) == 1 and isinstance(result[0], Preempted)
        assert not worker.preempt()  # nothing runs now

        started = time.monotonic()
        with pytest.raises(Preempted):
            worker.metadata_digest(waiting=lambda: True)  # a desired state already queued
        assert time.monotonic() - started < 3
    finally:
        mute.close()
        lab.close()
