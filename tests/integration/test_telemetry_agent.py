"""A real agent (in-process, real broker, real int8 ONNX models, real Unix socket, real
controller process) reports what its models saw, labels, shadow agreement, garbage
it survived, and uploads captured samples."""

from __future__ import annotations

import hashlib
import json
import os
import time

import msgspec
import numpy as np
import pytest

from agent import identity
from agent.config import parse_config
from agent.daemon import Agent
from agent.localapi.client import AgentClient
from agent.runtime import load_model
from firmware_sim.modelgen import DIGITS_FEATURES, load_digits, load_digits_raw
from firmware_sim.procs import start_controller
from firmware_sim.telemetry_rx import TelemetryReceiver, director_key_hex
from shared import bundle as bundle_fmt
from shared.features import FeatureSpec
from shared.telemetry import merge
from shared.topics import Kind, device_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEVICE = "telem-1"


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def load(tmp_path, raw: bytes):
    b = bundle_fmt.read(raw)
    sha = hashlib.sha256(raw).hexdigest()
    path = tmp_path / f"{sha}.onnx"
    path.write_bytes(b.model)
    return load_model(b.manifest, path, sha)


@pytest.fixture
def controller(mosquitto, tmp_path):
    proc = start_controller(tmp_path, broker_host=mosquitto.host, broker_port=mosquitto.port)
    with proc.client() as api:
        assert api.post("/v1/devices", json={"id": DEVICE}).status_code == 201
    yield proc
    proc.stop()


def test_agent_reports_inference_summaries_labels_shadow_garbage_and_captures(mosquitto, controller, tmp_path, make_bundle):
    ident = tmp_path / "identity"
    with controller.client() as api:  # capture uploads are signed with the device's enrolled key
        token = api.post("/v1/identity/tokens", json={"device_id": DEVICE}).json()["token"]
    identity.enrol(controller.url, token, DEVICE, identity.IdentityPaths(ident))
    cfg = parse_config(
        {
            "device_id": DEVICE, "data_dir": str(tmp_path / "agent"), "director_public_keys": [director_key_hex()],
            "broker": {"host": mosquitto.host, "port": mosquitto.port, "reconnect_min": 0.2, "reconnect_max": 1},
            "telemetry": {"window_s": 3600, "windows_per_publish": 1},  # each window read as it closes, not batched
            "capture": {"enabled": True, "url": controller.url, "rate": 0.5, "upload_interval_s": 0.3},
            "identity": {"directory": str(ident)},
        }
    )  # fmt: skip
    # [identity] also means mTLS to the broker; this test's broker is the plain one, so only HTTP is signed.
    msgspec.structs.force_setattr(cfg, "broker", msgspec.structs.replace(cfg.broker, ca_file=None, cert_file=None, key_file=None))
    receiver = TelemetryReceiver(mosquitto.host, mosquitto.port, DEVICE)
    agent = Agent(cfg)
    agent.host.swap("production", load(tmp_path, make_bundle(1)))
    agent.host.swap("shadow", load(tmp_path, make_bundle(2)))
    agent.start()
    try:
        wait_until(lambda: agent.link.connected, 20, "agent never connected")
        x, y = load_digits()
        n, labelled = 40, 20
        correct = 0
        with AgentClient(cfg.socket_path) as client:
            for i in range(n):
                out = client.predict(x[i : i + 1].tolist())
                assert out["ok"], out
                if i < labelled:
                    fb = client.call({"op": "feedback", "prediction_id": out["prediction_id"], "label": int(y[i])})
                    assert fb["ok"], fb
                    correct += fb["correct"]
            assert not client.call({"op": "feedback", "prediction_id": "nope", "label": 1})["ok"]
            assert "integer label" in client.call({"op": "feedback", "prediction_id": "x", "label": "3"})["error"]
            assert not client.predict([[0.0] * 3])["ok"]  # a failed call counts as an error

        def shadow_done():
            acc = agent.telemetry.builder.current("shadow")
            return acc is not None and sum(acc.summary()["shadow"].values()) == n

        wait_until(shadow_done, 20, "shadow comparisons did not finish")
        seq = agent.telemetry.close_window()
        wait_until(lambda: seq in receiver.snapshot(), 20, "window never arrived")
        w = receiver.snapshot()[seq]
        prod, shadow = w.roles["production"], w.roles["shadow"]
        assert (prod["model"], prod["version"]) == ("digits", 1)
        assert prod["count"] == n + 1 and prod["errors"] == 1 and prod["samples"] == n
        assert sum(prod["latency_ms"]) == n + 1
        assert sum(prod["predictions"]) == n
        assert len(prod["features"]) == 64 and all(sum(c) == n for c in prod["features"].values())
        assert prod["labels"] == {"count": labelled, "correct": correct} and correct >= 15
        assert shadow["version"] == 2 and shadow["count"] == n and sum(shadow["shadow"].values()) == n
        assert shadow["shadow"]["agree"] >= n * 0.7  # two versions of the same model mostly agree
        # every production inference is compared, sampled out or dropped; the comparisons as a confusion matrix
        compared = shadow["shadow"]["agree"] + shadow["shadow"]["disagree"]
        assert compared + shadow["shadow"]["dropped"] + shadow["shadow"]["sampled_out"] == n
        cm = shadow["confusion"]
        assert len(cm) == 10 and all(len(row) == 10 for row in cm)
        assert sum(map(sum, cm)) == compared and sum(cm[i][i] for i in range(10)) == shadow["shadow"]["agree"]
        assert w.system["mem_percent"] > 0 and "cpu_percent" in w.system
        captured = w.counters["capture_samples"]
        assert captured >= labelled  # every labelled sample is kept; unlabelled ones at rate 0.5

        # Garbage on the desired topic: counted and reported, never a crash.
        junk = [b"", b"\xff\x00", b"{]", b"[]", b"null", b'{"signed": {}, "signatures": []}', os.urandom(300 * 1024)]
        for payload in junk:
            receiver.client.publish(device_topic(DEVICE, Kind.DESIRED), payload, qos=1).wait_for_publish(5)
        totals: dict[str, int] = {}

        def garbage_counted():
            nonlocal totals
            s = agent.telemetry.close_window()
            wait_until(lambda: s in receiver.snapshot(), 10, "window never arrived")
            totals = merge(totals, receiver.snapshot()[s].counters)
            return totals["desired_rejected"] >= len(junk)

        wait_until(garbage_counted, 20, "garbage was not counted")
        assert totals["desired_received"] == totals["desired_rejected"] == len(junk)
        with AgentClient(cfg.socket_path) as client:
            assert client.predict(x[:1].tolist())["version"] == 1
        assert agent.link.connected

        # Captured samples reach the controller; labelled ones all of them.
        with controller.client() as api:
            wait_until(lambda: api.get(f"/v1/capture/{DEVICE}").json()["samples"] >= captured, 20, "capture upload missing")
            summary = api.get(f"/v1/capture/{DEVICE}").json()
        assert summary["labelled"] == labelled
        assert agent.telemetry.spool is not None
        wait_until(lambda: agent.telemetry.spool.pending() == 0, 10, "spool not drained")
        assert np.isfinite(summary["samples"])

        # Raw inputs (the bundle's feature spec runs in the agent): captured samples keep the raw item beside
        # the model inputs it made, so the pipeline can train on raw with the same spec.
        raw_images, _ = load_digits_raw()
        with AgentClient(cfg.socket_path) as client:
            for i in range(3):
                out = client.predict_array(raw_images[i], raw=True)  # a binary frame: the caller's own array
                assert out["ok"], out
                assert client.call({"op": "feedback", "prediction_id": out["prediction_id"], "label": int(y[i])})["ok"]

        def raw_samples() -> list[dict]:
            lines = [
                json.loads(x)
                for p in (controller.data_dir / "capture" / DEVICE).glob("*.jsonl")
                for x in p.read_text().splitlines()
            ]
            return [s for s in lines if s.get("raw") is not None and s.get("label") is not None]

        wait_until(lambda: len(raw_samples()) >= 3, 20, "captured raw samples missing")
        spec = FeatureSpec.from_dict(DIGITS_FEATURES)
        for s in raw_samples():
            raw = np.asarray(s["raw"], dtype=np.float32)
            assert raw.shape in ((8, 8), (1, 8, 8))
            np.testing.assert_allclose(spec.transform(raw.reshape(1, 8, 8)).ravel(), np.asarray(s["inputs"]).ravel(), atol=1e-6)
    finally:
        agent.stop()
        receiver.close()
