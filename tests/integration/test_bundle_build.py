"""``edgefleet bundle build`` on real int8 models (ONNX and TFLite): the bundle it writes is accepted
by the controller, whose upload re-runs the golden vectors, and ``bundle inspect`` reads it back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from controller import cli
from firmware_sim.modelgen import float_onnx, load_digits, quantize_int8, train_softmax
from shared import bundle as bundle_fmt

pytestmark = [pytest.mark.integration]
FIXTURE = Path(__file__).parent.parent / "fixtures" / "digits_int8.tflite"


def invoke(*args: str) -> dict:
    r = CliRunner().invoke(cli.app, [*args, "--json"])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    x, y = load_digits()
    w, b = train_softmax(x, y, epochs=50)
    path = tmp_path_factory.mktemp("m") / "digits.onnx"
    path.write_bytes(quantize_int8(float_onnx(w, b), x[:100]))
    np.save(path.with_suffix(".npy"), x[:3])
    return path


def test_onnx_build_with_sample_inputs_then_inspect(onnx_model, tmp_path):
    out = tmp_path / "b.tar"
    lineage = json.dumps({"code_version": "abc123", "metrics": {"accuracy": 0.9}})
    info = invoke(
        "bundle", "build", str(onnx_model), "--name", "digits", "--version", "3", "--golden", str(onnx_model.with_suffix(".npy")),
        "--preprocessing", '{"scale": "pixel / 16"}', "--lineage", lineage, "-o", str(out),
    )  # fmt: skip
    b = bundle_fmt.read(out)
    assert info["golden"] == 3 and b.manifest.version == 3 and b.manifest.runtime == "onnx"
    assert b.manifest.inputs[0].name == "input" and b.manifest.preprocessing == {"scale": "pixel / 16"}
    assert b.manifest.lineage["code_version"] == "abc123"
    assert np.allclose(b.manifest.golden[0].inputs["input"], np.load(onnx_model.with_suffix(".npy"))[0:1])
    seen = invoke("bundle", "inspect", str(out))
    assert seen["golden_check"] == "ok" and seen["sha256"] == info["sha256"]


def test_onnx_build_with_a_feature_spec_and_raw_golden_samples(onnx_model, tmp_path):
    from firmware_sim.modelgen import DIGITS_FEATURES, load_digits_raw

    raw, _ = load_digits_raw()
    samples = tmp_path / "raw.npy"
    np.save(samples, raw[:2])
    out = tmp_path / "f.tar"
    info = invoke(
        "bundle", "build", str(onnx_model), "--name", "digits", "--version", "4", "--golden", str(samples),
        "--features", json.dumps(DIGITS_FEATURES), "-o", str(out),
    )  # fmt: skip
    m = bundle_fmt.read(out).manifest
    assert info["golden"] == 2 and m.features is not None and m.features.version == "digits-8x8-v1"
    assert np.array_equal(np.asarray(m.golden[1].raw), raw[1:2])
    assert np.allclose(m.golden[1].inputs["input"], raw[1:2].reshape(1, 64) / 16)
    assert invoke("bundle", "inspect", str(out))["golden_check"] == "ok"
    bad = CliRunner().invoke(cli.app, ["bundle", "build", str(onnx_model), "--name", "d", "--version", "1",
                                       "--features", '{"version": "x", "input": {"shape": [63]}}', "-o", str(out)])  # fmt: skip
    assert bad.exit_code != 0 and "the steps make items of shape [63]" in bad.stderr


def test_tflite_build_auto_golden_is_accepted_by_the_controller(tmp_path, mosquitto, monkeypatch):
    from fastapi.testclient import TestClient

    from controller.cli import common
    from tests.controller_app import ADMIN_TOKEN, running_api, settings_for

    out = tmp_path / "lite.tar"
    info = invoke(
        "bundle", "build", str(FIXTURE), "--name", "digits-lite", "--version", "1", "--golden-count", "2", "-o", str(out)
    )
    m = bundle_fmt.read(out).manifest
    assert m.runtime == "tflite" and m.inputs[0].dtype == "int8" and m.inputs[0].quantization is not None and len(m.golden) == 2
    with running_api(settings_for(tmp_path, f"sqlite:///{tmp_path}/b.db")) as api:
        monkeypatch.setattr(
            common, "client", lambda url, token: TestClient(api.app, headers={"Authorization": f"Bearer {token}"})
        )
        mv = invoke("models", "push", str(out), "--token", ADMIN_TOKEN)
    assert mv["name"] == "digits-lite" and mv["sha256"] == info["sha256"]


def test_a_tampered_bundle_fails_inspect(onnx_model, tmp_path):
    out = tmp_path / "b.tar"
    invoke("bundle", "build", str(onnx_model), "--name", "digits", "--version", "1", "-o", str(out))
    b = bundle_fmt.read(out)
    bad = b.manifest.to_dict()
    bad["golden"]["vectors"][0]["outputs"] = {
        k: (np.asarray(v) + 1).tolist() for k, v in bad["golden"]["vectors"][0]["outputs"].items()
    }
    from shared.manifest import Manifest

    out.write_bytes(bundle_fmt.pack(Manifest.from_dict(bad), b.model))
    r = CliRunner().invoke(cli.app, ["bundle", "inspect", str(out)])
    assert r.exit_code == 5 and "golden check failed: golden vector 0" in r.stderr and r.stderr.count("\n") == 1
