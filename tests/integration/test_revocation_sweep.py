"""Revoking a version moves every device off it at once, outside rollouts too (controller/fleet/revocation.py).

Real API, database and broker: the new desired states are signed in the revoking
transaction and published once it commits; an A/B experiment with an arm on the
version stops; a device with no older version its role may run keeps its model,
and the audit entry says so.
"""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from controller.core.tables import AuditEntry
from shared.topics import Kind, device_topic
from tests.controller_app import running_api, settings_for
from tests.mqttwatch import Watcher

pytestmark = [pytest.mark.integration]
DEVICES = [f"rv-{i}" for i in range(4)]


@pytest.fixture
def api(tmp_path, database_url, mosquitto, make_bundle):
    with running_api(settings_for(tmp_path, database_url, mosquitto.port)) as a:
        a.make("alice", "approver")
        for v in (1, 2, 3):
            assert a.admin.post("/v1/models", content=make_bundle(v)).status_code == 201
        for v in (1, 2):  # v3 is registered but not approved: production may not run it
            r = a.as_("alice").post("/v1/approvals", json={"model": "digits", "version": v, "reason": "eval"})
            assert r.status_code == 201, r.text
        for d in DEVICES:
            assert a.admin.post("/v1/devices", json={"id": d}).status_code == 201
        assert a.admin.post("/v1/cohorts", json={"name": "field", "members": DEVICES}).status_code == 201
        yield a


def desired(api, d: str) -> dict[str, int]:
    return {r: a["version"] for r, a in api.admin.get(f"/v1/devices/{d}").json()["desired"].items()}


def audit_of(api, action: str) -> list[AuditEntry]:
    with Session(api.app.state.engine) as s:
        return list(s.exec(select(AuditEntry).where(AuditEntry.action == action)).all())


def test_revoking_the_version_a_cohort_runs_moves_every_device_to_the_newest_older_one_at_once(api, mosquitto):
    assert api.admin.put("/v1/cohorts/field/desired", json={"model": "digits", "version": 2}).status_code == 200
    shadowed = DEVICES[0]
    r = api.admin.put(f"/v1/devices/{shadowed}/desired", json={"model": "digits", "version": 2, "role": "shadow"})
    assert r.status_code == 200, r.text
    assert desired(api, shadowed) == {"production": 2, "shadow": 2}
    watch = Watcher(mosquitto.host, mosquitto.port, *(device_topic(d, Kind.DESIRED) for d in DEVICES))
    try:
        r = api.as_("alice").post("/v1/models/digits/versions/2/revoke", json={"reason": "mislabelled data"})
        assert r.status_code == 200, r.text
        # v3 is newer and not approved, v2 revoked: production falls back to v1; the shadow role goes
        assert {d: desired(api, d) for d in DEVICES} == {d: {"production": 1} for d in DEVICES}
        for d in DEVICES:  # published with the revocation, no job or operator in between
            watch.wait_for(
                lambda m, d=d: (
                    m.get("signed", {}).get("device_id") == d
                    and m["signed"]["assignments"].get("production", {}).get("version") == 1
                    and "shadow" not in m["signed"]["assignments"]
                ),
                "/desired",
                timeout=10,
            )
    finally:
        watch.close()
    [entry] = audit_of(api, "desired.revoked_replaced")
    assert entry.subject == "model:digits:2" and entry.actor == "system:revocation"
    assert entry.evidence["devices"][shadowed] == {"production": 1, "shadow": None}
    assert sorted(entry.evidence["devices"]) == sorted(DEVICES) and entry.evidence["kept"] == []


def test_with_no_older_version_devices_keep_their_model_and_the_audit_names_them(api):
    assert api.admin.put("/v1/cohorts/field/desired", json={"model": "digits", "version": 1}).status_code == 200
    before = {d: desired(api, d) for d in DEVICES}
    assert api.as_("alice").post("/v1/models/digits/versions/1/revoke", json={"reason": "bad"}).status_code == 200
    assert {d: desired(api, d) for d in DEVICES} == before  # never left without a model
    [entry] = audit_of(api, "desired.revoked_replaced")
    assert sorted(entry.evidence["kept"]) == sorted(DEVICES) and entry.evidence["devices"] == {}
    assert "assign one" in entry.evidence["kept_why"]
    r = api.admin.put("/v1/cohorts/field/desired", json={"model": "digits", "version": 1})
    assert r.status_code == 409 and "revoked" in r.text


def test_an_experiment_with_a_revoked_arm_stops_and_its_devices_leave_the_version(api):
    body = {
        "name": "ab",
        "cohort": "field",
        "model": "digits",
        "arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2}],
    }
    r = api.admin.post("/v1/experiments", json=body)
    assert r.status_code == 201, r.text
    eid = r.json()["id"]
    on_b = [d for d in DEVICES if desired(api, d).get("production") == 2]
    assert on_b, "the stable hash put no device on arm b"
    assert api.as_("alice").post("/v1/models/digits/versions/2/revoke", json={"reason": "bad"}).status_code == 200
    exp = api.admin.get(f"/v1/experiments/{eid}").json()
    assert exp["state"] == "STOPPED" and "v2 was revoked" in exp["reason"]
    assert all(desired(api, d)["production"] == 1 for d in DEVICES)
    assert any(e.subject == f"experiment:{eid}" for e in audit_of(api, "experiment.stopped"))
    api.app.state.experiments.tick(api.app.state.engine)  # the leader's next look changes nothing and raises nothing
    assert all(desired(api, d)["production"] == 1 for d in DEVICES)
