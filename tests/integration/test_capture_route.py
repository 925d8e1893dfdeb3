"""The controller's data-capture route (real controller process): bounded, validated, idempotent."""

from __future__ import annotations

import httpx
import pytest

from firmware_sim.procs import start_controller

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def controller(mosquitto, tmp_path_factory):
    proc = start_controller(tmp_path_factory.mktemp("ctl"), broker_host=mosquitto.host, broker_port=mosquitto.port)
    with proc.client() as admin:
        assert admin.post("/v1/devices", json={"id": "cap-1"}).status_code == 201
    yield proc
    proc.stop()


@pytest.fixture
def api(controller):
    with httpx.Client(base_url=controller.url, timeout=30) as client:  # devices carry no operator token
        yield client


@pytest.fixture
def admin(controller):
    with controller.client() as client:
        yield client


def item(i: int, label: int | None = None) -> dict:
    return {"id": i, "sample": {"ts": 1.0, "role": "production", "model": "digits", "version": 1,
                                "inputs": [[0.0, 1.0]], "prediction": 3, "label": label}}  # fmt: skip


def test_batches_are_stored_and_a_resent_batch_is_not_counted_twice(api, admin):
    batch = {"samples": [item(1, 3), item(2), item(3, 4)]}
    r = api.post("/v1/capture/cap-1", json=batch)
    assert r.status_code == 200, r.text
    assert r.json() == {"stored": 3, "file": "000000000001-000000000003.jsonl"}
    assert api.post("/v1/capture/cap-1", json=batch).status_code == 200  # answer lost, agent retries
    assert api.post("/v1/capture/cap-1", json={"samples": [item(3, 4), item(4)]}).status_code == 200
    assert admin.get("/v1/capture/cap-1").json() == {"device_id": "cap-1", "samples": 4, "labelled": 2, "batches": 2}
    assert api.get("/v1/capture/cap-1").status_code == 401


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
def test_bad_uploads_get_a_clear_error(api, device, body, code):
    r = (
        api.post(f"/v1/capture/{device}", json=body)
        if isinstance(body, dict)
        else api.post(f"/v1/capture/{device}", content=body)
    )
    assert r.status_code == code, r.text
