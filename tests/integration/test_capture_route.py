"""The controller's data-capture route (real controller process): device-signed, bounded, never overwritten."""

from __future__ import annotations

import json
import urllib.error

import httpx
import pytest

from controller.identity.pki import new_key
from firmware_sim.procs import start_controller
from shared.csr import make_csr
from shared.device_auth import sign

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Device:
    """An enrolled device: its key and the serial of the certificate the controller issued it."""

    def __init__(self, admin: httpx.Client, device_id: str) -> None:
        assert admin.post("/v1/devices", json={"id": device_id}).status_code == 201
        token = admin.post("/v1/identity/tokens", json={"device_id": device_id}).json()["token"]
        self.id, self.key = device_id, new_key()
        r = admin.post("/v1/identity/enrol", json={"token": token, "csr": make_csr(self.key, device_id).decode()})
        assert r.status_code == 201, r.text
        self.serial = r.json()["serial"]

    def post(self, api: httpx.Client, body: object, *, as_device: str | None = None, **kw: object) -> httpx.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        path = f"/v1/capture/{as_device or self.id}"
        auth = sign(self.key, self.serial, "POST", path, data)
        return api.post(path, content=data, headers={"Authorization": auth, "Content-Type": "application/json"}, **kw)


@pytest.fixture(scope="module")
def controller(mosquitto, tmp_path_factory):
    proc = start_controller(
        tmp_path_factory.mktemp("ctl"),
        broker_host=mosquitto.host,
        broker_port=mosquitto.port,
        env={"EDGEFLEET_CAPTURE_QUOTA_FILES": "5", "EDGEFLEET_CAPTURE_QUOTA_BYTES": "4000"},
    )
    with proc.client() as admin:
        proc.devices = {d: Device(admin, d) for d in ("cap-1", "cap-2", "cap-q")}  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture
def api(controller):
    with httpx.Client(base_url=controller.url, timeout=30) as client:  # devices carry no operator token
        yield client


@pytest.fixture
def dev(controller):
    return controller.devices["cap-1"]


@pytest.fixture
def admin(controller):
    with controller.client() as client:
        yield client


def item(i: int, label: int | None = None, pid: str = "") -> dict:
    return {"id": i, "sample": {"ts": 1.0, "role": "production", "model": "digits", "version": 1,
                                "inputs": [[0.0, 1.0]], "prediction": 3, "label": label, "prediction_id": pid}}  # fmt: skip


def test_batches_are_stored_and_a_resent_batch_is_not_counted_twice(api, admin, dev):
    batch = {"samples": [item(1, 3), item(2), item(3, 4)]}
    r = dev.post(api, batch)
    assert r.status_code == 200, r.text
    assert r.json() == {"stored": 3, "file": "000000000001-000000000003.jsonl"}
    assert dev.post(api, batch).status_code == 200  # answer lost, agent retries
    assert dev.post(api, {"samples": [item(3, 4), item(4)]}).status_code == 200
    assert admin.get("/v1/capture/cap-1").json() == {"device_id": "cap-1", "samples": 4, "labelled": 2, "batches": 2}
    assert dev.post(api, {"samples": [item(5, None, "run-5"), item(6, 2, "run-5")]}).status_code == 200  # sampled, then labelled
    assert admin.get("/v1/capture/cap-1").json() == {"device_id": "cap-1", "samples": 5, "labelled": 3, "batches": 3}
    assert api.get("/v1/capture/cap-1").status_code == 401


def test_uploads_need_the_devices_own_credential_and_never_overwrite(api, admin, controller, dev):
    batch = {"samples": [item(100, 1), item(101)]}
    assert api.post("/v1/capture/cap-2", json=batch).status_code == 401  # no credential
    other = controller.devices["cap-2"]
    assert other.post(api, batch, as_device="cap-1").status_code == 401  # cap-2's key for cap-1's data
    stranger = Device.__new__(Device)
    stranger.id, stranger.key, stranger.serial = "cap-1", new_key(), dev.serial  # right serial, wrong key
    assert stranger.post(api, batch).status_code == 401
    path = "/v1/capture/cap-1"
    body = json.dumps(batch).encode()
    stale = sign(dev.key, dev.serial, "POST", path, body, ts=1)
    assert api.post(path, content=body, headers={"Authorization": stale}).status_code == 401
    tampered = sign(dev.key, dev.serial, "POST", path, body)
    assert (
        api.post(path, content=body.replace(b'"label": 1', b'"label": 7'), headers={"Authorization": tampered}).status_code == 401
    )
    assert dev.post(api, batch).status_code == 200
    changed = {"samples": [item(100, 9), item(101)]}  # same ids, other content: the stored batch stays
    assert dev.post(api, changed).status_code == 409
    assert admin.get("/v1/capture/cap-1").json()["labelled"] >= 1


def test_batches_are_named_by_the_agents_spool_so_a_wiped_device_never_clashes(api, admin, controller):
    """Agents name their spool (a random id made with it): a wiped device's new spool starts its sample ids at 1
    again under another id and its batches are stored beside the old ones; batches of agents before spool ids
    (no ``spool``) keep their old names. A clash within one spool is still refused, never overwritten."""
    d = controller.devices["cap-2"]
    before = admin.get("/v1/capture/cap-2").json()["samples"]
    for spool in ("0123456789abcdef", "fedcba9876543210"):
        r = d.post(api, {"spool": spool, "samples": [item(1, 1), item(2)]})
        assert r.status_code == 200 and r.json()["file"] == f"{spool}-000000000001-000000000002.jsonl", r.text
    assert d.post(api, {"samples": [item(1, 1), item(2)]}).json()["file"] == "000000000001-000000000002.jsonl"
    assert admin.get("/v1/capture/cap-2").json()["samples"] == before + 6
    folder = controller.data_dir / "capture" / "cap-2"
    lines = [json.loads(x) for x in (folder / "0123456789abcdef-000000000001-000000000002.jsonl").read_text().splitlines()]
    assert [(x["spool"], x["id"]) for x in lines] == [("0123456789abcdef", 1), ("0123456789abcdef", 2)]
    assert d.post(api, {"spool": "0123456789abcdef", "samples": [item(1, 5), item(2)]}).status_code == 409
    assert d.post(api, {"spool": "0123456789ABCDEF/..", "samples": [item(1)]}).status_code == 422


def test_each_device_has_a_quota(api, admin, controller):
    q = controller.devices["cap-q"]
    codes = [q.post(api, {"samples": [item(1000 + i)]}).status_code for i in range(8)]
    assert codes[:5] == [200] * 5 and set(codes[5:]) == {507}, codes
    assert controller.devices["cap-2"].post(api, {"samples": [item(1)]}).status_code == 200  # others are not affected


@pytest.mark.parametrize(
    ("device", "body", "code"),
    [
        ("nobody", {"samples": [item(1)]}, 404),
        ("bad/id", {"samples": [item(1)]}, 404),
        ("cap-1", {"samples": []}, 422),
        ("cap-1", {"samples": [{"id": -1, "sample": {}}]}, 422),
        ("cap-1", b"\xff garbage", 422),
        ("cap-1", b"[" * 2_000_000, 413),
    ],
)
def test_bad_uploads_get_a_clear_error(api, dev, device, body, code):
    r = dev.post(api, body, as_device=device)
    assert r.status_code == code, r.text


def test_bundle_downloads_need_a_device_credential_when_the_deployment_asks(mosquitto, tmp_path):
    from agent.http import ControllerHttp
    from agent.identity import DeviceCredential, IdentityPaths, enrol

    proc = start_controller(
        tmp_path, broker_host=mosquitto.host, broker_port=mosquitto.port, env={"EDGEFLEET_BUNDLE_AUTH": "true"}
    )
    try:
        with proc.client() as admin:
            assert admin.post("/v1/devices", json={"id": "bun-1"}).status_code == 201
            token = admin.post("/v1/identity/tokens", json={"device_id": "bun-1"}).json()["token"]
        paths = IdentityPaths(tmp_path / "identity")
        enrol(proc.url, token, "bun-1", paths)
        url = f"{proc.url}/v1/bundles/{'a' * 64}"
        with httpx.Client(timeout=30) as anon:
            assert anon.get(url).status_code == 401
        signed = ControllerHttp(credential=DeviceCredential(paths))  # the agent's one HTTP client
        with pytest.raises(urllib.error.HTTPError) as err:
            signed.open(url)
        err.value.close()
        assert err.value.code == 404  # past the credential check: there is no such bundle
    finally:
        proc.stop()


def _api_answers_despite_slow_requests(controller, admin, head: bytes, first: bytes) -> None:
    """24 requests (more than the pool's 5 + 10 connections) send ``head`` and ``first`` and never the rest of
    their bodies; ``GET /v1/devices`` must still answer within 10 s."""
    import socket
    import time

    port = int(controller.url.rsplit(":", 1)[1])
    slow = []
    try:
        for _ in range(24):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(head + first)  # and the rest never comes
            slow.append(s)
        time.sleep(1.0)
        t0 = time.monotonic()
        r = admin.get("/v1/devices", timeout=40)
        assert r.status_code == 200 and time.monotonic() - t0 < 10, time.monotonic() - t0
    finally:
        for s in slow:
            s.close()


def test_uploads_whose_bodies_are_slow_hold_no_database_connection(controller, admin):
    """More slow uploads than the database pool has connections (5 + 10): the controller still answers at once.
    The route reads the body before it touches the database; it held a connection across the read, and the
    next upload waited for one in the event loop's thread, so every request stalled until the pool timed out."""
    auth = sign(new_key(), "1", "POST", "/v1/capture/cap-2", b"{}")  # well formed; the signature is never checked
    head = (f"POST /v1/capture/cap-2 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n").encode()  # fmt: skip
    _api_answers_despite_slow_requests(controller, admin, head, b'{"samples": [')


def test_bundle_uploads_whose_bodies_are_slow_hold_no_database_connection(controller, admin):
    """The same for operators' bundle uploads with a stored API token (whose lookup is a query): the token's
    transaction ends before the body is read, so slow uploads do not take the pool's connections."""
    token = admin.post("/v1/tokens", json={"principal": "slow-uploader", "role": "operator"}).json()["token"]
    head = (f"POST /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n").encode()  # fmt: skip
    _api_answers_despite_slow_requests(controller, admin, head, b"\x1f\x8b")
