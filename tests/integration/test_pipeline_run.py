"""Pipeline runs with real TensorFlow, real int8 conversion and the agent's runtime: blessing, lineage,
zero skew between the pipeline's inputs and the spec the bundle carries, reproducibility, MLflow.

One incumbent and one retrained candidate are trained once per session (a few
seconds each) and shared by the tests that only read them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from controller.monitoring.drift import drift_report, reference_from_manifest
from controller.pipeline import datasets, demo, run, step
from controller.pipeline.evaluate import BlessRules
from controller.pipeline.train import TrainParams
from shared import bundle as bundle_fmt
from shared.features import FeatureSpec
from shared.telemetry import bin_index
from tests import pipelinelab

pytestmark = [pytest.mark.integration]
T0 = 1_790_000_000.0
DAY = 86400.0
PARAMS = TrainParams(epochs=20)  # the candidate learns both cohorts well enough to match the incumbent on the fresh one


def make_root(base: Path) -> tuple[Path, pipelinelab.Lab]:
    lab = pipelinelab.fleet()
    cap = base / "capture"
    pipelinelab.capture(lab, cap, start=T0, end=T0 + DAY, per_device=250, seed=1)
    pipelinelab.capture(lab, cap, start=T0 + DAY, end=T0 + 2 * DAY, per_device=250, drift_at=T0 + DAY, seed=2, first_id=1000)
    root = base / "datasets"
    datasets.export_captures(cap, root, lab.devices)
    return root, lab


def first_spec() -> run.RunSpec:
    return run.RunSpec(
        model="digits",
        version=1,
        parent_version=None,
        n_classes=10,
        params=PARAMS,
        feature_spec=demo.feature_spec(),
        until=T0 + DAY,
    )


def retrain_spec(**kw: object) -> run.RunSpec:
    args = {"model": "digits", "version": 2, "parent_version": 1, "n_classes": 10, "cohort": "aged", "params": PARAMS}
    args["trigger"] = {"kind": "drift", "reason": "test"}
    return run.RunSpec(**{**args, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root, lab = make_root(tmp_path_factory.mktemp("pipeline"))
    first = run.execute(first_spec(), root, now=T0 + DAY)
    assert first.state == "blessed", first.reasons
    assert first.bundle is not None
    second = run.execute(retrain_spec(), root, incumbent=first.bundle, now=T0 + 2 * DAY)
    return {"root": root, "lab": lab, "first": first, "second": second}


def test_a_first_model_is_blessed_on_its_own_accuracy(runs) -> None:
    first = runs["first"]
    assert first.reasons == ["no incumbent: the first model of its name is blessed on its own accuracy"]
    assert first.metrics["accuracy_int8"] > 0.9


def test_the_retrained_int8_model_is_blessed_against_the_incumbent_per_slice(runs) -> None:
    res = runs["second"]
    assert res.state == "blessed", res.reasons
    slices = {(s["set"], s["slice"]): s for s in res.evaluation["slices"]}
    assert {k[1] for k in slices} >= {"all", "cohort:aged", "cohort:fresh", "hardware:pi4", "hardware:pi5"}
    aged = slices[("fleet", "cohort:aged")]
    assert aged["candidate"] - aged["incumbent"] > 0.05  # the drifted cohort recovers
    assert res.evaluation["verdict"]["target"] == "fleet/cohort:aged"
    m = res.metrics
    assert (m["accuracy_float"] - m["accuracy_int8"]) * 100 <= 1.0
    assert m["int8_size_ratio"] <= 0.3


def test_the_bundle_carries_lineage_features_reference_and_golden_vectors(runs) -> None:
    res = runs["second"]
    b = bundle_fmt.read(res.bundle)
    m = b.manifest
    assert (m.name, m.version, m.runtime) == ("digits", 2, "tflite")
    assert m.inputs[0].dtype == "int8" and m.inputs[0].quantization is not None
    lin = m.lineage
    assert lin["dataset_sha256"] == res.dataset_sha256
    assert lin["parent_version"] == 1 and lin["trigger"]["kind"] == "drift"
    assert lin["feature_spec_version"] == FeatureSpec.from_dict(demo.feature_spec()).version
    assert lin["training_params"] == PARAMS.to_dict() and lin["code_version"]
    assert lin["evaluation"]["verdict"]["blessed"] is True and lin["metrics"] == res.metrics
    assert m.features == FeatureSpec.from_dict(demo.feature_spec())
    assert len(m.reference["features"]) == 64 and len(m.golden) == 4
    assert all(v.raw is not None for v in m.golden)  # the golden vectors cover the raw -> feature step
    assert "onnx" in lin["runtime_targets"] and res.onnx_bundle is not None
    assert bundle_fmt.read(res.onnx_bundle).manifest.runtime == "onnx"


def device_histograms(reference: dict, x: np.ndarray) -> dict[str, list[int]]:
    """Per-feature histograms of model inputs ``x`` over a reference's edges, binned as an agent bins them."""
    out = {}
    for i, f in enumerate(reference["features"]):
        counts = [0] * (len(f["bin_edges"]) + 1)
        for v in x[:, i]:
            counts[bin_index(f["bin_edges"], float(v))] += 1
        out[f["name"]] = counts
    return out


def test_the_retrained_bundle_s_drift_reference_is_the_drifted_world_it_was_made_for(runs) -> None:
    """After the retrained model is rolled out to the aged cohort, the aged camera's inputs are judged against what
    that model was made for: monitoring's drift test (``drift_report``, as the monitor job and the retraining
    policy run it) no longer flags them, while the incumbent's reference still does. Before ADR 0079 the reference
    came from all training rows, mostly captured before the drift, and flagged the new model's inputs too."""
    lab, first, second = runs["lab"], runs["first"], runs["second"]
    rng = np.random.default_rng(7)
    idx = rng.integers(0, len(lab.x), 600)
    aged = demo.degrade(lab.x[idx], demo.AGED_SENSOR, seed=4242)  # frames the aged cameras send next
    x = pipelinelab.SPEC.transform(aged.reshape(-1, 8, 8), validate=False).reshape(len(idx), -1)
    reports = {}
    for name, res in (("old", first), ("new", second)):
        reference = bundle_fmt.read(res.bundle).manifest.reference
        reports[name] = drift_report(reference_from_manifest(reference), {"features": device_histograms(reference, x)})
    old, new = reports["old"], reports["new"]
    assert old.dataset_drift and old.drift_share > old.thresholds["drift_share"], old.drift_share
    assert not new.dataset_drift and new.drift_share < new.thresholds["drift_share"], new.drift_share
    judged = [f for f in new.features if f.verdict != "insufficient"]
    assert len(judged) == 64
    assert sum(f.psi > f.psi_threshold for f in judged) <= 3, [(f.name, f.psi, f.psi_threshold) for f in judged]

    lin = bundle_fmt.read(second.bundle).manifest.lineage["reference"]
    assert (lin["source"], lin["cohort"], lin["recent_s"]) == ("recent", "aged", DAY)
    assert lin["since"] >= T0 + DAY and lin["until"] < T0 + 2 * DAY  # the aged camera's day, after the drift
    aged_train = second.metrics["train_rows"] // 4  # a quarter of the rows: the aged cohort's day after the drift
    assert abs(lin["rows"] - aged_train) < aged_train * 0.2, (lin["rows"], second.metrics["train_rows"])
    conf = bundle_fmt.read(second.bundle).manifest.reference["confidence"]
    assert sum(conf["counts"]) == second.metrics["train_rows"]  # the calibration keeps every training row


def test_zero_skew_the_spec_in_the_bundle_makes_the_inputs_the_pipeline_trained_on(runs) -> None:
    """Pipeline side of the skew test: the spec a device loads from the manifest turns raw samples into exactly
    the model inputs training and evaluation used (the agent side runs the same spec in the agent)."""
    res = runs["second"]
    ds = datasets.load(runs["root"], res.dataset_sha256)
    rows = np.arange(len(ds))
    trained = run.model_inputs(FeatureSpec.from_dict(demo.feature_spec()), ds, rows)
    shipped = bundle_fmt.read(res.bundle).manifest.features
    assert shipped is not None
    device = np.concatenate([shipped.transform(ds.raw[i].reshape(1, 8, 8)).reshape(1, -1) for i in rows])
    assert device.shape == trained.shape == (len(ds), 64)
    assert float(np.max(np.abs(device - trained))) == 0.0


def test_same_inputs_and_seed_give_the_same_dataset_hash_model_and_metrics(runs, tmp_path: Path) -> None:
    root, _ = make_root(tmp_path)  # the same captures, exported again elsewhere
    again = run.execute(retrain_spec(), root, incumbent=runs["first"].bundle, now=T0 + 2 * DAY)
    before = runs["second"]
    assert again.dataset_sha256 == before.dataset_sha256
    assert again.metrics == before.metrics
    assert again.evaluation == before.evaluation
    assert bundle_fmt.read(again.bundle).manifest.model_sha256 == bundle_fmt.read(before.bundle).manifest.model_sha256


def test_the_quality_gate_refuses_before_training(runs) -> None:
    res = run.execute(retrain_spec(gate={"min_labelled": 100_000}), runs["root"], incumbent=runs["first"].bundle)
    assert res.state == "refused"
    assert any(r.startswith("minimum size:") for r in res.reasons)
    assert not any(s["step"] == "train" for s in res.steps)


def test_a_candidate_that_does_not_improve_the_trigger_slice_is_not_blessed(runs) -> None:
    """The incumbent retrained on its own data for the fresh cohort: no better there, so not blessed, with the reason."""
    spec = retrain_spec(cohort="fresh", until=T0 + DAY, bless=BlessRules(min_gain=0.05))
    res = run.execute(spec, runs["root"], incumbent=runs["first"].bundle, now=T0 + DAY)
    assert res.state == "not_blessed"
    assert any("(the trigger's slice)" in r and "must improve by more than 5.00%" in r for r in res.reasons), res.reasons
    assert res.bundle is None


def test_a_run_folder_round_trip_with_mlflow_logging(runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Kubernetes Job runs (``python -m controller.pipeline.step``), in process, logging to an MLflow file store."""
    store = tmp_path / "mlruns"
    monkeypatch.setenv("EDGEFLEET_MLFLOW_TRACKING_URI", f"file://{store}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    folder = tmp_path / "run"
    spec = retrain_spec(gate={"min_labelled": 100_000}).to_dict()  # refused quickly: the folder protocol is under test
    step.prepare(folder, spec, datasets.labels_table([]), datasets.batch_table([]), runs["first"].bundle)
    summary = step.run_folder(folder, runs["root"])
    assert summary["state"] == "refused"
    assert json.loads((folder / step.RESULT).read_text())["state"] == "refused"
    assert step.progress_lines(folder)[-1].endswith(summary["reasons"][0]) or step.progress_lines(folder)
    tracking = summary["tracking"]
    assert tracking.get("run_id"), tracking
    logged = list(store.rglob("meta.yaml"))
    assert logged, "nothing written to the MLflow store"
    assert os.environ["EDGEFLEET_MLFLOW_TRACKING_URI"].startswith("file://")
    assert (
        hashlib.sha256(runs["first"].bundle).hexdigest() == hashlib.sha256((folder / "incumbent.bundle").read_bytes()).hexdigest()
    )
