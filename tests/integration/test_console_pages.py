"""Console pages with data behind them, in-process (the browser tests cover rendering in Chromium):
drift with real merged telemetry and a monitoring alert, the telemetry chart's data, login and sessions."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from firmware_sim.modelgen import load_digits, train_softmax
from firmware_sim.windows import role_summary, softmax_probs
from tests.controller_app import running_api, settings_for
from tests.integration.test_monitoring import T0, Fleet, W, reference, run_monitor

pytestmark = [pytest.mark.integration]


@pytest.fixture
def api(tmp_path, make_bundle):
    with running_api(settings_for(tmp_path, f"sqlite:///{tmp_path}/console.db")) as api:
        assert api.admin.post("/v1/models", content=make_bundle(1)).status_code == 201
        for d in ("d1", "d2", "d3"):
            api.admin.post("/v1/devices", json={"id": d})
        api.admin.post("/v1/cohorts", json={"name": "north", "members": ["d1", "d2"]})
        yield api


def login(api, token: str = "test-admin-token"):
    c = api.admin
    c.headers.pop("Authorization", None)
    r = c.post("/ui/login", data={"token": token, "next": "/ui/"}, follow_redirects=False)
    assert r.status_code == 303 and "edgefleet_session" in r.cookies
    return c


def test_drift_page_shows_the_drifted_cohort_and_its_alert(api):
    x, y = load_digits()
    w, b = train_softmax(x, y, epochs=40)
    ref, fleet, rng = reference(api), Fleet(api), np.random.default_rng(3)
    msgs = []
    for k in range(3):
        for d in ("d1", "d2", "d3"):
            xi = x[rng.choice(len(x), 200)]
            if d != "d3":
                xi = np.clip(xi + 0.35, 0, 1.2)  # the north cohort's sensors read high
            msgs.append(fleet.window(d, T0 + k * W, role_summary(ref, "digits", 1, xi, softmax_probs(w, b, xi))))
    fleet.send(msgs)
    run_monitor(api, now=T0 + 3 * W + 5)
    c = login(api)
    html = c.get("/ui/drift", params={"model": "digits", "cohort": "north"}).text
    assert 'digits v1: <span class="bad">dataset drift</span>' in html
    assert re.search(r"over 3 windows \(6 device-windows", html)
    assert 'class="sev-warning"><td>px' in html  # drifted features are listed first
    assert "drift" in html.split('id="alerts"')[1] and "firing" in html.split('id="alerts"')[1]
    tele = c.get("/ui/telemetry", params={"model": "digits", "cohort": "*"}).text
    data = json.loads(re.search(r'id="telemetry-data">(.*?)</script>', tele, re.S).group(1))
    assert data["x"] == [T0, T0 + W, T0 + 2 * W] and data["counts"] == [600, 600, 600]
    assert data["series"][0]["label"] == "v1 p95 ms"


def test_sessions_follow_the_token(api):
    tok = api.admin.post("/v1/tokens", json={"principal": "vera", "role": "viewer"}).json()
    assert api.admin.get("/ui/", follow_redirects=False).headers["location"].startswith("/ui/login")
    r = api.admin.post("/ui/login", data={"token": "wrong"})
    assert r.status_code == 401 and "unknown or revoked" in r.text
    scrape = api.admin.post("/v1/tokens", json={"principal": "prometheus", "role": "metrics"}).json()["token"]
    assert api.admin.post("/ui/login", data={"token": scrape}).status_code == 401  # scrape-only: no console
    c = login(api, tok["token"])
    assert c.get("/ui/").status_code == 200
    api.admin.cookies.clear()
    api.admin.headers["Authorization"] = "Bearer test-admin-token"
    assert api.admin.delete(f"/v1/tokens/{tok['id']}").status_code == 200
    c = login(api)  # the admin again, to check the revoked viewer's cookie below
    c.cookies.set("edgefleet_session", tok["token"])
    r = c.get("/ui/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")  # revoked: logged out at once
    r = api.admin.post("/ui/login", data={"token": "x", "next": "https://evil.example/"}, follow_redirects=False)
    assert r.status_code == 401
    r = login(api).get("/ui/login", params={"next": "//evil.example/"})
    assert 'value="/ui/"' in r.text  # no open redirect after login
