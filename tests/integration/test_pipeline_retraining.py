"""Retraining end to end in a real controller (real database, real ingest, real capture route, real TensorFlow):
a sensor ages in one cohort → monitoring raises a drift alert → the leader's pipeline job decides to retrain →
a blessed int8 model is registered with its lineage and an approval request → the next trigger inside the
cooldown is refused with its reason → once an approver approves, a rollout to the cohort starts.

Devices upload captured samples (labelled by their local apps) through ``POST /v1/capture/{id}``, signed
with their keys; their telemetry windows go through ``TelemetryIngest`` as from the broker. The leader's
jobs are called as the leader calls them, at a fixed ``now``; the run itself goes through the in-process
runner's thread.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from controller.core.leader import LeaderContext
from controller.core.tables import AuditEntry, ModelVersion, MonitorAlert, PipelineRun
from controller.pipeline import demo, run, signals, step
from controller.pipeline.evaluate import runtime_predictor
from controller.pipeline.train import TrainParams
from controller.telemetry.decode import decode_telemetry
from firmware_sim.windows import role_summary, telemetry_message
from shared import bundle as bundle_fmt
from shared.features import FeatureSpec
from tests import pipelinelab
from tests.controller_app import ADMIN_TOKEN, running_api, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
W = 600  # policy window, seconds
TW = 60  # telemetry window, seconds
NOW = (int(time.time()) // W) * W  # the leader's clock in this test: a policy window boundary, just past
DAY = 86400
AGED, FRESH = ("dev-0", "dev-2", "dev-4"), ("dev-1", "dev-3", "dev-5")


@pytest.fixture(scope="module")
def incumbent(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """v1: the pipeline's own first model, trained on clean data."""
    lab = pipelinelab.fleet()
    base = tmp_path_factory.mktemp("incumbent")
    pipelinelab.capture(lab, base / "capture", start=NOW - 2 * DAY, end=NOW - DAY, per_device=250, seed=7)
    from controller.pipeline import datasets

    datasets.export_captures(base / "capture", base / "datasets", lab.devices)
    spec = run.RunSpec(
        model="digits",
        version=1,
        parent_version=None,
        n_classes=10,
        params=TrainParams(epochs=8),
        feature_spec=demo.feature_spec(),
    )
    res = run.execute(spec, base / "datasets", now=NOW - DAY)
    assert res.state == "blessed" and res.bundle is not None, res.reasons
    return res.bundle


@pytest.fixture
def api(tmp_path, database_url, incumbent):
    settings = settings_for(tmp_path, database_url).model_copy(
        update={
            "pipeline_enabled": True,
            "pipeline_window_s": W,
            "pipeline_drift_windows": 2,
            "pipeline_drift_device_share": 0.6,  # the whole fleet (half of it aged) does not trigger; the aged cohort does
            "pipeline_min_device_samples": 20,
            "pipeline_cooldown_s": 3600.0,
            "pipeline_epochs": 8,
            "pipeline_recent_s": 3 * W,
            "pipeline_reference_min_rows": 40,  # the aged cohort's last window holds ~55 training rows
            "pipeline_min_new_labels": 0,
            "telemetry_window_s": TW,
        }
    )
    with running_api(settings) as api:
        assert api.admin.post("/v1/models", content=incumbent).status_code == 201
        api.make("ann", "approver")
        yield api


def send_windows(
    api, ref: dict, predict, lab: pipelinelab.Lab, spec: FeatureSpec, *, version: int = 1, start: float = NOW - 3 * TW,
    devices: tuple[str, ...] = AGED + FRESH, seq: int = 10,
) -> None:  # fmt: skip
    """Three telemetry windows of production traffic per device from ``start``; the aged cohort's sensors have aged."""
    tele = api.app.state.telemetry
    acked: list[int] = []
    tele.start()
    n = 0
    for k in range(3, 0, -1):
        ws = start + (3 - k) * TW
        for d, device in enumerate(devices):
            _, raw, _ = pipelinelab.samples_for(
                lab, device, start=ws, end=ws + TW, n=120, drifted=device in AGED, seed=seq + k * 10 + d, first_id=0
            )
            x = np.asarray(spec.transform(raw.reshape(-1, 8, 8)), dtype=np.float32).reshape(len(raw), -1)
            probs = np.eye(10, dtype=np.float32)[predict(x)]
            summary = role_summary(ref, "digits", version, x, probs)
            msg = telemetry_message(device, seq + k * 10 + d, ws + 1, TW, {"production": summary})
            tele.submit(decode_telemetry(json.dumps(msg).encode()), lambda: acked.append(1))
            n += 1
    deadline = time.monotonic() + 30
    while len(acked) < n:
        assert time.monotonic() < deadline, "ingest did not acknowledge the windows"
        time.sleep(0.02)
    tele.stop()


def test_drift_is_detected_retraining_triggered_and_a_blessed_int8_model_registered_for_approval(api, incumbent) -> None:
    lab = pipelinelab.fleet()
    devices = {d: pipelinelab.CaptureDevice(api.admin, d, "pi4" if d in AGED else "pi5") for d in AGED + FRESH}
    for name, members in (("aged", AGED), ("fresh", FRESH)):
        assert api.admin.post("/v1/cohorts", json={"name": name, "members": list(members)}).status_code == 201
    # Captured samples: a day of clean data, then the last three policy windows with the aged cohort's sensors aged.
    for d, (device, dev) in enumerate(sorted(devices.items())):
        clean, _, _ = pipelinelab.samples_for(
            lab, device, start=NOW - DAY, end=NOW - 3 * W, n=250, drifted=False, seed=d, first_id=1
        )
        dev.upload(api.admin, clean, 1)
        late, _, _ = pipelinelab.samples_for(
            lab, device, start=NOW - 3 * W, end=NOW, n=90, drifted=device in AGED, seed=50 + d, first_id=1000
        )
        dev.upload(api.admin, late, 1000)

    manifest = bundle_fmt.read(incumbent).manifest
    spec = manifest.features
    assert spec is not None
    predict = runtime_predictor(incumbent, lambda x: x)
    send_windows(api, manifest.reference, predict, lab, spec)

    engine = api.app.state.engine
    monitor = api.app.state.monitor  # detected: monitoring's drift alert, once the windows settled (agents batch them)
    monitor(LeaderContext(engine, 1, lambda: True), now=NOW + 1 + monitor.settle_windows * monitor.window_s)
    with Session(engine) as s:
        firing = {
            a.cohort for a in s.exec(select(MonitorAlert).where(MonitorAlert.kind == "drift", MonitorAlert.state == "firing"))
        }
    assert "aged" in firing and "fresh" not in firing

    job = api.app.state.pipeline
    decided = job.tick(engine, now=NOW + 5)  # the leader's pipeline job: triggered
    retrain = [d for d in decided if d.action == "retrain"]
    assert [(d.trigger, d.evidence["triggers"][0]["kind"]) for d in retrain] == [("drift", "drift")], [d.reason for d in decided]
    windows = retrain[0].evidence["triggers"][0]["windows"]
    assert [(w["drifted"], w["judged"]) for w in windows] == [(3, 3), (3, 3)]
    job.runner.join(600)
    collected = job.tick(engine, now=NOW + 10)  # collects the finished run: registered, waiting for approval

    with Session(engine) as s:
        [r] = s.exec(select(PipelineRun)).all()
        assert (r.state, r.cohort, r.trigger, r.version, r.parent_version) == ("registered", "aged", "drift", 2, 1), r.reason
        mv = s.exec(select(ModelVersion).where(ModelVersion.name == "digits", ModelVersion.version == 2)).one()
        assert mv.approved_by is None and mv.registered_by == "pipeline" and mv.runtime == "tflite"
        lin = mv.manifest["lineage"]
        assert lin["dataset_sha256"] == r.dataset_sha256 and lin["parent_version"] == 1
        assert lin["feature_spec_version"] == spec.version and lin["code_version"] and lin["training_params"]["epochs"] == 8
        assert lin["trigger"]["kind"] == "drift" and lin["evaluation"]["verdict"]["blessed"]
        assert lin["metrics"]["accuracy_int8"] > 0.9
        actions = [e.action for e in s.exec(select(AuditEntry).order_by(AuditEntry.seq)).all()]
    after = actions[actions.index("pipeline.retrain") :]  # v1 was registered by the admin before
    assert after.index("model.registered") < after.index("pipeline.approval_requested")

    pending = api.admin.get("/v1/approvals").json()
    [req] = [p for p in pending if p["version"] == 2]
    ev = req["evidence"]
    assert ev["pipeline_run"] == r.id and ev["verdict"]["target"] == "fleet/cohort:aged"
    aged = next(s for s in ev["slices"] if s["set"] == "fleet" and s["slice"] == "cohort:aged")
    assert aged["candidate"] - aged["incumbent"] > 0.05
    with TestClient(api.app) as console:  # the web console shows the same evidence beside the approve form
        assert console.post("/ui/login", data={"token": ADMIN_TOKEN, "next": "/ui/"}, follow_redirects=False).status_code == 303
        page = console.get("/ui/models").text
    assert "evidence: fleet/cohort:aged:" in page and "no judged slice worse" in page

    # A second trigger inside the cooldown (the drift is still there, in the same tick that collected the run):
    # the policy refuses and says why; the standing refusal is recorded once, not every tick.
    again = [d for d in collected if d.action != "none"]
    assert [(d.action, d.trigger, d.rule) for d in again] == [("skip", "drift", "cooldown")]
    assert "refused: cooldown" in again[0].reason and "may start in" in again[0].reason
    assert job.tick(engine, now=NOW + 60) == []
    manual = api.admin.post("/v1/pipeline/runs", json={"model": "digits", "cohort": "aged", "reason": "try again"})
    assert manual.status_code == 409 and "cooldown" in manual.json()["detail"], manual.text
    decisions = api.admin.get("/v1/pipeline/decisions", params={"model": "digits", "cohort": "aged"}).json()
    assert [(d["decision"], d["trigger"], d["actor"]) for d in decisions] == [
        ("skip", "manual", "admin"),
        ("skip", "drift", "leader"),
        ("retrain", "drift", "leader"),
    ]
    assert decisions[-1]["run_id"] == r.id and decisions[0]["evidence"]["rule"] == "cooldown"

    # Approved by a human: the pipeline hands over to a rollout of v2 to the aged cohort.
    assert api.as_("ann").post("/v1/approvals", json={"model": "digits", "version": 2, "reason": "evaluation"}).status_code == 201
    job.tick(engine, now=NOW + 180)
    shown = api.admin.get(f"/v1/pipeline/runs/{r.id}").json()
    assert shown["state"] == "rolled_out" and shown["rollout_id"], shown["reason"]
    rollout = api.admin.get(f"/v1/rollouts/{shown['rollout_id']}").json()
    assert (rollout["cohort"], rollout["candidate_version"], rollout["baseline_version"]) == ("aged", 2, 1)
    assert any("train done" in line for line in shown["progress"])

    # v2's drift reference is the aged cohort's inputs since the drift (ADR 0079): the policy window the drift was
    # found in is left out, as it may hold inputs from before; what the aged cohort sends is no drift for v2.
    lin = mv.manifest["lineage"]["reference"]
    assert (lin["source"], lin["cohort"], lin["drift_since"]) == ("recent", "aged", NOW - W), lin
    assert lin["since"] >= NOW - W and lin["rows"] >= 40
    v2 = signals.Incumbent(2, mv.manifest)
    assert [(w.drifted, w.judged) for w in signals.device_drift(job.datasets_root, "digits", "aged", v2, NOW, W, 2, 20)] == [
        (0, 3),
        (0, 3),
    ]
    # The aged devices run v2 and keep sending aged frames: v1's drift alert resolves and none opens for v2.
    v2_predict = runtime_predictor((job.run_dir(r.id) / step.CANDIDATE).read_bytes(), lambda x: x)
    send_windows(api, mv.manifest["reference"], v2_predict, lab, spec, version=2, start=NOW, devices=AGED, seq=100)
    monitor(LeaderContext(engine, 1, lambda: True), now=NOW + 3 * TW + 1 + monitor.settle_windows * monitor.window_s)
    with Session(engine) as s:
        alerts = {(a.key, a.state) for a in s.exec(select(MonitorAlert).where(MonitorAlert.kind == "drift"))}
    assert not [k for k, state in alerts if state == "firing"], alerts
    assert not [k for k, _ in alerts if k.endswith("/v2")], alerts  # v2's inputs never drifted from its reference


def test_a_run_whose_runner_fails_is_recorded_and_the_next_waits_twice_as_long(api) -> None:
    """No loop: a failed run counts as a run without a blessed model, and the cooldown doubles."""
    from controller.pipeline.runner import KubernetesRunner, RunnerError

    def refuse(manifest: dict) -> None:
        raise RunnerError("kubectl apply failed: the cluster said no")

    job = api.app.state.pipeline
    job.runner = KubernetesRunner(data_dir=job.data_dir, submit=refuse)
    engine = api.app.state.engine
    assert api.admin.post("/v1/pipeline/runs", json={"model": "digits", "cohort": "nowhere", "reason": "x"}).status_code == 404
    r = api.admin.post("/v1/pipeline/runs", json={"model": "digits", "reason": "new lens"})
    assert r.status_code == 201 and r.json()["state"] == "running", r.text
    assert (job.run_dir(r.json()["id"]) / "job.json").exists()  # the rendered, validated Job is kept with the run
    job.tick(engine)
    run = api.admin.get(f"/v1/pipeline/runs/{r.json()['id']}").json()
    assert run["state"] == "failed" and "kubectl apply failed: the cluster said no" in run["reason"]
    again = api.admin.post("/v1/pipeline/runs", json={"model": "digits", "reason": "try again"})
    assert again.status_code == 409
    assert "backed off x2 after 1 run(s) without a blessed model" in again.json()["detail"]


def test_enough_new_labels_since_the_incumbent_was_registered_trigger_a_run(api) -> None:
    from dataclasses import replace

    from controller.pipeline.runner import KubernetesRunner

    lab = pipelinelab.fleet()
    dev = pipelinelab.CaptureDevice(api.admin, "dev-0")
    t = time.time()  # captured after the incumbent was registered: new labels
    rows, _, _ = pipelinelab.samples_for(lab, "dev-0", start=t, end=t + 10, n=150, drifted=False, seed=3, first_id=1)
    dev.upload(api.admin, rows, 1)  # 120 labelled (every fifth is not)
    relabelled = [r for r in rows if r["label"] is not None][:20]
    dev.upload(api.admin, relabelled, 1001)  # the app's feedback came twice for 20 of them: captured again, not new
    job = api.app.state.pipeline
    job.config = replace(job.config, min_new_labels=100)
    job.runner = KubernetesRunner(data_dir=job.data_dir, submit=lambda manifest: None)  # started, never finished here
    engine = api.app.state.engine
    with Session(engine) as s:
        job.export(s)
        d = job.consider(s, "digits", "*", time.time())
    assert d is not None and (d.action, d.trigger) == ("retrain", "data"), d
    assert d.evidence["triggers"][0]["new_labels"] == 120
    with Session(engine) as s:
        again = job.consider(s, "digits", "*", time.time())
    assert again is not None and (again.action, again.rule) == ("skip", "running")  # one run at a time


def test_a_measured_accuracy_drop_in_the_fleets_telemetry_triggers_a_run(api, incumbent) -> None:
    """The accuracy trigger through its real signal: labels counted in the devices' telemetry windows (monitoring's
    measured accuracy) against the incumbent's accuracy recorded at registration; no captures, so no drift."""
    from controller.pipeline.runner import KubernetesRunner

    manifest = bundle_fmt.read(incumbent).manifest
    baseline = manifest.lineage["metrics"]["accuracy_int8"]
    x = np.full((100, 64), 0.5, dtype=np.float32)
    probs = np.eye(10, dtype=np.float32)[np.arange(100) % 10]
    for device in FRESH:
        assert api.admin.post("/v1/devices", json={"id": device}).status_code == 201
    tele, acked = api.app.state.telemetry, []
    tele.start()
    for k in range(3, 0, -1):
        for d, device in enumerate(FRESH):
            summary = role_summary(manifest.reference, "digits", 1, x, probs)
            summary["labels"] = {"count": 100, "correct": 70}  # the apps' feedback: 70 % right
            msg = telemetry_message(device, 10 + k * 10 + d, NOW - k * TW + 1, TW, {"production": summary})
            tele.submit(decode_telemetry(json.dumps(msg).encode()), lambda: acked.append(1))
    deadline = time.monotonic() + 30
    while len(acked) < 9:
        assert time.monotonic() < deadline, "ingest did not acknowledge the windows"
        time.sleep(0.02)
    tele.stop()
    job = api.app.state.pipeline
    job.runner = KubernetesRunner(data_dir=job.data_dir, submit=lambda manifest: None)  # started, never finished here
    with Session(api.app.state.engine) as s:
        d = job.consider(s, "digits", "*", NOW + 5)
    assert d is not None and (d.action, d.trigger) == ("retrain", "accuracy"), d
    trig = d.evidence["triggers"][0]
    assert trig["source"] == "measured" and trig["accuracy"] == pytest.approx(0.7) and trig["baseline"] == baseline
    assert "measured accuracy 70.00% is" in d.reason and "below the incumbent's" in d.reason
