"""Experiments through the real API, the real ingester, the engine's looks and the CLI (real database and broker).

Telemetry windows go through ``TelemetryIngest`` (dedupe, per-device experiment
rows in the same transaction as the aggregates); the leader's job is called
directly so each look is deterministic.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from controller import cli
from controller.cli import common as cli_common
from controller.core.tables import AuditEntry, Device, Experiment, ExperimentDevice, ExperimentWindow, ModelVersion
from shared.messages import Telemetry
from shared.telemetry import N_LATENCY_BUCKETS, summary_shape
from tests.controller_app import ADMIN_TOKEN, running_api, settings_for

pytestmark = [pytest.mark.integration]
DEVICES = [f"exp-{i:03d}" for i in range(60)]
T0 = (int(time.time()) // 3600 - 24) * 3600  # window starts a day back: inside what the controller accepts


@pytest.fixture
def api(tmp_path, database_url, mosquitto, make_bundle):
    with running_api(settings_for(tmp_path, database_url, mosquitto.port)) as a:
        a.make("alice", "approver")
        for v in (1, 2):
            assert a.admin.post("/v1/models", content=make_bundle(v)).status_code == 201
            r = a.as_("alice").post("/v1/approvals", json={"model": "digits", "version": v, "reason": "eval"})
            assert r.status_code == 201, r.text
        for d in DEVICES:
            assert a.admin.post("/v1/devices", json={"id": d}).status_code == 201
        assert a.admin.post("/v1/cohorts", json={"name": "trial", "members": DEVICES}).status_code == 201
        yield a


def send_windows(app, rng, accuracy: dict[int, float], windows: int, labels: int = 40, seq0: int = 1, skip=()) -> None:
    """Each device reports ``windows`` windows of production telemetry for the version it was assigned."""
    ingest = app.state.telemetry
    done = threading.Semaphore(0)
    n = 0
    with Session(app.state.engine) as s:
        desired = {d.id: d.desired["production"]["version"] for d in s.exec(select(Device)).all()}
        shapes = {}  # the ingest takes summary shapes from each version's manifest
        for mv in s.exec(select(ModelVersion).where(ModelVersion.name == "digits")).all():
            outputs = mv.manifest.get("outputs") or [{}]
            shapes[mv.version] = summary_shape(mv.manifest.get("reference"), outputs[0].get("shape"))
    for w in range(windows):
        for d in DEVICES:
            if d in skip:
                continue
            v = desired[d]
            lat = [0] * N_LATENCY_BUCKETS
            lat[30] = 100
            summary = {
                "model": "digits", "version": v, "count": 100, "errors": 0, "samples": 100, "latency_ms": lat,
                "predictions": [10] * shapes[v][1], "features": {f: [0] * n for f, n in shapes[v][0].items()},
                "shadow": {"agree": 0, "disagree": 0},
                "labels": {"count": labels, "correct": int(rng.binomial(labels, accuracy[v]))},
            }  # fmt: skip
            msg = Telemetry(d, seq0 + w, time.time(), T0 + 60 * w, 60.0, roles={"production": summary})
            ingest.submit(msg, done.release)
            n += 1
    for _ in range(n):
        assert done.acquire(timeout=30), "telemetry windows not acknowledged"


def test_ab_experiment_decides_with_evidence_promotes_and_shows_in_the_cli(api, monkeypatch):
    app = api.app
    r = api.admin.post(
        "/v1/experiments",
        json={"name": "v2 vs v1", "cohort": "trial", "model": "digits", "min_devices": 5, "guardrails": ["error_rate"],
              "arms": [{"name": "a", "version": 1, "share": 0.5}, {"name": "b", "version": 2, "share": 0.5}]},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    exp = r.json()
    assert exp["state"] == "RUNNING" and exp["control"] == "a"
    with Session(app.state.engine) as s:
        arms = dict(s.exec(select(ExperimentDevice.device_id, ExperimentDevice.arm)).all())
        desired = {d.id: d.desired["production"]["version"] for d in s.exec(select(Device)).all()}
    assert set(arms) == set(DEVICES) and set(arms.values()) == {"a", "b"}
    assert all(desired[d] == (1 if arms[d] == "a" else 2) for d in DEVICES)
    # A second experiment on the same cohort is refused while this one runs.
    r = api.admin.post(
        "/v1/experiments",
        json={"name": "x", "cohort": "trial", "model": "digits",
              "arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2}]},
    )  # fmt: skip
    assert r.status_code == 409 and "already active" in r.text

    rng = np.random.default_rng(1)
    send_windows(app, rng, {1: 0.80, 2: 0.80}, windows=1)
    with Session(app.state.engine) as s:
        assert len(s.exec(select(ExperimentWindow)).all()) == len(DEVICES)
    ev = app.state.experiments.step(app.state.engine, exp["id"])
    assert ev is not None and ev.decision == "keep_running"
    shown = api.admin.get(f"/v1/experiments/{exp['id']}").json()
    assert shown["evaluation"]["srm"]["mismatch"] is False and shown["looks"] == 1

    send_windows(app, rng, {1: 0.80, 2: 0.95}, windows=4, seq0=2)
    app.state.experiments.tick(app.state.engine)
    with Session(app.state.engine) as s:
        e = s.get(Experiment, exp["id"])
        assert e is not None
        assert e.state == "COMPLETED" and e.decision["decision"] == "ship" and e.decision["arm"] == "b"
        assert e.decision["promoted"] == "b"
        assert all(d.desired["production"]["version"] == 2 for d in s.exec(select(Device)).all())
        audit = {a.action: a for a in s.exec(select(AuditEntry)).all()}
    decided = audit["experiment.decided"]
    assert decided.evidence["srm"]["mismatch"] is False
    comp = next(c for c in decided.evidence["comparisons"] if c["metric"] == "accuracy")
    assert comp["difference"]["low"] > 0 and comp["verdict"] == "better"
    assert audit["experiment.promoted"].evidence["version"] == 2

    monkeypatch.setattr(cli_common, "client", lambda url, token: TestClient(app, headers={"Authorization": f"Bearer {token}"}))
    monkeypatch.setattr(cli_common.console, "width", 200)
    runner = CliRunner()
    out = runner.invoke(cli.app, ["experiments", "show", str(exp["id"]), "--token", ADMIN_TOKEN])
    assert out.exit_code == 0, out.output
    text = out.output
    assert "a (control)" in text and "always-valid 95% interval" in text and "SRM check" in text
    assert "decision: ship b (promoted b)" in text
    out = runner.invoke(cli.app, ["experiments", "list", "--token", ADMIN_TOKEN])
    assert out.exit_code == 0 and "COMPLETED" in out.output


def test_srm_blocks_the_decision_and_operator_actions_follow_the_lifecycle(api):
    app = api.app
    r = api.admin.post(
        "/v1/experiments",
        json={"name": "srm", "cohort": "trial", "model": "digits", "min_devices": 5,
              "arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2}]},
    )  # fmt: skip
    eid = r.json()["id"]
    with Session(app.state.engine) as s:
        in_b = [d for d, a in s.exec(select(ExperimentDevice.device_id, ExperimentDevice.arm)).all() if a == "b"]
    assert fresh_for(api) == {d: [f"experiment:{eid}"] for d in DEVICES}  # signed with each device's arm
    # Most of arm b goes quiet (its model crashes and rolls back, say): the comparison would be biased.
    send_windows(app, np.random.default_rng(2), {1: 0.80, 2: 0.99}, windows=3, skip=set(in_b[: len(in_b) * 3 // 4]))
    ev = app.state.experiments.step(app.state.engine, eid)
    assert ev is not None and ev.decision == "blocked" and ev.srm.mismatch
    with Session(app.state.engine) as s:
        assert s.get(Experiment, eid).state == "RUNNING"  # type: ignore[union-attr]
        assert [a.action for a in s.exec(select(AuditEntry)).all()].count("experiment.blocked") == 1
    app.state.experiments.step(app.state.engine, eid)  # a repeated look does not audit again
    with Session(app.state.engine) as s:
        assert [a.action for a in s.exec(select(AuditEntry)).all()].count("experiment.blocked") == 1

    act = lambda action, **kw: api.admin.post(f"/v1/experiments/{eid}/actions", json={"action": action, **kw})  # noqa: E731
    assert act("pause").json()["state"] == "PAUSED"
    assert act("pause").status_code == 409
    assert fresh_for(api) == {d: [f"experiment:{eid}"] for d in DEVICES}  # paused, still watched
    assert act("resume").json()["state"] == "RUNNING"
    assert act("promote").status_code == 422
    assert act("promote", arm="zz").status_code == 422
    assert act("dance").status_code == 422
    r = act("promote", arm="a", reason="enough")
    assert r.json()["state"] == "STOPPED" and r.json()["decision"]["promoted"] == "a"
    assert fresh_for(api) == {d: [] for d in DEVICES}  # over: the devices batch their telemetry again
    assert act("resume").status_code == 409
    viewer = api.make("vic", "viewer")
    assert viewer.post(f"/v1/experiments/{eid}/actions", json={"action": "stop"}).status_code == 403
    assert viewer.get(f"/v1/experiments/{eid}").status_code == 200


def fresh_for(api) -> dict[str, list[str]]:
    """Who asks each device for fresh telemetry, as signed in its desired state (``sampling.telemetry_fresh``)."""
    return {d: api.admin.get(f"/v1/devices/{d}").json()["sampling"].get("telemetry_fresh", []) for d in DEVICES}


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"arms": [{"name": "a", "version": 1}]}, 422, ""),
        ({"arms": [{"name": "a", "version": 1}, {"name": "a", "version": 2}]}, 422, "unique"),
        ({"primary_metric": "joy"}, 422, "unknown metric"),
        ({"cohort": "nope"}, 404, "no cohort"),
        ({"arms": [{"name": "a", "version": 1}, {"name": "b", "version": 9}]}, 404, ""),
        ({"kind": "bandit", "floor": 0.6}, 422, "floor"),
        ({"kind": "lottery"}, 422, "kind"),
    ],
)
def test_bad_experiments_are_refused_and_change_nothing(api, body, status, words):
    base = {"name": "x", "cohort": "trial", "model": "digits", "arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2}]}
    r = api.admin.post("/v1/experiments", json={**base, **body})
    assert r.status_code == status, r.text
    assert words in r.text
    assert api.admin.get("/v1/experiments").json() == []
    with Session(api.app.state.engine) as s:
        assert all(not d.desired for d in s.exec(select(Device)).all())
    json.dumps(r.json())
