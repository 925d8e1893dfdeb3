"""Features defined once: the agent's raw-input path (a real agent process serving over its socket)
and the pipeline's path (``FeatureSpec.transform`` on the same raw inputs, then the model) give
identical model inputs and outputs; golden vectors cover the raw -> feature step."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from agent.localapi.client import AgentClient
from agent.runtime import ModelLoadError, golden_check, load_model
from firmware_sim.modelgen import DIGITS_FEATURES, load_digits_raw
from shared import bundle as bundle_fmt
from shared.canonical import canonical_json
from shared.features import BatchFeatureValue, FeatureSpec, join_batch
from shared.manifest import Manifest
from shared.topics import Kind, device_topic
from tests.mqttwatch import Watcher
from tests.otalab import Lab

pytestmark = [pytest.mark.integration]


def _repack(data: bytes, edit) -> bytes:
    b = bundle_fmt.read(data)
    d = b.manifest.to_dict()
    edit(d)
    return bundle_fmt.pack(Manifest.from_dict(d), b.model)


def test_the_digits_bundle_carries_a_real_spec_and_golden_vectors_from_raw(onnx_bundle):
    m = bundle_fmt.read(onnx_bundle).manifest
    assert m.features == FeatureSpec.from_dict(DIGITS_FEATURES) and m.preprocessing == {}
    assert all(v.raw is not None for v in m.golden) and m.golden[-1].batch == {"dark_level": 2.0}
    golden_check(load_model(m, bundle_fmt.read(onnx_bundle).model, "x"))


def test_the_golden_check_catches_features_that_do_not_match_their_raw_input(onnx_bundle):
    def skew(d):  # the model inputs no longer what the spec makes of the raw image
        d["golden"]["vectors"][0]["inputs"]["input"][0][5] += 0.01

    b = bundle_fmt.read(_repack(onnx_bundle, skew))
    with pytest.raises(ModelLoadError, match=r"golden vector 0: features from the raw input differ .* by 0\.01"):
        golden_check(load_model(b.manifest, b.model, "x"))

    def out_of_range(d):
        d["golden"]["vectors"][1]["raw"][0][0][0] = 99.0

    b = bundle_fmt.read(_repack(onnx_bundle, out_of_range))
    with pytest.raises(ModelLoadError, match=r"golden vector 1: the feature spec refused the raw input: .*outside \[0, 16\]"):
        golden_check(load_model(b.manifest, b.model, "x"))


def test_a_spec_that_cannot_feed_the_model_is_refused_at_read(onnx_bundle):
    def wrong_shape(d):
        d["features"]["steps"][-1] = {"op": "reshape", "shape": [2, 32]}

    with pytest.raises(Exception, match=r"the steps make items of shape \[2, 32\]"):
        _repack(onnx_bundle, wrong_shape)


def test_bundles_without_features_keep_working(onnx_bundle):
    """An older bundle (no ``features``): apps send model inputs as before; raw is refused clearly."""

    def legacy(d):
        del d["features"]
        for v in d["golden"]["vectors"]:
            v.pop("raw", None)
            v.pop("batch", None)
        d["preprocessing"] = {"scale": "pixel / 16"}

    data = _repack(onnx_bundle, legacy)
    m = bundle_fmt.read(data).manifest
    assert m.features is None and "features" not in json.loads(m.to_json())
    model = load_model(m, bundle_fmt.read(data).model, "x")
    golden_check(model)
    with pytest.raises(ValueError, match="has no feature spec: send model inputs, not raw"):
        model.featurize([[0.0] * 8] * 8)


@pytest.mark.slow
def test_zero_skew_between_the_agent_process_and_the_pipeline(mosquitto, tmp_path, onnx_bundle):
    lab = Lab(tmp_path / "lab")
    device = "skew-dev"
    watch = Watcher(mosquitto.host, mosquitto.port, device_topic(device, Kind.EVENTS))
    agent = lab.start_agent(tmp_path, device, mosquitto)
    try:
        watch.publish(device_topic(device, Kind.DESIRED), lab.desired(device, lab.publish(onnx_bundle)), retain=True)
        watch.wait_for(lambda m: m.get("kind") == "ota.committed", "/events")
        raw, _ = load_digits_raw()
        rng = np.random.default_rng(7)
        raw = np.clip(raw[:200] + rng.normal(0, 1.5, raw[:200].shape), 0, 16).astype(np.float32)  # off-grid values too

        # the pipeline's path: the spec from the bundle, then the model
        b = bundle_fmt.read(onnx_bundle)
        spec = b.manifest.features
        assert spec is not None
        pipeline_inputs = spec.transform(raw)
        model = load_model(b.manifest, b.model, hashlib.sha256(onnx_bundle).hexdigest())
        pipeline_out = np.concatenate([model.predict(pipeline_inputs[i : i + 1])["probs"] for i in range(len(raw))])

        with AgentClient(agent.socket_path) as c:
            info = c.info()["models"]["production"]
            assert info["features"]["version"] == "digits-8x8-v1" and info["features"]["input"]["shape"] == [8, 8]
            feats = c.features(raw)  # the agent's own raw -> feature step, as a binary frame
            batch = c.predict_batch(raw.reshape(len(raw), 1, 8, 8), raw=True)
            one_json = c.predict(raw[3].tolist(), raw=True)
            one_frame = c.predict_array(raw[4], raw=True)
            refused = c.predict(np.full((8, 8), 17.0).tolist(), raw=True)
            plain = c.predict(pipeline_inputs[5:6].tolist())  # model inputs still work beside raw ones
        assert feats["ok"] and feats["features_version"] == "digits-8x8-v1" and feats["batch"] == {}
        agent_inputs = feats["inputs"]["input"]
        assert agent_inputs.dtype == np.float32
        np.testing.assert_array_equal(agent_inputs, pipeline_inputs)  # identical model inputs: zero skew
        assert batch["ok"] and batch["outputs"]["probs"].shape == (200, 1, 10)
        np.testing.assert_array_equal(batch["outputs"]["probs"][:, 0], pipeline_out)  # identical outputs
        np.testing.assert_array_equal(np.asarray(one_json["outputs"]["probs"], np.float32), pipeline_out[3:4])
        np.testing.assert_array_equal(one_frame["outputs"]["probs"], pipeline_out[4:5])
        assert not refused["ok"] and refused["error"].startswith("bad input: feature 0: 8 value(s) outside [0, 16]")
        np.testing.assert_array_equal(np.asarray(plain["outputs"]["probs"], np.float32), pipeline_out[5:6])

        # batch features: the device is the online store. A dark level for this device arrives in the
        # signed desired state (a value in force now, and one that starts later); the agent joins the one
        # in force, the pipeline joins the same history point-in-time, and both make the same inputs.
        now = datetime.now(timezone.utc)
        history = [
            BatchFeatureValue("dark_level", 1.0, now - timedelta(minutes=1), None, "cohort:north"),
            BatchFeatureValue("dark_level", 2.0, now - timedelta(seconds=5), None, f"device:{device}"),
            BatchFeatureValue("dark_level", 9.0, now + timedelta(days=1), None, f"device:{device}"),
        ]
        a = lab.assignment(onnx_bundle)
        envelope = lab.director.sign_desired(device, 99, {"production": a}, 3600, features=history)
        watch.publish(device_topic(device, Kind.DESIRED), canonical_json(envelope), retain=True)
        deadline = time.monotonic() + 30
        with AgentClient(agent.socket_path) as c:
            while (feats := c.features(raw))["batch"] != {"dark_level": 2.0}:
                assert time.monotonic() < deadline, f"the agent never joined the delivered dark level: {feats}"
                time.sleep(0.1)
            batch = c.predict_batch(raw.reshape(len(raw), 1, 8, 8), raw=True)
            status = c.call({"op": "status"})
        (joined,) = join_batch([(device, "north", datetime.now(timezone.utc))], history)
        assert joined == {"dark_level": 2.0}  # not the value set for later: no leakage from the future
        pipeline_inputs = spec.transform(raw, joined)
        np.testing.assert_array_equal(feats["inputs"]["input"], pipeline_inputs)
        assert not np.array_equal(pipeline_inputs, spec.transform(raw))  # the join changed the inputs
        pipeline_out = np.concatenate([model.predict(pipeline_inputs[i : i + 1])["probs"] for i in range(len(raw))])
        np.testing.assert_array_equal(batch["outputs"]["probs"][:, 0], pipeline_out)
        assert status["batch_features"]["in_force"] == {"dark_level": 2.0}
    finally:
        watch.close()
        agent.stop()
        lab.close()


def test_a_shadow_model_makes_its_own_features_from_raw_inputs(mosquitto, tmp_path, onnx_bundle):
    """A candidate trained on a newer spec runs in shadow: for production requests sent raw, it gets the
    raw item through its own spec, not production's model inputs."""
    from agent.config import parse_config
    from agent.daemon import Agent
    from firmware_sim.modelgen import golden_raw_vectors
    from firmware_sim.telemetry_rx import director_key_hex

    newer = json.loads(json.dumps(DIGITS_FEATURES))
    newer["version"] = "digits-8x8-v2"
    newer["steps"][0]["std"] = 8  # a brighter scale: other model inputs from the same raw image
    b = bundle_fmt.read(onnx_bundle)
    probe = load_model(b.manifest, b.model, hashlib.sha256(onnx_bundle).hexdigest())

    def v2(d):
        d["features"] = newer
        d["version"] = 2
        d["golden"]["vectors"] = golden_raw_vectors(lambda x: probe.predict(x)["probs"], 2, newer)

    shadow_bundle = _repack(onnx_bundle, v2)
    sb = bundle_fmt.read(shadow_bundle)
    cfg = parse_config(
        {
            "device_id": "shadow-raw", "data_dir": str(tmp_path / "agent"), "director_public_keys": [director_key_hex()],
            "broker": {"host": mosquitto.host, "port": mosquitto.port}, "telemetry": {"window_s": 3600},
        }
    )  # fmt: skip
    agent = Agent(cfg)
    agent.host.swap("production", probe)
    agent.host.swap("shadow", load_model(sb.manifest, sb.model, hashlib.sha256(shadow_bundle).hexdigest()))
    seen: list = []
    agent.host.observers.append(lambda rec: seen.append(rec) if rec.role == "shadow" and rec.outputs is not None else None)
    agent.start()
    try:
        raw, _ = load_digits_raw()
        with AgentClient(cfg.socket_path) as c:
            for i in range(3):
                assert c.predict_array(raw[i], raw=True)["ok"]
        deadline = time.monotonic() + 20
        while len(seen) < 3:
            agent.telemetry.flush()
            assert time.monotonic() < deadline, "the shadow model never ran"
            time.sleep(0.05)
        spec_v2 = FeatureSpec.from_dict(newer)
        for i, rec in enumerate(seen[:3]):
            np.testing.assert_array_equal(rec.inputs["input"], spec_v2.transform(raw[i : i + 1]))
    finally:
        agent.stop()


def test_the_controller_refuses_a_bundle_whose_features_do_not_match_their_raw_input(tmp_path, onnx_bundle):
    from tests.controller_app import running_api, settings_for

    def skew(d):
        d["golden"]["vectors"][1]["inputs"]["input"][0][0] += 0.5

    with running_api(settings_for(tmp_path, f"sqlite:///{tmp_path}/c.db")) as api:
        r = api.admin.post("/v1/models", content=_repack(onnx_bundle, skew))
        assert r.status_code == 422 and "golden vector 1: features from the raw input differ" in r.text, r.text
        assert api.admin.post("/v1/models", content=onnx_bundle).status_code == 201
