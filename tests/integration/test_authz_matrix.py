"""Every route × every caller, with the exact status expected.

``MATRIX`` has one entry per (method, path) of the application's route table:
the least role the route needs (``PUBLIC`` when anyone may call it) and a
probe — a concrete request and the status it gets once the caller is let in.
Callers are anonymous, a device (the only bearer secret a device holds over
HTTP is its enrolment token, which must not open the API), and one API token
per role. Expected: ``PUBLIC`` routes answer every caller with the probe's
status; others answer 401 to anonymous and device, 403 to a role below the
one needed, and the probe's status to the rest.

A route added to the application without an entry here fails
``test_every_route_has_an_entry``, which names the role its dependencies
declare so the entry is easy to write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from controller.core.roles import Role
from tests.controller_app import Api, running_api, settings_for

pytestmark = [pytest.mark.integration]

PUBLIC = "public"
DEVICE_SIGNED = "device-signed"  # a request signed with a device key (shared/device_auth.py); no bearer token opens it
CALLERS = ("anonymous", "device", "metrics", "viewer", "operator", "approver", "admin")


@dataclass(frozen=True)
class Probe:
    needs: str  # PUBLIC or a Role value
    path: str  # concrete; ``{caller}`` and the names in ``Fixture.values`` are filled in
    ok: int  # the status once the caller is let in
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)


VIEW, OPER, APPR, ADMIN = Role.VIEWER.value, Role.OPERATOR.value, Role.APPROVER.value, Role.ADMIN.value
CAPTURE = {"samples": [{"id": 1, "sample": {"ts": 1.0, "role": "production", "model": "digits", "version": 1, "inputs": [0]}}]}

ARMS = [{"name": "a", "version": 1}, {"name": "b", "version": 1}]
EXPERIMENT = {"name": "x", "cohort": "none-{caller}", "model": "digits", "arms": ARMS}

MATRIX: dict[tuple[str, str], Probe] = {
    # documentation and health
    ("GET", "/openapi.json"): Probe(PUBLIC, "/openapi.json", 200),
    ("GET", "/docs"): Probe(PUBLIC, "/docs", 200),
    ("GET", "/healthz"): Probe(PUBLIC, "/healthz", 200),
    ("GET", "/v1/schemas/{name}.json"): Probe(PUBLIC, "/v1/schemas/manifest.json", 200),
    # the web console: its session is a cookie, never a bearer token, so every bearer caller is sent to the
    # login page (followed: 200), actions included; the console's own
    # role checks are tested in tests/e2e/test_console_browser.py and tests/integration/test_console_pages.py
    ("GET", "/"): Probe(PUBLIC, "/", 200),
    ("GET", "/ui/"): Probe(PUBLIC, "/ui/", 200),
    ("GET", "/ui/login"): Probe(PUBLIC, "/ui/login", 200),
    ("POST", "/ui/login"): Probe(PUBLIC, "/ui/login", 422),
    ("POST", "/ui/logout"): Probe(PUBLIC, "/ui/logout", 200),
    ("GET", "/ui/audit"): Probe(PUBLIC, "/ui/audit", 200),
    ("GET", "/ui/devices/{device_id}"): Probe(PUBLIC, "/ui/devices/pi-{caller}", 200),
    ("GET", "/ui/drift"): Probe(PUBLIC, "/ui/drift", 200),
    ("GET", "/ui/models"): Probe(PUBLIC, "/ui/models", 200),
    ("POST", "/ui/models/{name}/{version}/approve"): Probe(PUBLIC, "/ui/models/digits/1/approve", 200),
    ("GET", "/ui/rollouts"): Probe(PUBLIC, "/ui/rollouts", 200),
    ("GET", "/ui/telemetry"): Probe(PUBLIC, "/ui/telemetry", 200),
    ("GET", "/ui/{section}"): Probe(PUBLIC, "/ui/experiments", 200),
    ("GET", "/readyz"): Probe(PUBLIC, "/readyz", 200),
    # what devices fetch without a token (signed or content-addressed)
    ("GET", "/v1/bundles/{sha256}"): Probe(PUBLIC, "/v1/bundles/{sha256}", 200),
    ("GET", "/v1/trust"): Probe(PUBLIC, "/v1/trust", 200),
    ("GET", "/v1/tuf/metadata/{name}"): Probe(PUBLIC, "/v1/tuf/metadata/timestamp.json", 200),
    # offline release signing (development signs online: nothing is pending)
    ("GET", "/v1/tuf/pending"): Probe("viewer", "/v1/tuf/pending", 404),
    ("GET", "/v1/tuf/status"): Probe("viewer", "/v1/tuf/status", 200),
    ("POST", "/v1/tuf/pending/signatures"): Probe(
        "approver", "/v1/tuf/pending/signatures", 409, json={"version": 2, "keyid": "ab", "sig": "cd"}
    ),
    ("POST", "/v1/capture/{device_id}"): Probe(DEVICE_SIGNED, "/v1/capture/pi-{caller}", 401, json=CAPTURE),
    ("POST", "/v1/identity/enrol"): Probe(PUBLIC, "/v1/identity/enrol", 403, json={"token": "not-a-token", "csr": "x"}),
    ("POST", "/v1/identity/renew"): Probe(PUBLIC, "/v1/identity/renew", 422, json={"certificate": "x", "csr": "x"}),
    ("GET", "/v1/identity/ca"): Probe(PUBLIC, "/v1/identity/ca", 200),
    ("GET", "/v1/identity/crl"): Probe(PUBLIC, "/v1/identity/crl", 200),
    # identity administration
    ("POST", "/v1/identity/tokens"): Probe(OPER, "/v1/identity/tokens", 201, json={"device_id": "pi-{caller}"}),
    ("POST", "/v1/identity/devices/{device_id}/revoke"): Probe(ADMIN, "/v1/identity/devices/pi-{caller}/revoke", 200),
    # API tokens
    ("GET", "/v1/whoami"): Probe(VIEW, "/v1/whoami", 200),
    ("POST", "/v1/tokens"): Probe(ADMIN, "/v1/tokens", 201, json={"principal": "new-{caller}", "role": "viewer"}),
    ("GET", "/v1/tokens"): Probe(ADMIN, "/v1/tokens", 200),
    ("DELETE", "/v1/tokens/{token_id}"): Probe(ADMIN, "/v1/tokens/{victim}", 200),
    # models and approvals
    ("POST", "/v1/models"): Probe(OPER, "/v1/models", 422, content=b"not a bundle"),
    ("GET", "/v1/models"): Probe(VIEW, "/v1/models", 200),
    ("GET", "/v1/models/{name}"): Probe(VIEW, "/v1/models/digits", 200),
    ("GET", "/v1/models/{name}/versions/{version}"): Probe(VIEW, "/v1/models/digits/versions/1", 200),
    ("GET", "/v1/models/{name}/versions/{version}/lineage"): Probe(VIEW, "/v1/models/digits/versions/1/lineage", 200),
    ("GET", "/v1/models/{name}/aliases/{alias}"): Probe(VIEW, "/v1/models/digits/aliases/stable", 200),
    ("PUT", "/v1/models/{name}/aliases/{alias}"): Probe(OPER, "/v1/models/digits/aliases/set-{caller}", 200, json={"version": 1}),
    ("DELETE", "/v1/models/{name}/aliases/{alias}"): Probe(OPER, "/v1/models/digits/aliases/del-{caller}", 200),
    ("POST", "/v1/models/{name}/versions/{version}/revoke"): Probe(
        APPR, "/v1/models/digits/versions/99/revoke", 404, json={"reason": "matrix"}
    ),
    ("GET", "/v1/approvals"): Probe(VIEW, "/v1/approvals", 200),
    ("POST", "/v1/approvals"): Probe(APPR, "/v1/approvals", 404, json={"model": "digits", "version": 99, "reason": "matrix"}),
    # devices
    ("POST", "/v1/devices"): Probe(OPER, "/v1/devices", 201, json={"id": "new-{caller}"}),
    ("GET", "/v1/devices"): Probe(VIEW, "/v1/devices", 200),
    ("GET", "/v1/devices/{device_id}"): Probe(VIEW, "/v1/devices/pi-{caller}", 200),
    ("PATCH", "/v1/devices/{device_id}"): Probe(OPER, "/v1/devices/pi-{caller}", 200, json={"region": "eu"}),
    ("GET", "/v1/devices/{device_id}/events"): Probe(VIEW, "/v1/devices/pi-{caller}/events", 200),
    ("GET", "/v1/devices/{device_id}/history"): Probe(VIEW, "/v1/devices/pi-{caller}/history", 200),
    ("PUT", "/v1/devices/{device_id}/desired"): Probe(
        OPER, "/v1/devices/pi-{caller}/desired", 404, json={"model": "digits", "version": 99, "role": "canary"}
    ),
    # cohorts
    ("POST", "/v1/cohorts"): Probe(OPER, "/v1/cohorts", 201, json={"name": "new-{caller}"}),
    ("GET", "/v1/cohorts"): Probe(VIEW, "/v1/cohorts", 200),
    ("GET", "/v1/cohorts/{name}"): Probe(VIEW, "/v1/cohorts/keep-{caller}", 200),
    ("GET", "/v1/cohorts/{name}/members"): Probe(VIEW, "/v1/cohorts/keep-{caller}/members", 200),
    ("PATCH", "/v1/cohorts/{name}"): Probe(OPER, "/v1/cohorts/keep-{caller}", 200, json={"description": "edited"}),
    ("DELETE", "/v1/cohorts/{name}"): Probe(OPER, "/v1/cohorts/gone-{caller}", 204),
    ("PUT", "/v1/cohorts/{name}/desired"): Probe(
        OPER, "/v1/cohorts/keep-{caller}/desired", 404, json={"model": "digits", "version": 99, "role": "canary"}
    ),
    # batch features (the matrix's controller has no MQTT: a known scope would answer 503 after the checks)
    ("POST", "/v1/features"): Probe(
        OPER, "/v1/features", 404, json={"name": "dark_level", "value": 1.0, "scope": "device:none-{caller}"}
    ),
    ("GET", "/v1/features"): Probe(VIEW, "/v1/features", 200),
    ("POST", "/v1/features/{value_id}/end"): Probe(OPER, "/v1/features/999999/end", 404, json={}),
    # audit, telemetry, capture counts
    ("GET", "/v1/audit"): Probe(VIEW, "/v1/audit", 200),
    ("GET", "/v1/audit/verify"): Probe(VIEW, "/v1/audit/verify", 200),
    ("GET", "/v1/audit/state"): Probe(
        VIEW, "/v1/audit/state", 200, params={"at": "2030-01-01T00:00:00Z", "device": "pi-{caller}"}
    ),
    ("GET", "/v1/telemetry"): Probe(VIEW, "/v1/telemetry", 200, params={"model": "digits"}),
    ("GET", "/metrics"): Probe(Role.METRICS.value, "/metrics", 200),
    ("GET", "/v1/capture/{device_id}"): Probe(VIEW, "/v1/capture/pi-{caller}", 200),
    # pipeline (a manual run of a model with no registered version is refused by the policy: 409 with the reason)
    ("GET", "/v1/pipeline/policy"): Probe(VIEW, "/v1/pipeline/policy", 200),
    ("GET", "/v1/pipeline/decisions"): Probe(VIEW, "/v1/pipeline/decisions", 200),
    ("GET", "/v1/pipeline/runs"): Probe(VIEW, "/v1/pipeline/runs", 200),
    ("GET", "/v1/pipeline/runs/{run_id}"): Probe(VIEW, "/v1/pipeline/runs/999999", 404),
    ("POST", "/v1/pipeline/runs"): Probe(OPER, "/v1/pipeline/runs", 409, json={"model": "none-{caller}", "reason": "matrix"}),
    # rollouts
    ("POST", "/v1/rollouts"): Probe(OPER, "/v1/rollouts", 404, json={"cohort": "none-{caller}", "model": "digits", "version": 1}),
    ("GET", "/v1/rollouts"): Probe(VIEW, "/v1/rollouts", 200),
    ("GET", "/v1/rollouts/{rollout_id}"): Probe(VIEW, "/v1/rollouts/999999", 404),
    ("POST", "/v1/rollouts/{rollout_id}/pause"): Probe(OPER, "/v1/rollouts/999999/pause", 404, json={}),
    ("POST", "/v1/rollouts/{rollout_id}/resume"): Probe(OPER, "/v1/rollouts/999999/resume", 404, json={}),
    ("POST", "/v1/rollouts/{rollout_id}/promote"): Probe(OPER, "/v1/rollouts/999999/promote", 404, json={}),
    ("POST", "/v1/rollouts/{rollout_id}/abort"): Probe(OPER, "/v1/rollouts/999999/abort", 404, json={}),
    ("POST", "/v1/rollouts/{rollout_id}/baseline"): Probe(OPER, "/v1/rollouts/999999/baseline", 404, json={"version": 1}),
    # experiments
    ("POST", "/v1/experiments"): Probe(OPER, "/v1/experiments", 404, json=EXPERIMENT),
    ("GET", "/v1/experiments"): Probe(VIEW, "/v1/experiments", 200),
    ("GET", "/v1/experiments/{experiment_id}"): Probe(VIEW, "/v1/experiments/999", 404),
    ("POST", "/v1/experiments/{experiment_id}/actions"): Probe(OPER, "/v1/experiments/999/actions", 404, json={"action": "stop"}),
    # monitoring
    ("GET", "/v1/monitoring/drift"): Probe(VIEW, "/v1/monitoring/drift", 200, params={"model": "digits"}),
    ("GET", "/v1/monitoring/accuracy"): Probe(VIEW, "/v1/monitoring/accuracy", 200, params={"model": "digits"}),
    ("GET", "/v1/monitoring/quality"): Probe(VIEW, "/v1/monitoring/quality", 200, params={"model": "digits"}),
    ("GET", "/v1/monitoring/slos"): Probe(VIEW, "/v1/monitoring/slos", 200),
    ("PUT", "/v1/monitoring/slos/{name}"): Probe(
        OPER, "/v1/monitoring/slos/slo-{caller}", 200, json={"model": "digits", "kind": "errors", "target": 0.99}
    ),
    ("DELETE", "/v1/monitoring/slos/{name}"): Probe(OPER, "/v1/monitoring/slos/none-{caller}", 404),
    ("GET", "/v1/monitoring/alerts"): Probe(VIEW, "/v1/monitoring/alerts", 200),
    ("POST", "/v1/labels"): Probe(
        OPER,
        "/v1/labels",
        200,
        json={
            "labels": [
                {
                    "device_id": "pi-{caller}",
                    "prediction_id": "p1",
                    "label": 1,
                    "predicted": 1,
                    "model": "digits",
                    "version": 1,
                    "predicted_at": 1.0,
                }
            ]
        },
    ),
}


def route_table(app: FastAPI) -> dict[tuple[str, str], str]:
    """(method, path) of every route the application serves -> the role its dependencies declare."""
    table: dict[tuple[str, str], str] = {}
    for ctx in iter_route_contexts(app.routes):
        methods = ctx.methods or set()
        dependant = getattr(ctx, "dependant", None)
        for method in methods - {"HEAD"}:
            table[(method, str(ctx.path))] = declared_role(dependant)
    return table


def declared_role(dependant: Any) -> str:
    """The highest ``require_<role>`` found among a route's dependencies, or PUBLIC."""
    found: list[Role] = []
    signed: list[bool] = []

    def walk(d: Any) -> None:
        for sub in getattr(d, "dependencies", []):
            name = getattr(sub.call, "__name__", "")
            signed.append(name == "device_signed")
            if name.startswith("require_"):
                found.append(Role(name.removeprefix("require_")))
            walk(sub)

    walk(dependant)
    if any(signed):
        return DEVICE_SIGNED
    return max(found, key=lambda r: r.rank).value if found else PUBLIC


def expected(probe: Probe, caller: str) -> int:
    if probe.needs in (PUBLIC, DEVICE_SIGNED):
        return probe.ok
    if caller in ("anonymous", "device"):
        return 401
    return probe.ok if Role(caller).allows(Role(probe.needs)) else 403


@dataclass
class Fixture:
    api: Api
    clients: dict[str, TestClient]
    values: dict[str, dict[str, str]]  # caller -> names filled into probe paths and bodies


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    return value


def _ok(r: Any, *codes: int) -> Any:
    assert r.status_code in (codes or (200, 201)), r.text
    return r.json() if r.content else None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, make_bundle: Callable[..., bytes]) -> Iterator[Fixture]:
    """One controller (SQLite, no broker) with a model and per-caller devices, cohorts, aliases and tokens."""
    tmp = tmp_path_factory.mktemp("authz")
    with running_api(settings_for(tmp, f"sqlite:///{tmp}/authz.db")) as api:
        admin = api.admin
        sha = _ok(admin.post("/v1/models", content=make_bundle(1)))["sha256"]
        _ok(admin.put("/v1/models/digits/aliases/stable", json={"version": 1}))
        _ok(admin.post("/v1/devices", json={"id": "pi-holder"}))
        device_token = _ok(admin.post("/v1/identity/tokens", json={"device_id": "pi-holder"}))["token"]
        clients = {
            "anonymous": TestClient(api.app),
            "device": TestClient(api.app, headers={"Authorization": f"Bearer {device_token}"}),
        }
        values: dict[str, dict[str, str]] = {}
        for caller in CALLERS:
            if caller not in clients:
                clients[caller] = api.make(f"matrix-{caller}", caller)
            _ok(admin.post("/v1/devices", json={"id": f"pi-{caller}"}))
            for name in (f"keep-{caller}", f"gone-{caller}"):
                _ok(admin.post("/v1/cohorts", json={"name": name}))
            _ok(admin.put(f"/v1/models/digits/aliases/del-{caller}", json={"version": 1}))
            victim = _ok(admin.post("/v1/tokens", json={"principal": f"victim-{caller}", "role": "viewer"}))["id"]
            values[caller] = {"caller": caller, "sha256": sha, "victim": str(victim)}
        yield Fixture(api, clients, values)


def test_every_route_has_an_entry(world: Fixture) -> None:
    routes = route_table(world.api.app)
    missing = {k: v for k, v in routes.items() if k not in MATRIX}
    stale = sorted(set(MATRIX) - set(routes))
    assert not missing, "routes without an entry in MATRIX (declared role shown): " + ", ".join(
        f"{m} {p} -> {role}" for (m, p), role in sorted(missing.items())
    )
    assert not stale, f"MATRIX entries for routes the application does not serve: {stale}"


def test_every_entry_matches_the_role_its_route_declares(world: Fixture) -> None:
    routes = route_table(world.api.app)
    wrong = {k: (MATRIX[k].needs, routes[k]) for k in MATRIX if k in routes and routes[k] != MATRIX[k].needs}
    assert not wrong, f"(method, path): (matrix, declared) differ: {wrong}"


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("route", sorted(MATRIX), ids=lambda k: f"{k[0]} {k[1]}")
def test_route_answers_each_caller_with_the_exact_status(world: Fixture, route: tuple[str, str], caller: str) -> None:
    probe = MATRIX[route]
    names = world.values[caller]
    r = world.clients[caller].request(
        route[0],
        _fill(probe.path, names),
        json=_fill(probe.json, names),
        content=probe.content,
        params=_fill(probe.params, names),
    )
    want = expected(probe, caller)
    assert r.status_code == want, f"{route[0]} {route[1]} as {caller}: expected {want}, got {r.status_code}: {r.text[:300]}"
    if want == 401:
        if probe.needs == DEVICE_SIGNED:  # no bearer token opens it; the answer says a device credential is needed
            assert r.headers.get("www-authenticate") == "EdgefleetDevice"
            assert "device credential" in r.json()["detail"]
            return
        assert r.headers.get("www-authenticate") == "Bearer"
        assert r.json()["detail"] == UNAUTHORIZED[caller]


UNAUTHORIZED = {
    "anonymous": "missing API token: send 'Authorization: Bearer <token>'",
    "device": "invalid or revoked API token",  # an enrolment token is no API token
}
