"""Rollouts through the HTTP API with a real database and a real broker.

Simulated devices (tests/rolloutsim.py) send real status, telemetry and event
messages; the controller ingests them (per-device rollout windows included),
and the test drives the leader's job with ``tick`` for determinism.
"""

from __future__ import annotations

import time

import pytest
from sqlmodel import Session, func, select

from controller.core.tables import AuditEntry, ModelVersion, Rollout, RolloutWindow
from shared.telemetry import summary_shape
from shared.topics import Kind, device_topic
from tests.controller_app import running_api, settings_for
from tests.mqttwatch import Watcher
from tests.rolloutsim import SimDevices, role_summary

pytestmark = [pytest.mark.integration]
FAST = [
    {"share": 0.25, "min_duration_s": 0, "min_devices": 2, "min_inferences": 400},
    {"share": 0.5, "min_duration_s": 0, "min_devices": 2, "min_inferences": 400},
    {"share": 1.0, "min_duration_s": 0},
]


def wait_until(cond, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Field:
    """A cohort of simulated devices running digits v1, with v2 registered (not approved)."""

    def __init__(self, api, sim: SimDevices, make_bundle, n: int = 8, cohort: str = "field", prefix: str = "dev") -> None:
        self.api, self.sim, self.cohort = api, sim, cohort
        self.op, self.approver = api.as_("olivia"), api.as_("alice")
        for v in (1, 2):
            r = self.op.post("/v1/models", content=make_bundle(v))
            assert r.status_code in (200, 201), r.text
        if self.approver.get("/v1/models/digits/versions/1").json().get("approved_by") is None:
            assert self.approver.post("/v1/approvals", json={"model": "digits", "version": 1, "reason": "ok"}).status_code == 201
        self.sha = {m["version"]: m["sha256"] for m in self.op.get("/v1/models").json()}
        self.ids = [f"{prefix}-{i}" for i in range(n)]
        for i, d in enumerate(self.ids):
            body = {"id": d, "arch": "x86_64", "hardware_class": "pi4", "region": "eu" if i % 2 else "us"}
            assert self.op.post("/v1/devices", json=body).status_code == 201
        assert self.op.post("/v1/cohorts", json={"name": cohort, "members": self.ids}).status_code == 201
        assert (
            self.op.put(f"/v1/cohorts/{cohort}/desired", json={"model": "digits", "version": 1, "reason": "ok"}).status_code
            == 200
        )
        self.follow()

    @property
    def engine(self):
        return self.api.app.state.engine

    def desired(self, d: str, role: str = "production") -> int | None:
        a = self.op.get(f"/v1/devices/{d}").json()["desired"].get(role)
        return a["version"] if a else None

    def actual(self, d: str) -> int | None:
        a = self.op.get(f"/v1/devices/{d}").json()["actual"].get("production")
        return a["version"] if a else None

    def follow(self) -> dict[str, int]:
        """Every device runs what its desired state says (as a healthy agent would) and reports it."""
        running = {}
        for d in self.ids:
            v = self.desired(d)
            running[d] = v
            self.sim.status(d, {"production": ("digits", v, self.sha[v])})
        wait_until(lambda: all(self.actual(d) == v for d, v in running.items()), what="actual state reported")
        return running

    def windows(self, rollout_id: int, errors: dict[int, int], count: int = 300, labels: dict[int, int] | None = None) -> None:
        """One telemetry window per device: ``errors[version]`` failed inferences of ``count``."""
        with Session(self.engine) as s:
            before = s.exec(select(func.count()).where(RolloutWindow.rollout_id == rollout_id)).one()
        start = time.time()  # a window that began after the current stage did (stages judge their own windows)
        with Session(self.engine) as s:  # the ingest takes summary shapes from each version's manifest
            shapes = {
                mv.version: summary_shape(mv.manifest.get("reference"), (mv.manifest.get("outputs") or [{}])[0].get("shape"))
                for mv in s.exec(select(ModelVersion).where(ModelVersion.name == "digits")).all()
            }
        for d in self.ids:
            v = self.desired(d) or 1
            correct = (labels or {}).get(v)
            n_labels = 100 if correct is not None else 0
            summary = role_summary("digits", v, count, errors[v], labels=n_labels, correct=correct or 0, shape=shapes[v])
            self.sim.window(d, {"production": summary}, start)

        def arrived() -> bool:
            with Session(self.engine) as s:
                return s.exec(select(func.count()).where(RolloutWindow.rollout_id == rollout_id)).one() >= before + len(self.ids)

        wait_until(arrived, what="rollout windows ingested")

    def tick(self, now: float | None = None) -> dict:
        self.api.app.state.rollouts.tick(self.engine, now=now)
        return self.op.get(f"/v1/rollouts/{self.rid}").json()

    def create(self, **body) -> dict:
        r = self.op.post("/v1/rollouts", json={"cohort": self.cohort, "model": "digits", "version": 2, "stages": FAST, **body})
        assert r.status_code == 201, r.text
        self.rid = r.json()["id"]
        return r.json()


@pytest.fixture
def api(tmp_path, database_url, mosquitto):
    settings = settings_for(tmp_path, database_url, mosquitto.port).model_copy(update={"rollout_interval_s": 3600})
    with running_api(settings) as a:
        a.make("olivia", "operator")
        a.make("alice", "approver")
        a.make("vera", "viewer")
        yield a


@pytest.fixture
def sim(mosquitto):
    s = SimDevices(mosquitto.host, mosquitto.port)
    yield s
    s.close()


def on_candidate(f: Field) -> list[str]:
    return [d for d in f.ids if f.desired(d) == 2]


def test_a_good_candidate_walks_every_stage_waiting_for_approval_where_the_registry_says(api, sim, make_bundle):
    f = Field(api, sim, make_bundle)
    r = f.create(reason="new model")
    assert (r["state"], r["stage"], r["baseline_version"], r["devices"]["on_candidate"]) == ("RUNNING", 1, 1, 2)
    first = on_candidate(f)
    assert len(first) == 2
    f.follow()
    f.windows(f.rid, {1: 3, 2: 3})
    api.app.state.rollouts.quick(f.engine)  # a quick look only ever fails a stage: nothing passes between analyses
    r = f.op.get(f"/v1/rollouts/{f.rid}").json()
    assert (r["state"], r["stage"], r["last_analysis"].get("checks")) == ("RUNNING", 1, None)
    r = f.tick()
    # stage 1 passed; stage 2 needs the approval v2 does not have: paused, saying so
    assert (r["state"], r["stage"], r["waiting"]) == ("PAUSED", 1, "approval"), r["last_analysis"]
    assert "approve" in r["reason"]
    checks = {c["name"]: c for c in r["last_analysis"]["checks"]}
    assert checks["error_rate"]["outcome"] == "pass"
    assert checks["error_rate"]["figures"]["candidate_n"] == 600
    assert f.op.post(f"/v1/rollouts/{f.rid}/resume", json={}).status_code == 409  # still not approved
    assert f.approver.post("/v1/approvals", json={"model": "digits", "version": 2, "reason": "ok"}).status_code == 201
    r = f.op.post(f"/v1/rollouts/{f.rid}/resume", json={"reason": "approved"}).json()
    assert (r["state"], r["stage"]) == ("RUNNING", 2)
    second = on_candidate(f)
    assert set(first) < set(second) and len(second) == 4  # a device keeps its arm as the share grows
    f.follow()
    f.windows(f.rid, {1: 3, 2: 2})
    r = f.tick()
    assert (r["state"], r["stage"]) == ("RUNNING", 3)
    assert on_candidate(f) == f.ids
    f.follow()
    r = f.tick()
    assert r["state"] == "COMPLETED"
    actions = [d["action"] for d in r["decisions"]]
    assert actions == ["created", "paused", "resumed", "advanced", "completed"] or actions[:2] == ["created", "paused"]
    assert "advanced" in actions and actions[-1] == "completed"
    with Session(f.engine) as s:
        audited = s.exec(select(AuditEntry.action).where(AuditEntry.subject == f"rollout:{f.rid}")).all()
    assert {"rollout.created", "rollout.paused", "rollout.advanced", "rollout.completed"} <= set(audited)


def test_an_error_rate_regression_rolls_every_canary_back_with_the_numbers(api, sim, make_bundle):
    f = Field(api, sim, make_bundle)
    f.create()
    canaries = on_candidate(f)
    f.follow()
    f.windows(f.rid, {1: 1, 2: 45})
    r = f.tick()
    assert r["state"] == "ROLLED_BACK" and "error_rate" in r["reason"]
    assert on_candidate(f) == [] and all(f.desired(d) == 1 for d in canaries)
    rb = next(d for d in r["decisions"] if d["action"] == "rolled_back")
    er = {c["name"]: c for c in rb["evidence"]["checks"]}["error_rate"]
    assert er["outcome"] == "fail" and er["figures"]["candidate"] == pytest.approx(45 / 300)
    assert sorted(rb["evidence"]["devices_changed"]) == sorted(canaries)
    assert r["devices"]["reverted"] == 2
    assert f.op.post(f"/v1/rollouts/{f.rid}/resume", json={}).status_code == 409


def test_an_on_device_rollback_fails_the_stage_at_once(api, sim, make_bundle):
    f = Field(api, sim, make_bundle)
    f.create()
    bad = on_candidate(f)[0]
    sim.event(bad, "ota.rolled_back", "rolled back digits v2: health check failed",
              {"role": "production", "model": "digits", "version": 2, "reason": "golden vectors"})  # fmt: skip
    wait_until(lambda: any(e["kind"] == "ota.rolled_back" for e in f.op.get(f"/v1/devices/{bad}/events").json()), what="event")
    api.app.state.rollouts.quick(f.engine)  # the leader's quick look between analyses, not the interval's analysis
    r = f.op.get(f"/v1/rollouts/{f.rid}").json()
    assert r["state"] == "ROLLED_BACK" and "rolled the candidate back" in r["reason"]
    assert on_candidate(f) == []
    assert "rollouts.watch" in api.app.state.leader.status().jobs


def test_a_revoked_candidate_aborts_the_rollout_and_restores_the_baseline_at_once(api, sim, mosquitto, make_bundle):
    f = Field(api, sim, make_bundle)
    f.create()
    canaries = on_candidate(f)
    assert canaries
    watch = Watcher(mosquitto.host, mosquitto.port, *(device_topic(d, Kind.DESIRED) for d in canaries))
    try:
        assert f.approver.post("/v1/models/digits/versions/2/revoke", json={"reason": "bad data"}).status_code == 200
        # no analysis interval: the revocation itself rolled the rollout back and published the baseline
        r = f.op.get(f"/v1/rollouts/{f.rid}").json()
        assert r["state"] == "ROLLED_BACK" and "revoked" in r["reason"]
        assert on_candidate(f) == [] and all(f.desired(d) == 1 for d in canaries)
        for d in canaries:
            watch.wait_for(
                lambda m, d=d: (
                    m.get("signed", {}).get("device_id") == d and m["signed"]["assignments"]["production"]["version"] == 1
                ),
                "/desired",
                timeout=10,
            )
    finally:
        watch.close()
    rb = next(x for x in r["decisions"] if x["action"] == "rolled_back")
    assert rb["evidence"]["revoked"] is True and sorted(rb["evidence"]["devices_changed"]) == sorted(canaries)
    with Session(f.engine) as s:
        audited = s.exec(select(AuditEntry.action).where(AuditEntry.subject == f"rollout:{f.rid}")).all()
    assert "rollout.rolled_back" in audited
    assert f.tick()["state"] == "ROLLED_BACK"  # the next analysis finds nothing left to do


def test_low_traffic_holds_and_says_why_then_pauses_for_a_human_at_the_deadline(api, sim, make_bundle):
    f = Field(api, sim, make_bundle)
    stages = [{**FAST[0], "min_inferences": 5000, "max_duration_s": 600}, FAST[2]]
    f.create(stages=stages)
    f.follow()
    f.windows(f.rid, {1: 0, 2: 0}, count=50)
    r = f.tick()
    assert (r["state"], r["stage"]) == ("RUNNING", 1)
    assert any("low traffic: 100 inferences" in x for x in r["last_analysis"]["reasons"]), r["last_analysis"]["reasons"]
    r = f.tick()  # the same hold is not recorded again
    assert [d["action"] for d in r["decisions"]].count("held") == 1
    r = f.tick(now=time.time() + 601)
    assert (r["state"], r["waiting"]) == ("PAUSED", "human") and "low traffic" in r["reason"]
    r = f.op.post(f"/v1/rollouts/{f.rid}/promote", json={})
    assert r.status_code == 409 and "approved" in r.json()["detail"]  # promotion never skips the approval
    assert f.approver.post("/v1/approvals", json={"model": "digits", "version": 2, "reason": "ok"}).status_code == 201
    r = f.op.post(f"/v1/rollouts/{f.rid}/promote", json={}).json()
    assert (r["state"], r["stage"]) == ("RUNNING", 2)  # a human decided


def test_controls_are_role_checked_and_overlapping_rollouts_refused(api, sim, make_bundle):
    f = Field(api, sim, make_bundle)
    f.create()
    assert api.as_("vera").post(f"/v1/rollouts/{f.rid}/pause", json={}).status_code == 403
    assert api.as_("vera").get(f"/v1/rollouts/{f.rid}").status_code == 200
    f.op.post("/v1/cohorts", json={"name": "half", "members": f.ids[:3]})
    r = f.op.post("/v1/rollouts", json={"cohort": "half", "model": "digits", "version": 2})
    assert r.status_code == 409 and f"rollout {f.rid}" in r.json()["detail"] and "3 device(s)" in r.json()["detail"]
    r = f.op.post(f"/v1/rollouts/{f.rid}/pause", json={"reason": "weekend"}).json()
    assert (r["state"], r["waiting"], r["reason"]) == ("PAUSED", "operator", "weekend")
    assert f.op.post(f"/v1/rollouts/{f.rid}/pause", json={}).status_code == 409
    assert f.op.post(f"/v1/rollouts/{f.rid}/promote", json={}).status_code == 409  # stage 2 needs approval
    assert f.op.post(f"/v1/rollouts/{f.rid}/resume", json={}).json()["state"] == "RUNNING"
    r = f.op.post(f"/v1/rollouts/{f.rid}/abort", json={"reason": "changed my mind"}).json()
    assert (r["state"], r["reason"]) == ("ROLLED_BACK", "changed my mind")
    assert on_candidate(f) == []
    assert [x["id"] for x in f.op.get("/v1/rollouts", params={"state": "rolled_back"}).json()] == [f.rid]
    bad = f.op.post("/v1/rollouts", json={"cohort": "field", "model": "digits", "version": 2, "stages": [{"share": 0.5}]})
    assert bad.status_code == 422 and "last stage" in bad.json()["detail"]


def test_hardware_the_bundle_does_not_support_is_skipped_and_counted(api, sim, make_bundle):
    from firmware_sim.modelgen import make_onnx_bundle

    f = Field(api, sim, make_bundle, n=4)
    assert f.op.post("/v1/models", content=make_onnx_bundle(version=3, epochs=20, arch=["aarch64"])).status_code == 201
    r = f.op.post("/v1/rollouts", json={"cohort": "field", "model": "digits", "version": 3, "stages": FAST})
    assert r.status_code == 201, r.text
    assert r.json()["devices"] == {"on_candidate": 0, "reverted": 0, "skipped_hardware": 4}
    assert fresh_for(f) == {d: [] for d in f.ids}  # the rollout reads none of them: they keep batching telemetry


def fresh_for(f: Field) -> dict[str, list[str]]:
    """Who asks each device for fresh telemetry (``sampling.telemetry_fresh`` of its signed desired state)."""
    return {d: f.op.get(f"/v1/devices/{d}").json()["sampling"].get("telemetry_fresh", []) for d in f.ids}


def newest_desired(watch: Watcher, device: str) -> dict:
    signed = [m["signed"] for m in watch.json_messages("/desired") if m.get("signed", {}).get("device_id") == device]
    return signed[-1] if signed else {}


def test_a_running_rollout_asks_every_device_it_reads_for_fresh_telemetry_until_it_ends(api, sim, mosquitto, make_bundle):
    """Candidate and baseline devices alike, through their signed desired state (ADR 0076); an abort lets go."""
    f = Field(api, sim, make_bundle, n=4)
    watch = Watcher(mosquitto.host, mosquitto.port, *(device_topic(d, Kind.DESIRED) for d in f.ids))
    try:
        f.create()
        holder = [f"rollout:{f.rid}"]
        assert fresh_for(f) == {d: holder for d in f.ids}
        for d in f.ids:
            wait_until(lambda d=d: newest_desired(watch, d).get("sampling", {}).get("telemetry_fresh") == holder, 10, d)
        canaries = on_candidate(f)
        assert canaries and all(newest_desired(watch, d)["assignments"]["production"]["version"] == 2 for d in canaries)
        assert f.tick()["state"] == "RUNNING" and fresh_for(f) == {d: holder for d in f.ids}  # nothing to re-sign
        assert f.op.post(f"/v1/rollouts/{f.rid}/abort", json={"reason": "enough"}).status_code == 200
        assert fresh_for(f) == {d: [] for d in f.ids}
        for d in f.ids:
            wait_until(lambda d=d: "telemetry_fresh" not in newest_desired(watch, d).get("sampling", {"x": 1}), 10, d)
            assert newest_desired(watch, d)["assignments"]["production"]["version"] == 1
    finally:
        watch.close()


def test_a_controller_recreated_mid_rollout_resumes_exactly_where_it_was(tmp_path, database_url, mosquitto, sim, make_bundle):
    settings = settings_for(tmp_path, database_url, mosquitto.port).model_copy(update={"rollout_interval_s": 3600})
    with running_api(settings) as a:
        a.make("olivia", "operator")
        a.make("alice", "approver")
        f = Field(a, sim, make_bundle)
        f.create()
        assert f.approver.post("/v1/approvals", json={"model": "digits", "version": 2, "reason": "ok"}).status_code == 201
        f.follow()
        f.windows(f.rid, {1: 2, 2: 2})
        r = f.tick()
        assert (r["state"], r["stage"]) == ("RUNNING", 2)
        before = on_candidate(f)
        tokens = {n: c.headers["Authorization"] for n, c in a._clients.items()}
    # a new process on the same database: the leader job picks the rollout up on stage 2 with the same devices
    with running_api(settings) as b:
        from fastapi.testclient import TestClient

        for name, header in tokens.items():
            b._clients[name] = TestClient(b.app, headers={"Authorization": header})
        f.api, f.op, f.approver = b, b.as_("olivia"), b.as_("alice")
        r = f.op.get(f"/v1/rollouts/{f.rid}").json()
        assert (r["state"], r["stage"], r["devices"]["on_candidate"]) == ("RUNNING", 2, len(before)), r["decisions"]
        assert on_candidate(f) == before, r["decisions"]
        b.app.state.leader.campaign()
        b.app.state.leader.run_due()  # the registered leader job, as the leader runs it
        f.follow()
        f.windows(f.rid, {1: 2, 2: 2})
        r = f.tick()
        assert (r["state"], r["stage"]) == ("RUNNING", 3)
        assert set(before) < set(on_candidate(f))


def test_a_download_refused_before_install_is_assigned_again_not_counted_against_the_model(api, sim, make_bundle):
    f = Field(api, sim, make_bundle)
    f.create()
    dev = on_candidate(f)[0]
    counter = f.op.get(f"/v1/devices/{dev}").json()["desired_counter"]
    sim.event(dev, "ota.rejected", "download failed: HashError", {"role": "production", "model": "digits", "version": 2})
    wait_until(lambda: any(e["kind"] == "ota.rejected" for e in f.op.get(f"/v1/devices/{dev}/events").json()), what="event")
    r = f.tick()
    assert r["state"] == "RUNNING"
    assert f.op.get(f"/v1/devices/{dev}").json()["desired_counter"] == counter + 1  # signed again, new counter
    f.tick()
    assert f.op.get(f"/v1/devices/{dev}").json()["desired_counter"] == counter + 1  # once per refusal


def test_rollout_windows_are_pruned_by_age_except_an_open_stages(api, sim, make_bundle):
    from controller.rollouts import retention

    f = Field(api, sim, make_bundle)
    f.create()
    f.follow()
    f.windows(f.rid, {1: 0, 2: 0})
    with Session(f.engine) as s:
        n_open = s.exec(select(func.count()).where(RolloutWindow.rollout_id == f.rid)).one()
        s.add(RolloutWindow(rollout_id=f.rid, device_id=f.ids[0], window_start=time.time() - 99_000, window_s=60))  # stage 0
        s.add(RolloutWindow(rollout_id=9999, device_id=f.ids[0], window_start=time.time() - 99_000, window_s=60))  # gone rollout
        s.add(RolloutWindow(rollout_id=9999, device_id=f.ids[0], window_start=time.time() - 10, window_s=60))  # recent
        s.commit()
    with Session(f.engine) as s:
        assert retention.prune(s, time.time(), retention_s=50_000) == 2  # the earlier stage's and the gone rollout's
        s.commit()
    with Session(f.engine) as s:
        assert s.exec(select(func.count()).where(RolloutWindow.rollout_id == 9999)).one() == 1  # recent: kept
        assert retention.prune(s, time.time() + 86_400, retention_s=50_000) == 1  # everything is old now...
        s.commit()
        assert s.exec(select(func.count()).where(RolloutWindow.rollout_id == f.rid)).one() == n_open  # ...but the open stage's
    f.op.post(f"/v1/rollouts/{f.rid}/abort", json={"reason": "done"})
    with Session(f.engine) as s:
        assert s.get(Rollout, f.rid).state == "ROLLED_BACK"
        assert retention.prune(s, time.time() + 86_400, retention_s=50_000) == n_open  # a closed rollout keeps nothing old
        s.commit()
    assert "rollouts.windows.prune" in api.app.state.leader.status().jobs  # the leader runs it


def test_a_shadow_stage_reports_its_confusion_matrix_dropped_comparisons_and_sample_rate(api, sim, mosquitto, make_bundle):
    from contextlib import nullcontext

    from typer.testing import CliRunner

    from controller import cli
    from controller.cli import common as cli_common
    from controller.core.tables import Device

    f = Field(api, sim, make_bundle)
    stages = [
        {"kind": "shadow", "share": 0.25, "min_duration_s": 0, "min_devices": 2, "min_inferences": 200, "sample_rate": 0.5},
        FAST[2],
    ]
    watch = Watcher(mosquitto.host, mosquitto.port, *(device_topic(d, Kind.DESIRED) for d in f.ids))
    try:
        f.create(stages=stages)
        shadowed = [d for d in f.ids if f.desired(d, "shadow") == 2]
        assert len(shadowed) == 2 and all(f.desired(d) == 1 for d in shadowed)  # production stays the baseline
        for d in shadowed:  # the sample rate travels signed with the desired state
            watch.wait_for(
                lambda m, d=d: (
                    m["signed"]["device_id"] == d
                    and m["signed"].get("sampling") == {"shadow_rate": 0.5, "telemetry_fresh": [f"rollout:{f.rid}"]}
                ),
                "/desired",
                timeout=10,
            )
    finally:
        watch.close()
    with Session(f.engine) as s:
        shape = summary_shape(*(lambda mv: (mv.manifest.get("reference"), mv.manifest["outputs"][0].get("shape")))(
            s.exec(select(ModelVersion).where(ModelVersion.version == 2)).one()))  # fmt: skip

    def windows(agree: int, disagree: int, dropped: int) -> None:
        with Session(f.engine) as s:
            before = s.exec(select(func.count()).where(RolloutWindow.rollout_id == f.rid)).one()
        start = time.time()
        cm = [[0] * 10 for _ in range(10)]
        for c in range(10):
            cm[c][c] = agree // 10
        cm[3][8] = disagree  # the candidate calls production's threes eights
        for d in shadowed:
            roles = {
                "production": role_summary("digits", 1, 2 * (agree + disagree + dropped), shape=shape),
                "shadow": role_summary("digits", 2, agree + disagree, agree=agree, disagree=disagree, shape=shape,
                                       dropped=dropped, sampled_out=agree + disagree + dropped, confusion=cm),
            }  # fmt: skip
            sim.window(d, roles, start)

        def arrived() -> bool:
            with Session(f.engine) as s:
                return s.exec(select(func.count()).where(RolloutWindow.rollout_id == f.rid)).one() >= before + len(shadowed)

        wait_until(arrived, what="rollout windows ingested")

    windows(agree=190, disagree=10, dropped=100)  # a third of what was sampled was dropped: agreement is doubted
    r = f.tick()
    assert (r["state"], r["stage"]) == ("RUNNING", 1), r["last_analysis"]
    sa = {c["name"]: c for c in r["last_analysis"]["checks"]}["shadow_agreement"]
    assert sa["outcome"] == "inconclusive" and "dropped" in sa["reason"], sa
    fig = sa["figures"]
    assert (fig["compared"], fig["dropped"], fig["sampled_out"], fig["sample_rate"]) == (400, 200, 600, 0.5)
    assert fig["dropped_share"] == pytest.approx(200 / 600, abs=1e-4) and fig["observed_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert fig["confusion"][3][8] == 20 and fig["confusion"][3][3] == 38 and sum(map(sum, fig["confusion"])) == 400
    assert {c["class"]: c["agreement"] for c in fig["per_class"]}[3] == pytest.approx(38 / 58, abs=1e-4)

    runner = CliRunner()
    token = f.op.headers["Authorization"].removeprefix("Bearer ")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_common, "client", lambda url, tok: nullcontext(f.op))  # the running app (no second lifespan)
        shown = runner.invoke(cli.app, ["rollouts", "show", str(f.rid), "--token", token])
    assert shown.exit_code == 0, shown.output
    assert "400 compared, 200 dropped" in shown.output and "sample rate 0.5" in shown.output
    assert "confusion matrix" in shown.output and "65.5%" in shown.output  # production's threes: 38 of 58 agree

    windows(agree=1000, disagree=0, dropped=0)  # enough comparisons, few dropped: the shadow stage passes
    r = f.tick()
    assert (r["state"], r["stage"]) == ("RUNNING", 2), r["last_analysis"]
    assert all(f.desired(d, "shadow") is None for d in shadowed)  # the candidate no longer runs as shadow...
    with Session(f.engine) as s:
        assert all(s.get(Device, d).sampling == {"telemetry_fresh": [f"rollout:{f.rid}"]} for d in shadowed)  # ...nor sampled


# --- a baseline the devices may not install (ADR 0073) -------------------------------------------------


def audited(f: Field) -> list[tuple[str, dict]]:
    with Session(f.engine) as s:
        rows = s.exec(select(AuditEntry).where(AuditEntry.subject == f"rollout:{f.rid}").order_by(AuditEntry.seq)).all()
        return [(e.action, e.evidence) for e in rows]


def test_a_rollout_whose_baseline_is_revoked_is_refused_unless_an_installable_one_is_named(api, sim, make_bundle):
    f = Field(api, sim, make_bundle)
    assert f.op.post("/v1/models", content=make_bundle(3)).status_code == 201
    r = f.approver.post("/v1/models/digits/versions/1/revoke", json={"reason": "leaks data"})
    assert r.status_code == 200 and r.json()["floor"] == 2
    r = f.op.post("/v1/rollouts", json={"cohort": "field", "model": "digits", "version": 3, "stages": FAST})
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "digits v1 is revoked" in detail and "baseline_version" in detail and "installable now: v2" in detail, detail
    named = {"cohort": "field", "model": "digits", "version": 3, "stages": FAST, "baseline_version": 1}
    r = f.op.post("/v1/rollouts", json=named)
    assert r.status_code == 409 and "the baseline you named" in r.json()["detail"]
    assert f.op.get("/v1/rollouts").json() == []  # nothing was started, nothing assigned
    assert all(f.desired(d) == 1 for d in f.ids)
    r = f.op.post("/v1/rollouts", json={**named, "baseline_version": 2})
    assert r.status_code == 201, r.text
    assert (r.json()["baseline_version"], r.json()["candidate_version"]) == (2, 3)


def test_a_baseline_revoked_mid_rollout_pauses_it_and_a_failure_then_halts_without_assigning_it(api, sim, make_bundle):
    f = Field(api, sim, make_bundle)
    f.create()
    canaries = on_candidate(f)
    assert len(canaries) == 2
    r = f.approver.post("/v1/models/digits/versions/1/revoke", json={"reason": "leaks data"})
    assert r.status_code == 200
    r = f.op.get(f"/v1/rollouts/{f.rid}").json()  # the revocation itself paused it, in the same transaction
    assert (r["state"], r["waiting"]) == ("PAUSED", "baseline") and "baseline digits v1 was revoked" in r["reason"]
    assert f"/v1/rollouts/{f.rid}/baseline" in r["reason"]
    paused = next(d for d in r["decisions"] if d["action"] == "paused")
    assert paused["evidence"]["event"] == "BaselineRevoked" and paused["evidence"]["revoked_version"] == 1

    f.follow()
    f.windows(f.rid, {1: 1, 2: 45})  # the candidate errs: the stage fails, and v1 may not be installed
    r = f.tick()
    assert (r["state"], r["waiting"]) == ("HALTED", "baseline"), r["reason"]
    assert "error_rate" in r["reason"] and "v1 is revoked" in r["reason"] and "devices stay where they are" in r["reason"]
    assert all(f.desired(d) == 2 for d in canaries)  # never assigned the revoked baseline
    assert all(f.desired(d) == 1 for d in f.ids if d not in canaries)  # and nothing else moved
    halted = next(d for d in r["decisions"] if d["action"] == "halted")
    assert halted["verdict"] == "fail" and "revoked" in halted["evidence"]["baseline_problem"]
    assert sorted(halted["evidence"]["devices_kept_on_candidate"]) == sorted(canaries)
    assert {c["name"]: c for c in halted["evidence"]["checks"]}["error_rate"]["outcome"] == "fail"
    assert "devices_changed" not in halted["evidence"]
    api.app.state.rollouts.tick(f.engine)
    api.app.state.rollouts.quick(f.engine)
    assert f.op.get(f"/v1/rollouts/{f.rid}").json()["state"] == "HALTED"  # the leader leaves it to a human

    for action in ("abort", "resume", "promote"):  # nothing to abort to; a failed stage never goes on
        r = f.op.post(f"/v1/rollouts/{f.rid}/{action}", json={})
        assert r.status_code == 409 and "HALTED" in r.json()["detail"], (action, r.text)
    assert api.as_("vera").post(f"/v1/rollouts/{f.rid}/baseline", json={"version": 3}).status_code == 403
    r = f.op.post(f"/v1/rollouts/{f.rid}/baseline", json={"version": 1})
    assert r.status_code == 409 and "revoked" in r.json()["detail"]
    r = f.op.post(f"/v1/rollouts/{f.rid}/baseline", json={"version": 2})
    assert r.status_code == 409 and "candidate" in r.json()["detail"]
    assert f.op.post(f"/v1/rollouts/{f.rid}/baseline", json={"version": 9}).status_code == 404
    assert all(f.desired(d) == 2 for d in canaries)

    assert f.op.post("/v1/models", content=make_bundle(3)).status_code == 201
    r = f.op.post(f"/v1/rollouts/{f.rid}/baseline", json={"version": 3, "reason": "v3 fixes both"}).json()
    assert (r["state"], r["baseline_version"], r["devices"]["reverted"]) == ("ROLLED_BACK", 3, 2)
    assert all(f.desired(d) == 3 for d in canaries)  # the rollback completed, to the named baseline
    done = r["decisions"][-1]
    assert (done["action"], done["actor"], done["evidence"]["baseline"]) == ("rolled_back", "olivia", {"from": 1, "to": 3})
    assert sorted(done["evidence"]["devices_changed"]) == sorted(canaries)
    actions = [a for a, _ in audited(f)]
    assert actions == ["rollout.created", "rollout.paused", "rollout.halted", "rollout.rolled_back"], actions


def test_an_abort_without_an_installable_baseline_halts_and_only_stops_the_shadow(api, sim, make_bundle):
    f = Field(api, sim, make_bundle)
    shadow = {"kind": "shadow", "share": 0.25, "min_duration_s": 0, "min_devices": 2, "min_inferences": 200}
    f.create(stages=[shadow, FAST[2]])
    shadowed = [d for d in f.ids if f.desired(d, "shadow") == 2]
    assert len(shadowed) == 2
    assert f.approver.post("/v1/models/digits/versions/1/revoke", json={"reason": "leaks data"}).status_code == 200
    r = f.op.post(f"/v1/rollouts/{f.rid}/abort", json={"reason": "wrong week"}).json()
    assert (r["state"], r["waiting"]) == ("HALTED", "baseline") and r["reason"].startswith("wrong week; halted")
    assert all(f.desired(d, "shadow") is None for d in shadowed)  # the candidate stops running beside production
    assert all(f.desired(d) == 1 for d in f.ids)  # production untouched: nothing was assigned
    halted = r["decisions"][-1]
    assert halted["action"] == "halted" and sorted(halted["evidence"]["devices_changed"]) == sorted(shadowed)
    assert halted["evidence"]["devices_kept_on_candidate"] == []
    r = f.op.post("/v1/rollouts", json={"cohort": "field", "model": "digits", "version": 2, "baseline_version": 2})
    assert r.status_code == 409 and f"rollout {f.rid}" in r.json()["detail"]  # a halted rollout still holds its cohort
