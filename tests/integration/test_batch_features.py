"""Batch features in the controller: set (API and CLI), audited, delivered in the signed desired state of
every device they reach, listed; and the point-in-time join training uses never leaks a later value."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from agent.ota.checks import check_desired
from controller import cli
from controller.cli import common
from controller.core.config import Settings
from controller.core.tables import AuditEntry, BatchFeature, Cohort, Device
from controller.features.delivery import affected, deliver, reconcile
from controller.features.store import FeatureValueError, ScopeNotFoundError, end_value, point_in_time_join, set_value
from controller.fleet.assignments import sign_for
from controller.fleet.director import Director
from shared.canonical import canonical_json
from shared.features import BatchFeatureValue
from shared.messages import Assignment
from shared.signing import generate_private_key_file, key_id, load_public_key, verify_document
from shared.topics import Kind, device_topic
from tests.controller_app import ADMIN_TOKEN, running_api, settings_for
from tests.mqttwatch import Watcher

pytestmark = [pytest.mark.integration]


@pytest.fixture
def api(tmp_path, database_url, mosquitto):
    with running_api(settings_for(tmp_path, database_url, mosquitto.port)) as a:
        a.make("olivia", "operator")
        a.make("vic", "viewer")
        yield a


class _InProcess(TestClient):
    """The CLI's HTTP client pointed at the running app, without running its lifespan again
    (a second start-up would replace the app's MQTT connection mid-test)."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cli_json(api, monkeypatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(common, "client", lambda url, token: _InProcess(api.app, headers={"Authorization": f"Bearer {token}"}))
    r = CliRunner().invoke(cli.app, [*args, "--token", ADMIN_TOKEN, "--json"])
    return r.exit_code, r.stdout, r.stderr


def test_a_value_is_audited_signed_into_desired_states_and_listed(api, mosquitto, onnx_bundle, monkeypatch):
    tag = uuid.uuid4().hex[:6]  # the broker is shared by the session: retained states must not leak between tests
    a, b, c = f"fa-{tag}", f"fb-{tag}", f"fc-{tag}"
    op = api.as_("olivia")
    for d in (a, b, c):
        assert op.post("/v1/devices", json={"id": d}).status_code == 201
    assert op.post("/v1/cohorts", json={"name": f"north-{tag}", "members": [a, b]}).status_code == 201
    assert op.post("/v1/models", content=onnx_bundle).status_code == 201
    assert op.put(f"/v1/devices/{a}/desired", json={"model": "digits", "version": 1, "role": "canary"}).status_code == 200
    key = load_public_key(op.get("/v1/trust").json()["director_public_key"])
    trusted = {key_id(key): key}
    watch = Watcher(mosquitto.host, mosquitto.port, device_topic(a, Kind.DESIRED), device_topic(b, Kind.DESIRED))
    try:
        first = watch.wait_for(lambda m: "signed" in m, f"{a}/desired", timeout=10)
        assert "features" not in first["signed"]  # nothing set yet: the desired state is as before

        r = op.post("/v1/features", json={"name": "dark_level", "value": 1.5, "scope": f"cohort:north-{tag}", "reason": "dusk"})
        assert r.status_code == 201, r.text
        row = r.json()
        assert row["delivered_to"] == 2 and row["set_by"] == "olivia" and row["valid_to"] is None

        env = watch.wait_for(lambda m: "features" in m.get("signed", {}), f"{a}/desired", timeout=10)
        desired = check_desired(canonical_json(env), device_id=a, trusted=trusted, last_counter=1, at=env["signed"]["issued_at"])
        assert [(f.name, f.value, f.scope) for f in desired.features] == [("dark_level", 1.5, f"cohort:north-{tag}")]
        assert desired.assignments["canary"].model == "digits"  # the assignment is kept
        # b has no desired state yet: it gets the value with its first assignment
        assert [m for t, m, _ in watch.messages if t.startswith(device_topic(b, Kind.DESIRED))] == []
        assert op.put(f"/v1/devices/{b}/desired", json={"model": "digits", "version": 1, "role": "canary"}).status_code == 200
        env_b = watch.wait_for(lambda m: "signed" in m, f"{b}/desired", timeout=10)
        assert [f["value"] for f in env_b["signed"]["features"]] == [1.5]

        # the CLI: a device's own value (more specific than the cohort's), then the list
        code, stdout, stderr = cli_json(
            api, monkeypatch, "features", "set", "dark_level", "2.5", "--device", a, "--reason", "recal"
        )
        assert code == 0, stderr
        assert json.loads(stdout)["scope"] == f"device:{a}"
        env = watch.wait_for(lambda m: len(m.get("signed", {}).get("features", [])) == 2, f"{a}/desired", timeout=10)
        values = [BatchFeatureValue.from_wire(f) for f in env["signed"]["features"]]
        assert {v.scope: v.value for v in values} == {f"cohort:north-{tag}": 1.5, f"device:{a}": 2.5}
        code, stdout, _ = cli_json(api, monkeypatch, "features", "list", "--name", "dark_level")
        listed = json.loads(stdout)
        assert code == 0 and [x["value"] for x in listed] == [2.5, 1.5]  # newest first
        code, stdout, _ = cli_json(api, monkeypatch, "features", "list", "--scope", f"device:{a}")
        assert [x["value"] for x in json.loads(stdout)] == [2.5]
        code, _, stderr = cli_json(api, monkeypatch, "features", "set", "dark_level", "1", "--device", a, "--fleet")
        assert code == 2 and "exactly one of --device, --cohort or --fleet" in stderr
    finally:
        watch.close()

    audit = [e for e in op.get("/v1/audit", params={"action": "feature.set"}).json() if e["action"] == "feature.set"]
    assert {(e["subject"], e["evidence"]["value"], e["actor"]) for e in audit} >= {
        (f"cohort:north-{tag}", 1.5, "olivia"),
        (f"device:{a}", 2.5, "admin"),
    }
    assert op.get("/v1/audit/verify").json()["ok"] is True


def test_bad_values_are_refused_with_the_reason_and_nothing_is_written(api):
    op = api.as_("olivia")
    assert op.post("/v1/devices", json={"id": "fz-1"}).status_code == 201
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    cases = [
        ({"name": "dark_level", "value": 1, "scope": "device:fz-1", "valid_from": past}, 422, "is in the past"),
        ({"name": "dark_level", "value": 1, "scope": "device:nobody"}, 404, "device 'nobody' is not enrolled"),
        ({"name": "dark_level", "value": 1, "scope": "cohort:nothing"}, 404, "cohort 'nothing' does not exist"),
        ({"name": "dark_level", "value": 1, "scope": "planet:mars"}, 422, "device:<id>, cohort:<name> or fleet"),
        ({"name": "9lives", "value": 1, "scope": "fleet"}, 422, "name"),
        (
            {"name": "dark_level", "value": 1, "scope": "fleet", "valid_to": past},
            422,
            "is not after valid_from",
        ),
    ]
    for body, status, fragment in cases:
        r = op.post("/v1/features", json=body)
        assert r.status_code == status and fragment in r.text, (body, r.text)
    assert op.get("/v1/features").json() == []
    assert api.as_("vic").post("/v1/features", json={"name": "x", "value": 1, "scope": "fleet"}).status_code == 403


def test_point_in_time_join_never_uses_a_value_set_after_capture(engine):
    """The leakage test over the real database: each captured sample gets the value that was in force
    (and had been recorded) when it was captured; a later value, even one for the same day, never."""
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp()
    with Session(engine) as s:
        s.add(Device(id="cam-1"))
        s.add(Device(id="cam-2"))
        s.add(Cohort(name="north", members=["cam-1", "cam-2"]))
        s.commit()
        set_value(s, name="dark_level", value=1.0, scope="cohort:north", actor="t", now=t0)
        set_value(s, name="dark_level", value=2.0, scope="device:cam-1", actor="t", now=t0 + 3600)
        set_value(s, name="dark_level", value=3.0, scope="device:cam-1", actor="t", now=t0 + 7200, valid_from=t0 + 10800)
        with pytest.raises(FeatureValueError, match="in the past"):  # backdating would rewrite what devices used
            set_value(s, name="dark_level", value=9.0, scope="device:cam-1", actor="t", now=t0 + 7200, valid_from=t0 + 1800)
        with pytest.raises(ScopeNotFoundError):
            set_value(s, name="dark_level", value=9.0, scope="device:cam-9", actor="t", now=t0)
        s.commit()

        def at(h: float) -> datetime:
            return datetime.fromtimestamp(t0 + h * 3600, timezone.utc)

        rows = [
            ("cam-1", "north", at(-1)),  # before anything was set
            ("cam-1", "north", at(0.5)),  # the cohort's value
            ("cam-1", "north", at(0.9999)),  # just before the device's own value was set
            ("cam-1", "north", at(1)),
            ("cam-1", "north", at(2.5)),  # the value scheduled at 2 h for 3 h is not in force yet
            ("cam-1", "north", at(3)),
            ("cam-2", "north", at(5)),  # another device of the cohort: the cohort's value throughout
        ]
        joined = point_in_time_join(s, rows, ["dark_level"])
        assert [j["dark_level"] for j in joined] == [None, 1.0, 1.0, 2.0, 2.0, 3.0, 1.0]

        recorded = {(r.scope, r.value): r.recorded_at for r in s.exec(select(BatchFeature)).all()}
        for (device, _, captured), j in zip(rows, joined, strict=True):
            if j["dark_level"] is None:
                continue
            source = next(k for k in recorded if k[1] == j["dark_level"])
            assert recorded[source] <= captured.timestamp(), f"{device} at {captured} joined a value recorded later"


def test_the_leader_reconciles_values_when_cohort_membership_changes(engine, tmp_path):
    director = Director(generate_private_key_file(tmp_path / "director.pem"))
    settings = Settings(environment="development", data_dir=tmp_path, public_url="https://c.example", mqtt_enabled=False)
    a = Assignment(model="digits", version=1, sha256="ab" * 32, length=10, url="https://c.example/v1/bundles/x")
    with Session(engine) as s:
        for d in ("in-1", "out-1", "idle-1"):
            s.add(Device(id=d))
        s.add(Cohort(name="south", members=["in-1"]))
        s.commit()
        for d in ("in-1", "out-1"):  # two devices with a desired state; idle-1 has none
            device = s.get(Device, d)
            sign_for(device, {"production": a}, director, settings)
            s.add(device)
        row = set_value(s, name="dark_level", value=1.0, scope="cohort:south", actor="t")
        deliver(s, affected(s, row.scope), director, settings)
        s.commit()
    published: list[tuple[str, dict]] = []

    def publish(device_id: str, envelope: dict) -> None:
        published.append((device_id, envelope))

    assert reconcile(engine, director, settings, publish) == 0, "nothing changed: nothing re-signed"
    with Session(engine) as s:
        cohort = s.get(Cohort, "south")
        cohort.members = ["out-1", "idle-1"]  # in-1 leaves, out-1 and idle-1 join (an operator's cohort edit)
        s.add(cohort)
        s.commit()
    assert reconcile(engine, director, settings, publish) == 2
    key = {director.key_id: load_public_key(director.public_key_hex)}
    signed = {d: verify_document(env, key) for d, env in published}
    assert "features" not in signed["in-1"] and signed["in-1"]["assignments"]["production"]["version"] == 1
    assert [(f["scope"], f["value"]) for f in signed["out-1"]["features"]] == [("cohort:south", 1.0)]
    with Session(engine) as s:
        idle = s.get(Device, "idle-1")
        assert idle.desired_counter == 0 and [f["value"] for f in idle.batch_features] == [1.0]  # for its first assignment
    assert reconcile(engine, director, settings, publish) == 0, "idempotent"


def test_ending_a_value_changes_only_the_future(engine, tmp_path):
    """A device's override ended: later samples (and the device) fall back to the cohort's value; samples
    captured while it was in force keep it. A value scheduled for later and ended never comes into force."""
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp()
    director = Director(generate_private_key_file(tmp_path / "director.pem"))
    settings = Settings(environment="development", data_dir=tmp_path, public_url="https://c.example", mqtt_enabled=False)
    with Session(engine) as s:
        s.add(Device(id="cam-1"))
        s.add(Cohort(name="north", members=["cam-1"]))
        s.commit()
        set_value(s, name="dark_level", value=1.0, scope="cohort:north", actor="t", now=t0)
        override = set_value(s, name="dark_level", value=2.0, scope="device:cam-1", actor="t", now=t0 + 3600)
        later = set_value(s, name="dark_level", value=5.0, scope="device:cam-1", actor="t", now=t0 + 3600, valid_from=t0 + 86400)
        assert override.id is not None and later.id is not None
        with pytest.raises(FeatureValueError, match="in the past"):
            end_value(s, value_id=override.id, actor="t", at=t0 + 3600, now=t0 + 7200)
        end_value(s, value_id=override.id, actor="t", reason="sensor replaced", now=t0 + 7200)
        end_value(s, value_id=later.id, actor="t", now=t0 + 7200)  # scheduled, then called off
        with pytest.raises(FeatureValueError, match="already ends"):
            end_value(s, value_id=override.id, actor="t", now=t0 + 7300)
        with pytest.raises(ScopeNotFoundError):
            end_value(s, value_id=999_999, actor="t", now=t0)
        device = s.get(Device, "cam-1")
        deliver(s, [device], director, settings, now=t0 + 7200)
        assert [(f["scope"], f["value"]) for f in device.batch_features] == [("cohort:north", 1.0)]
        s.commit()

        def at(h: float) -> datetime:
            return datetime.fromtimestamp(t0 + h * 3600, timezone.utc)

        rows = [("cam-1", "north", at(h)) for h in (0.5, 1.5, 1.9999, 2, 30)]
        assert [j["dark_level"] for j in point_in_time_join(s, rows)] == [1.0, 2.0, 2.0, 1.0, 1.0]
        assert [e.action for e in s.exec(select(AuditEntry).order_by(col(AuditEntry.seq))).all()][-2:] == [
            "feature.ended",
            "feature.ended",
        ]


def test_end_over_the_api_and_cli(api, mosquitto, monkeypatch):
    tag = uuid.uuid4().hex[:6]
    op = api.as_("olivia")
    assert op.post("/v1/devices", json={"id": f"fe-{tag}"}).status_code == 201
    row = op.post("/v1/features", json={"name": "dark_level", "value": 3.0, "scope": f"device:fe-{tag}"}).json()
    code, stdout, stderr = cli_json(api, monkeypatch, "features", "end", str(row["id"]), "-r", "replaced")
    assert code == 0, stderr
    ended = json.loads(stdout)
    assert ended["id"] == row["id"] and ended["valid_to"] is not None and ended["delivered_to"] == 1
    again = op.post(f"/v1/features/{row['id']}/end", json={})
    assert again.status_code == 409 and "already ends" in again.text
    assert op.get("/v1/features", params={"scope": f"device:fe-{tag}", "at": "2100-01-01T00:00:00Z"}).json() == []
