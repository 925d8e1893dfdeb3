"""An assignment publishes a director-signed, retained desired state; registry changes reach the TUF targets."""

from __future__ import annotations

import json
import uuid

import pytest

from shared.signing import key_id, load_public_key, verify_document
from shared.topics import Kind, device_topic
from tests.controller_app import running_api, settings_for
from tests.mqttwatch import Watcher

pytestmark = [pytest.mark.integration]


@pytest.fixture
def api(tmp_path, database_url, mosquitto):
    with running_api(settings_for(tmp_path, database_url, mosquitto.port)) as a:
        a.make("olivia", "operator")
        a.make("alice", "approver")
        yield a


def test_assignment_publishes_a_signed_retained_desired_state(api, mosquitto, onnx_bundle):
    dev = f"pub-{uuid.uuid4().hex[:8]}"  # the broker is shared by the session: retained state must not leak
    op = api.as_("olivia")
    mv = op.post("/v1/models", content=onnx_bundle).json()
    assert api.as_("alice").post("/v1/approvals", json={"model": "digits", "version": 1, "reason": "ok"}).status_code == 201
    assert op.post("/v1/devices", json={"id": dev}).status_code == 201
    watch = Watcher(mosquitto.host, mosquitto.port, device_topic(dev, Kind.DESIRED))
    r = op.put(f"/v1/devices/{dev}/desired", json={"model": "digits", "version": 1})
    assert r.status_code == 200, r.text
    envelope = watch.wait_for(lambda m: "signed" in m, "/desired", timeout=10)
    assert watch.messages[-1][2] is False  # live delivery; the broker keeps it retained for later subscribers
    key = load_public_key(op.get("/v1/trust").json()["director_public_key"])
    signed = verify_document(envelope, {key_id(key): key})
    a = signed["assignments"]["production"]
    assert (a["sha256"], a["length"], signed["device_id"]) == (mv["sha256"], mv["length"], dev)
    assert a["url"] == f"http://testserver/v1/bundles/{mv['sha256']}"
    assert op.get(f"/v1/bundles/{mv['sha256']}").content == onnx_bundle
    late = Watcher(mosquitto.host, mosquitto.port, device_topic(dev, Kind.DESIRED))
    assert late.wait_for(lambda m: "signed" in m, "/desired", timeout=10) == envelope
    assert late.messages[0][2] is True
    watch.close()
    late.close()


def test_registered_and_revoked_versions_reach_the_signed_tuf_targets(api, make_bundle):
    op, admin = api.as_("olivia"), api.admin
    for v in (1, 2, 3):
        assert op.post("/v1/models", content=make_bundle(v)).status_code == 201

    def targets():
        timestamp = json.loads(op.get("/v1/tuf/metadata/timestamp.json").content)["signed"]
        snapshot_v = timestamp["meta"]["snapshot.json"]["version"]
        snapshot = json.loads(op.get(f"/v1/tuf/metadata/{snapshot_v}.snapshot.json").content)["signed"]
        targets_v = snapshot["meta"]["targets.json"]["version"]
        return json.loads(op.get(f"/v1/tuf/metadata/{targets_v}.targets.json").content)["signed"]["targets"]

    assert {t["custom"]["version"] for t in targets().values()} == {1, 2, 3}
    # a revoked version leaves the signed targets (devices refuse it); the older v1 stays installable
    r = admin.post("/v1/models/digits/versions/2/revoke", json={"reason": "bad"})
    assert r.status_code == 200 and r.json()["floor"] == 1
    assert {t["custom"]["version"] for t in targets().values()} == {1, 3}
    assert {t["custom"]["floor"] for t in targets().values()} == {1}
    # revoking the bottom one raises the floor over every revoked version below a good one
    r = admin.post("/v1/models/digits/versions/1/revoke", json={"reason": "bad"})
    assert r.status_code == 200 and r.json()["floor"] == 3
    assert {t["custom"]["version"]: t["custom"]["floor"] for t in targets().values()} == {3: 3}
