"""Scenario files, hardware profiles and the camera: strict reading, clear errors, real effects."""

from __future__ import annotations

import time

import numpy as np
import pytest

from agent.runtime import LoadedModel, ModelLoadError
from firmware_sim.profiles import PROFILES, adapter, profile
from firmware_sim.scenario import SCENARIO_DIR, ScenarioError, load, parse
from firmware_sim.sensors import Camera, Drift, apply_drift

pytestmark = pytest.mark.unit

BASE = {
    "name": "t",
    "fleet": [{"group": "main", "devices": 2}],
    "timeline": [{"at": 0, "assign": 1}],
    "checks": ["verified_model"],
}


def with_(**kw: object) -> dict[str, object]:
    return {**BASE, **kw}


@pytest.mark.parametrize("path", sorted(SCENARIO_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_scenario_reads(path):
    sc = load(str(path))
    assert sc.devices >= 1 and sc.checks


def test_a_minimal_scenario_reads_with_defaults():
    sc = parse(BASE)
    assert sc.groups[0].processes == 1 and sc.groups[0].profiles.keys() == PROFILES.keys()
    assert sc.timeline[0].action == "assign" and sc.timeline[0].args == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (with_(fleet=[{"group": "main", "devices": 2, "colour": "red"}]), "fleet[0]: unknown key 'colour'"),
        (with_(fleet=[{"group": "main", "devices": 2, "profiles": {"rpi9": 1}}]), "unknown key 'rpi9'"),
        (with_(timeline=[{"at": 0, "fault": {"partition": {"group": "nope", "duration_s": 5}}}]), "expected one of ['main']"),
        (with_(timeline=[{"at": 0, "fault": {"meteor": {}}}]), "unknown key 'meteor'"),
        (with_(timeline=[{"at": 5, "assign": 1}, {"at": 1, "assign": 2}]), "in order of 'at'"),
        (with_(timeline=[{"at": 0, "assign": 1, "drift": {"kind": "noise"}}]), "exactly one action"),
        (with_(timeline=[{"at": 0, "drift": {"kind": "fog"}}]), "expected one of none, brightness"),
        (with_(checks=["all_good"]), "unknown check 'all_good'"),
        (with_(fleet=[{"group": "main", "devices": 0}]), "devices: expected a number within 1..100000, got 0"),
        (with_(fleet=[{"group": "a", "devices": 1}, {"group": "a", "devices": 1}]), "group names must differ"),
        (with_(timeline=[{"at": 0, "fault": {"broker_outage": {"mode": "explode"}}}]), "'restart' or 'hang'"),
    ],
)
def test_bad_scenarios_are_refused_naming_the_place(data, message):
    with pytest.raises(ScenarioError, match=None) as err:
        parse(data, "s.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("s.yaml")


def test_an_unknown_scenario_name_lists_the_known_ones():
    with pytest.raises(ScenarioError, match="broker-outage"):
        load("no-such-scenario")


class _Runtime:
    name = "fake"

    def __init__(self, took: float) -> None:
        self.took = took

    def run(self, inputs):
        time.sleep(self.took)
        return {"y": np.zeros(1)}


def _model(sha: str, took: float = 0.0) -> LoadedModel:
    return LoadedModel(manifest=None, sha256=sha, runtime=_Runtime(took), loaded_at=0.0)  # type: ignore[arg-type]


def test_a_profile_slows_inference_by_its_factor():
    adapt = adapter(profile("rpi4"), {})
    slow = adapt(_model("a", took=0.01))
    t0 = time.perf_counter()
    slow.runtime.run({})
    assert time.perf_counter() - t0 >= 0.01 * profile("rpi4").cpu_slowdown * 0.9


def test_a_model_too_big_for_the_device_memory_fails_to_load():
    p = profile("rpi4")
    too_big = int((p.memory_mb + 1) * 1e6 / 3.0)
    with pytest.raises(ModelLoadError, match="out of memory on rpi4"):
        adapter(p, {"big": too_big})(_model("big"))
    assert adapter(profile("jetson-orin-nano"), {"big": too_big})(_model("big")).sha256 == "big"


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ValueError, match="jetson-orin-nano"):
        profile("pi-zero")


def test_drift_changes_what_the_camera_sees_and_keeps_the_labels():
    x = np.full((4, 64), 0.2, np.float32)
    rng = np.random.default_rng(0)
    assert np.allclose(apply_drift(x, Drift("brightness", 0.5), rng), 0.7)
    assert np.allclose(apply_drift(x, Drift("contrast", 1.0), rng), 0.5)
    assert np.array_equal(apply_drift(x, Drift(), rng), x)
    y = np.arange(10).repeat(10)
    cam = Camera(np.zeros((100, 64), np.float32), y, seed=1)
    cam.drift = Drift("classes", 1.0)
    assert all(cam.frame()[1] < 5 for _ in range(50))
    with pytest.raises(ValueError, match="within 0..1"):
        Drift("noise", 2.0)


def test_an_aged_camera_is_the_pipelines_aged_sensor_and_raw_frames_become_the_same_model_inputs():
    from controller.pipeline.demo import AGED_SENSOR, degrade
    from firmware_sim.modelgen import DIGITS_FEATURES, load_digits
    from shared.features import FeatureSpec

    x, y = load_digits()
    aged = apply_drift(x[:5], Drift("aged", 1.0), np.random.default_rng(3))
    seed = int(np.random.default_rng(3).integers(2**31))
    assert np.allclose(aged, degrade(x[:5] * 16, AGED_SENSOR, seed=seed) / 16, atol=1e-6)
    assert np.allclose(apply_drift(x[:5], Drift("aged", 0.0), np.random.default_rng(3)), x[:5], atol=1e-6)
    assert np.abs(aged - x[:5]).mean() > 0.05  # it changes what the camera sees
    spec = FeatureSpec.from_dict(DIGITS_FEATURES)
    for drift in (Drift(), Drift("aged", 1.0)):
        a, b = Camera(x, y, seed=4), Camera(x, y, seed=4)
        a.drift = b.drift = drift
        raw, label = a.raw_frame()
        frame, same = b.frame()
        assert raw.shape == (8, 8) and raw.min() >= 0 and raw.max() <= 16 and label == same
        assert np.allclose(spec.transform(raw[np.newaxis]), frame, atol=1e-6)  # the agent's feature spec: the same inputs
