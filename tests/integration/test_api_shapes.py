"""The API's ecosystem conventions: RFC 9457 problems for every error, header pagination with totals on
lists, the manifest's JSON Schema, and /docs served with its own assets."""

from __future__ import annotations

import json

import jsonschema
import pytest

from shared import bundle as bundle_fmt
from tests.controller_app import running_api, settings_for

pytestmark = [pytest.mark.integration]


@pytest.fixture
def api(tmp_path):
    with running_api(settings_for(tmp_path, f"sqlite:///{tmp_path}/shapes.db")) as api:
        yield api


def test_every_error_is_a_problem(api):
    cases = [
        (api.admin.get("/v1/devices/nope"), 404),
        (api.admin.post("/v1/devices", json={"id": "pi-1", "tags": ["[bad]"]}), 422),
        (api.admin.get("/v1/devices", params={"limit": 0}), 422),
        (api.admin.get("/v1/devices", headers={"Authorization": "Bearer wrong"}), 401),
        (api.admin.post("/v1/models", content=b"not a tar"), 422),
        (api.admin.get("/v1/no-such-route"), 404),
    ]
    for r, status in cases:
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json", r.headers
        p = r.json()
        assert p["status"] == status and p["type"] == "about:blank" and isinstance(p["detail"], str) and p["title"]
        assert p["instance"] == r.request.url.path
    invalid = cases[1][0].json()
    assert invalid["errors"][0]["field"] == "tags" and "invalid tag '[bad]'" in invalid["errors"][0]["problem"]
    assert invalid["detail"].startswith("tags: ")
    assert cases[3][0].headers["www-authenticate"] == "Bearer"
    spec = api.admin.get("/openapi.json").json()
    err = spec["paths"]["/v1/devices/{device_id}"]["get"]["responses"]["404"]["content"]
    assert list(err) == ["application/problem+json"]


def test_lists_page_with_totals_and_next_links(api):
    for i in range(7):
        assert api.admin.post("/v1/devices", json={"id": f"d-{i}"}).status_code == 201
    r = api.admin.get("/v1/devices", params={"limit": 3})
    assert [d["id"] for d in r.json()] == ["d-0", "d-1", "d-2"] and r.headers["x-total-count"] == "7"
    seen = [d["id"] for d in r.json()]
    while "next" in r.links:
        r = api.admin.get(r.links["next"]["url"])
        seen += [d["id"] for d in r.json()]
    assert seen == [f"d-{i}" for i in range(7)] and "link" not in r.headers
    r = api.admin.get("/v1/audit", params={"limit": 2, "offset": 6})
    assert r.headers["x-total-count"] == "7" and len(r.json()) == 1 and "link" not in r.headers
    for path in ("/v1/models", "/v1/approvals", "/v1/cohorts", "/v1/tokens", "/v1/devices/d-1/events", "/v1/devices/d-1/history"):
        assert api.admin.get(path).headers["x-total-count"] == "0", path


def test_manifest_schema_accepts_real_manifests_and_rejects_broken_ones(api, make_bundle):
    r = api.admin.get("/v1/schemas/manifest.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/schema+json"
    schema = r.json()
    jsonschema.Draft202012Validator.check_schema(schema)
    manifest = json.loads(json.dumps(bundle_fmt.read(make_bundle(1)).manifest.to_dict()))
    jsonschema.validate(manifest, schema)
    for broken in (
        {**manifest, "runtime": "pytorch"},
        {**manifest, "model_file": "model.tflite"},
        {**manifest, "name": "Digits!"},
        {**manifest, "version": 0},
        {**manifest, "golden": {"vectors": [], "atol": 0.1}},
        {k: v for k, v in manifest.items() if k != "model_sha256"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
    assert api.admin.get("/v1/schemas/nope.json").status_code == 404


def test_docs_use_the_controllers_own_assets(api):
    html = api.admin.get("/docs").text
    assert "/docs/static/swagger-ui-bundle.js" in html and "cdn" not in html.lower()
    assert api.admin.get("/docs/static/swagger-ui-bundle.js").status_code == 200
    assert api.admin.get("/redoc").status_code == 404
    assert api.admin.get("/", follow_redirects=False).headers["location"] == "/ui/"


def test_metrics_have_process_latency_and_fleet_gauges(api):
    from sqlmodel import Session

    from controller.core.tables import Device, DeviceEvent

    api.admin.post("/v1/devices", json={"id": "pi-1"})
    api.admin.post("/v1/devices", json={"id": "pi-2"})
    with Session(api.app.state.engine) as s:
        d = s.get(Device, "pi-2")
        assert d is not None
        d.online, d.actual = True, {"production": {"model": "digits", "version": 3, "sha256": "0" * 64}}
        s.add(d)
        s.add(DeviceEvent(device_id="pi-2", seq=1, kind="ota.rolled_back", severity="error", message="health check failed"))
        s.commit()
    text = api.admin.get("/metrics").text
    assert "process_resident_memory_bytes" in text and "python_info" in text
    assert 'edgefleet_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/devices"}' in text
    assert "edgefleet_devices_not_converged 0.0" in text
    assert 'edgefleet_ota_failures_total{kind="ota.rolled_back"} 1.0' in text
