"""Controller HTTP API in-process against a real database and a real broker."""

import uuid

import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.core.config import Settings
from shared.signing import load_public_key, verify_document
from shared.topics import Kind, device_topic
from tests.mqttwatch import Watcher

pytestmark = pytest.mark.integration
TOKEN = "integration-token"


@pytest.fixture
def client(database_url, mosquitto, tmp_path):
    settings = Settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        broker_host=mosquitto.host,
        broker_port=mosquitto.port,
        admin_token=TOKEN,
        public_url="http://ctl.test",
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def test_requires_a_token(client):
    r = client.get("/v1/devices", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert "invalid API token" in r.json()["detail"]


def test_upload_register_assign_publishes_signed_desired(client, mosquitto, onnx_bundle):
    dev = f"int-{uuid.uuid4().hex[:8]}"  # the broker is shared by the session: retained state must not leak
    r = client.post("/v1/models", content=onnx_bundle)
    assert r.status_code == 201, r.text
    mv = r.json()
    assert client.post("/v1/models", content=onnx_bundle).status_code == 201  # idempotent re-upload
    assert client.post("/v1/devices", json={"id": dev}).status_code == 201
    assert client.post("/v1/devices", json={"id": dev}).status_code == 409

    watch = Watcher(mosquitto.host, mosquitto.port, device_topic(dev, Kind.DESIRED))
    r = client.put(f"/v1/devices/{dev}/desired", json={"model": "digits", "version": 1})
    assert r.status_code == 200, r.text
    envelope = watch.wait_for(lambda m: "signed" in m, "/desired", timeout=10)
    key = load_public_key(client.get("/v1/trust").json()["director_public_key"])
    from shared.signing import key_id

    signed = verify_document(envelope, {key_id(key): key})
    a = signed["assignments"]["production"]
    assert (a["sha256"], a["length"], signed["counter"]) == (mv["sha256"], mv["length"], 1)
    assert a["url"] == f"http://ctl.test/v1/bundles/{mv['sha256']}"
    assert client.get(f"/v1/bundles/{mv['sha256']}").content == onnx_bundle
    watch.close()


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b"", 422, "invalid bundle"),
        (b"not a tar" * 100, 422, "invalid bundle"),
    ],
)
def test_bad_bundles_are_refused_and_nothing_is_stored(client, body, status, detail):
    r = client.post("/v1/models", content=body)
    assert r.status_code == status
    assert detail in r.json()["detail"]
    assert client.get("/v1/models").json() == []


def test_conflicting_reupload_is_refused(client, make_bundle):
    assert client.post("/v1/models", content=make_bundle(1)).status_code == 201
    other = make_bundle(1, seed=7)
    r = client.post("/v1/models", content=other)
    assert r.status_code == 409 and "already exists" in r.json()["detail"]


@pytest.mark.parametrize(
    ("device", "body", "status"),
    [
        ("nope", {"model": "digits", "version": 1}, 404),
        ("int-2", {"model": "digits", "version": 99}, 404),
        ("int-2", {"model": "digits", "version": 1, "role": "boss"}, 422),
        ("int-2", {"model": "digits", "version": 0}, 422),
    ],
)
def test_bad_assignments(client, onnx_bundle, device, body, status):
    client.post("/v1/models", content=onnx_bundle)
    client.post("/v1/devices", json={"id": "int-2"})
    r = client.put(f"/v1/devices/{device}/desired", json=body)
    assert r.status_code == status, r.text
    assert client.get("/v1/devices/int-2").json()["desired"] == {}


def test_invalid_device_id(client):
    r = client.post("/v1/devices", json={"id": "a/b"})
    assert r.status_code == 422 and "Invalid device_id" in r.json()["detail"]
