"""The controller's HTTP API against a real database (SQLite, and PostgreSQL when configured) and a real broker."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from controller.core.security import hash_token
from controller.core.tables import ApiToken, Device
from controller.telemetry.ingest import apply_status
from shared import bundle as bundle_fmt
from shared.manifest import Manifest
from shared.messages import RunningModel, Status
from tests.controller_app import running_api, settings_for

pytestmark = [pytest.mark.integration]


@pytest.fixture
def api(tmp_path, database_url, mosquitto):
    with running_api(settings_for(tmp_path, database_url, mosquitto.port)) as a:
        a.make("olivia", "operator")
        a.make("vera", "viewer")
        a.make("alice", "approver")
        a.make("bob", "approver")
        yield a


def report_running(api, device_id: str, model: str, version: int, sha256: str, reason: str = "") -> None:
    """Apply a status report as the MQTT ingester would."""
    status = Status(
        device_id=device_id,
        seq=int(time.time() * 1000),
        sent_at=time.time(),
        state="online",
        agent_version="0.1.0",
        models={"production": RunningModel(model, version, sha256, "onnx", time.time(), reason)},
    )
    with Session(api.app.state.engine) as s:
        apply_status(s, s.get(Device, device_id), status)
        s.commit()


def test_roles_are_checked_by_dependency_with_a_clear_403(api):
    viewer, operator = api.as_("vera"), api.as_("olivia")
    assert viewer.get("/v1/devices").status_code == 200
    r = viewer.post("/v1/devices", json={"id": "pi-1"})
    assert r.status_code == 403
    assert r.json()["detail"] == "this action needs the operator role; 'vera' has the viewer role"
    assert operator.post("/v1/devices", json={"id": "pi-1"}).status_code == 201
    assert operator.post("/v1/tokens", json={"principal": "x", "role": "admin"}).status_code == 403
    assert api.admin.get("/v1/whoami").json() == {"principal": "admin", "role": "admin"}
    assert operator.get("/v1/whoami").json() == {"principal": "olivia", "role": "operator"}


def test_tokens_are_hashed_at_rest_and_can_be_revoked(api):
    r = api.admin.post("/v1/tokens", json={"principal": "carl", "role": "viewer"})
    token, token_id = r.json()["token"], r.json()["id"]
    with Session(api.app.state.engine) as s:
        row = s.get(ApiToken, token_id)
        assert row.token_hash == hash_token(token)
        assert token not in json.dumps(row.model_dump(), default=str)
    assert "token" not in api.admin.get("/v1/tokens").json()[0]
    headers = {"Authorization": f"Bearer {token}"}
    assert api.admin.get("/v1/whoami", headers=headers).json()["principal"] == "carl"
    assert api.admin.delete(f"/v1/tokens/{token_id}").json()["revoked_at"] is not None
    r = api.admin.get("/v1/whoami", headers=headers)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert api.admin.get("/v1/whoami", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api.admin.get("/v1/whoami", headers={"Authorization": ""}).status_code == 401


def test_registry_validates_bundles_and_keeps_versions_monotonic(api, make_bundle):
    op = api.as_("olivia")
    r = op.post("/v1/models", content=make_bundle(2))
    assert r.status_code == 201, r.text
    assert (r.json()["version"], r.json()["registered_by"], r.json()["parent_version"]) == (2, "olivia", 1)
    assert op.post("/v1/models", content=make_bundle(2)).status_code == 200  # identical bytes: idempotent
    r = op.post("/v1/models", content=make_bundle(1))
    assert r.status_code == 409 and "expected a version greater than 2, got 1" in r.json()["detail"]
    r = op.post("/v1/models", content=make_bundle(2, seed=7))
    assert r.status_code == 409 and "already exists with different content" in r.json()["detail"]
    for junk in (b"", b"not a tar", b"\x00" * 1024):
        r = op.post("/v1/models", content=junk)
        assert r.status_code == 422 and r.json()["detail"].startswith("invalid bundle")
    assert api.as_("vera").post("/v1/models", content=make_bundle(3)).status_code == 403
    assert [m["version"] for m in api.as_("vera").get("/v1/models").json()] == [2]


def test_a_bundle_whose_golden_vectors_do_not_reproduce_is_refused(api, make_bundle):
    b = bundle_fmt.read(make_bundle(1))
    d = b.manifest.to_dict()
    probs = d["golden"]["vectors"][0]["outputs"]["probs"][0]
    probs[0] += 0.5  # far outside atol
    bad = bundle_fmt.pack(Manifest.from_dict(d), b.model)
    r = api.as_("olivia").post("/v1/models", content=bad)
    assert r.status_code == 422
    assert "golden vectors do not reproduce" in r.json()["detail"] and "golden vector 0" in r.json()["detail"]
    assert api.admin.get("/v1/models").json() == []


def test_approval_gates_production_and_the_requester_cannot_approve(api, make_bundle):
    op, alice = api.as_("olivia"), api.as_("alice")
    alice.post("/v1/models", content=make_bundle(1))  # alice registers: she is the requester
    for d in ("pi-1", "pi-2"):
        op.post("/v1/devices", json={"id": d})
    r = op.put("/v1/devices/pi-1/desired", json={"model": "digits", "version": 1})
    assert r.status_code == 409 and "not approved" in r.json()["detail"]
    assert op.put("/v1/devices/pi-1/desired", json={"model": "digits", "version": 1, "role": "canary"}).status_code == 200
    assert op.put("/v1/models/digits/aliases/production", json={"version": 1}).status_code == 409
    assert op.put("/v1/models/digits/aliases/candidate", json={"version": 1}).status_code == 200
    assert [m["version"] for m in op.get("/v1/approvals").json()] == [1]

    r = alice.post("/v1/approvals", json={"model": "digits", "version": 1, "reason": "looks good"})
    assert r.status_code == 403 and "cannot approve it" in r.json()["detail"]
    r = op.post("/v1/approvals", json={"model": "digits", "version": 1, "reason": "me"})
    assert r.status_code == 403 and "approver role" in r.json()["detail"]
    assert api.as_("bob").post("/v1/approvals", json={"model": "digits", "version": 1, "reason": ""}).status_code == 422
    r = api.as_("bob").post("/v1/approvals", json={"model": "digits", "version": 1, "reason": "canary clean for 24 h"})
    assert r.status_code == 201 and r.json()["approved_by"] == "bob"
    assert op.get("/v1/approvals").json() == []

    r = op.put("/v1/devices/pi-1/desired", json={"model": "digits", "version": 1, "reason": "roll out"})
    assert r.status_code == 200 and r.json()["desired"]["production"]["version"] == 1
    assert op.put("/v1/models/digits/aliases/production", json={"version": 1}).json()["aliases"] == {
        "candidate": 1,
        "production": 1,
    }


def test_revoke_raises_the_floor_and_blocks_assignment(api, make_bundle):
    op, bob = api.as_("olivia"), api.as_("bob")
    for v in (1, 2):
        op.post("/v1/models", content=make_bundle(v))
    op.post("/v1/devices", json={"id": "pi-1"})
    op.put("/v1/models/digits/aliases/candidate", json={"version": 1})
    assert op.post("/v1/models/digits/versions/1/revoke", json={"reason": "bad"}).status_code == 403
    r = bob.post("/v1/models/digits/versions/1/revoke", json={"reason": "accuracy regression on night images"})
    assert r.status_code == 200
    assert (r.json()["floor"], r.json()["aliases"]) == (2, {})
    r = op.put("/v1/devices/pi-1/desired", json={"model": "digits", "version": 1, "role": "canary"})
    assert r.status_code == 409 and "revoked" in r.json()["detail"]
    assert op.put("/v1/devices/pi-1/desired", json={"model": "digits", "version": 2, "role": "canary"}).status_code == 200
    assert bob.post("/v1/models/digits/versions/1/revoke", json={}).status_code == 409
    lineage = op.get("/v1/models/digits/versions/2/lineage").json()
    assert [m["version"] for m in lineage] == [2, 1]
    assert lineage[0]["lineage"]["training_params"]["epochs"] == 62
    assert lineage[0]["lineage"]["dataset_sha256"] == lineage[1]["lineage"]["dataset_sha256"]


def test_cohorts_static_and_dynamic_membership(api):
    op = api.as_("olivia")
    op.post("/v1/devices", json={"id": "pi-1", "hardware_class": "rpi4", "region": "eu", "tags": ["door", "lab"]})
    op.post("/v1/devices", json={"id": "pi-2", "hardware_class": "rpi4", "region": "us", "tags": ["door"]})
    op.post("/v1/devices", json={"id": "jet-1", "hardware_class": "jetson", "region": "eu"})
    r = op.post("/v1/cohorts", json={"name": "eu-pis", "filter": {"hardware_class": ["rpi4"], "region": ["eu"]}})
    assert r.status_code == 201 and r.json()["size"] == 1
    op.post("/v1/cohorts", json={"name": "doors", "filter": {"tags": ["door"]}, "members": ["jet-1"]})
    assert op.get("/v1/cohorts/doors/members").json() == ["jet-1", "pi-1", "pi-2"]
    op.post("/v1/cohorts", json={"name": "fixed", "members": ["pi-2", "ghost"]})
    assert op.get("/v1/cohorts/fixed/members").json() == ["pi-2"]
    assert op.patch("/v1/devices/pi-2", json={"region": "eu"}).status_code == 200
    assert op.get("/v1/cohorts/eu-pis/members").json() == ["pi-1", "pi-2"]
    with Session(api.app.state.engine) as s:
        for did, ver in (("pi-1", "0.1.0"), ("pi-2", "0.3.1")):
            dev = s.get(Device, did)
            dev.agent_version = ver
            s.add(dev)
        s.commit()
    op.post("/v1/cohorts", json={"name": "new-agents", "filter": {"agent_version": ">=0.2"}})
    assert op.get("/v1/cohorts/new-agents/members").json() == ["pi-2"]
    r = op.post("/v1/cohorts", json={"name": "bad", "filter": {"agent_version": "about 2"}})
    assert r.status_code == 422
    assert op.post("/v1/cohorts", json={"name": "eu-pis"}).status_code == 409
    assert api.as_("vera").delete("/v1/cohorts/doors").status_code == 403
    assert op.delete("/v1/cohorts/doors").status_code == 204
    assert op.get("/v1/cohorts/doors").status_code == 404


def test_audit_answers_what_ran_where_and_who_decided(api, make_bundle):
    op = api.as_("olivia")
    mv = op.post("/v1/models", content=make_bundle(1)).json()
    api.as_("bob").post("/v1/approvals", json={"model": "digits", "version": 1, "reason": "eval ok"})
    op.post("/v1/devices", json={"id": "pi-1", "region": "eu"})
    op.post("/v1/devices", json={"id": "pi-2", "region": "eu"})
    op.post("/v1/cohorts", json={"name": "eu", "filter": {"region": ["eu"]}})
    before = time.time()
    time.sleep(0.01)
    r = op.put("/v1/cohorts/eu/desired", json={"model": "digits", "version": 1, "reason": "ship v1 to eu"})
    assert r.json() == ["pi-1", "pi-2"]
    report_running(api, "pi-1", "digits", 1, mv["sha256"])
    t_running = time.time()
    time.sleep(0.01)
    report_running(api, "pi-1", "digits", 1, "0" * 64, reason="rolled back: health check failed")

    at = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"  # noqa: E731
    state = op.get("/v1/audit/state", params={"device": "pi-1", "at": at(t_running)}).json()["devices"]
    assert len(state) == 1
    s = state[0]
    assert (s["model"], s["version"], s["sha256"]) == ("digits", 1, mv["sha256"])
    assert (s["decided_by"], s["decision_reason"], s["desired_version"]) == ("olivia", "ship v1 to eu", 1)
    now = op.get("/v1/audit/state", params={"device": "pi-1", "at": at(time.time())}).json()["devices"][0]
    assert now["sha256"] == "0" * 64 and now["reason"] == "rolled back: health check failed"
    cohort = op.get("/v1/audit/state", params={"cohort": "eu", "at": at(time.time())}).json()["devices"]
    assert [(d["device_id"], d["model"], d["desired_version"]) for d in cohort] == [("pi-1", "digits", 1), ("pi-2", None, 1)]
    assert op.get("/v1/audit/state", params={"device": "pi-1", "at": at(before)}).json()["devices"] == []
    assert op.get("/v1/audit/state", params={"device": "pi-1", "at": "yesterday"}).status_code == 422
    assert op.get("/v1/audit/state", params={"at": at(before)}).status_code == 422

    actions = [e["action"] for e in op.get("/v1/audit").json()]
    assert actions[:1] == ["token.created"]
    assert {"model.registered", "model.approved", "cohort.created", "desired.assigned", "device.actual_changed"} <= set(actions)
    assert op.get("/v1/audit/verify").json()["ok"] is True


def test_audit_verify_detects_edits_and_deletions(api):
    op = api.as_("olivia")
    for i in range(5):
        op.post("/v1/devices", json={"id": f"pi-{i}"})
    v = op.get("/v1/audit/verify").json()
    assert v["ok"] and v["entries"] == v["head_seq"] == 9  # 4 tokens + 5 devices
    engine = api.app.state.engine
    with engine.begin() as conn:
        conn.execute(text("UPDATE auditentry SET actor = 'mallory' WHERE seq = 6"))
    v = op.get("/v1/audit/verify").json()
    assert not v["ok"] and v["problems"] == ["entry 6: content does not match its hash (edited after it was written)"]
    with engine.begin() as conn:
        conn.execute(text("UPDATE auditentry SET actor = 'olivia' WHERE seq = 6"))
        conn.execute(text("DELETE FROM auditentry WHERE seq = 7"))
    v = op.get("/v1/audit/verify").json()
    assert not v["ok"] and "entry 7..7 missing" in v["problems"][0]
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM auditentry WHERE seq >= 7"))
    v = op.get("/v1/audit/verify").json()
    assert not v["ok"] and "entries deleted from the end" in v["problems"][0]


def test_enrolment_rejects_bad_ids_and_duplicates(api):
    op = api.as_("olivia")
    assert op.post("/v1/devices", json={"id": "bad/id"}).status_code == 422
    assert op.post("/v1/devices", json={"id": "pi-1", "tags": ["ok", "not ok"]}).status_code == 422
    assert op.post("/v1/devices", json={"id": "pi-1", "tags": ["b", "a", "a"]}).json()["tags"] == ["a", "b"]
    assert op.post("/v1/devices", json={"id": "pi-1"}).status_code == 409
    assert op.get("/v1/devices/nope").status_code == 404
    with Session(api.app.state.engine) as s:
        assert len(s.exec(select(Device)).all()) == 1


def test_telemetry_endpoint_merges_replica_shards_and_metrics_are_exported(api):
    from controller.core.tables import TelemetryAggregate
    from shared.telemetry import N_LATENCY_BUCKETS

    def lat(i: int, n: int) -> list[int]:
        out = [0] * N_LATENCY_BUCKETS
        out[i] = n
        return out

    with Session(api.app.state.engine) as s:
        for shard, n in (("a", 90), ("b", 10)):
            s.add(
                TelemetryAggregate(
                    model="digits",
                    version=3,
                    role="production",
                    cohort="*",
                    window_start=1_800_000_000,
                    window_s=60,
                    shard=shard,
                    windows=n,
                    summary={
                        "model": "digits",
                        "version": 3,
                        "count": n,
                        "errors": 1,
                        "latency_ms": lat(20 if shard == "a" else 40, n),
                    },
                )
            )
        s.commit()
    rows = api.as_("vera").get("/v1/telemetry", params={"model": "digits"}).json()
    assert len(rows) == 1
    w = rows[0]
    assert (w["windows"], w["count"], w["errors"]) == (100, 100, 2)
    assert w["p50_ms"] < w["p99_ms"]
    assert api.as_("vera").get("/v1/telemetry", params={"model": "digits", "cohort": "eu"}).json() == []
    metrics = api.as_("vera").get("/metrics")
    assert metrics.status_code == 200
    assert 'edgefleet_ingest_messages_total{kind="telemetry",outcome="malformed"}' in metrics.text
    assert "edgefleet_http_requests_total" in metrics.text
    assert api.admin.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_concurrent_audit_appends_form_one_gapless_chain(api):
    import threading

    from controller.core import audit

    def worker(n: int) -> None:
        for i in range(8):
            with Session(api.app.state.engine) as s:
                audit.record(s, actor=f"t{n}", action="test.append", subject=f"thread:{n}", evidence={"i": i})
                s.commit()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    v = api.admin.get("/v1/audit/verify").json()
    assert v["ok"], v["problems"]
    assert v["entries"] == 4 + 32  # 4 token entries from the fixture
