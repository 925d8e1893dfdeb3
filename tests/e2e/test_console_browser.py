"""The web console in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright,
against the real controller process with a real broker and database.

Pages render without console errors and load nothing from another host; an
approval done in the browser lands in the audit log; a viewer sees no approve
button and is refused when posting to its endpoint anyway; a post without the
CSRF token is refused. With ``EDGEFLEET_SCREENSHOT_DIR`` set, each page is
saved there as a PNG (``docs/img/`` holds the ones the README shows).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from firmware_sim.procs import ControllerProc, start_controller

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGES = [
    "/ui/",
    "/ui/devices/pi-0002",
    "/ui/models",
    "/ui/telemetry",
    "/ui/audit",
    "/ui/rollouts",
    "/ui/experiments",
    "/ui/drift",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, mosquitto, make_bundle) -> Iterator[tuple[ControllerProc, dict[str, str]]]:
    ctl = start_controller(tmp_path_factory.mktemp("console"), broker_host="127.0.0.1", broker_port=mosquitto.port)
    try:
        tokens = {}
        with ctl.client() as admin:
            for who, role in (("olivia", "operator"), ("alice", "approver"), ("vera", "viewer")):
                r = admin.post("/v1/tokens", json={"principal": who, "role": role, "label": "console test"})
                tokens[who] = r.json()["token"]
        with ctl.client(tokens["olivia"]) as op:
            for v in (1, 2):
                assert op.post("/v1/models", content=make_bundle(v)).status_code == 201
            for i, region in ((1, "eu"), (2, "eu"), (3, "us")):
                op.post("/v1/devices", json={"id": f"pi-000{i}", "region": region, "hardware_class": "rpi4", "tags": ["door"]})
            op.post("/v1/cohorts", json={"name": "eu", "filter": {"region": ["eu"]}})
            r = op.put(
                "/v1/devices/pi-0002/desired", json={"model": "digits", "version": 1, "role": "canary", "reason": "try <b>it</b>"}
            )
            assert r.status_code == 200, r.text
            r = op.post("/v1/rollouts", json={"cohort": "eu", "model": "digits", "version": 2, "baseline_version": 1})
            assert r.status_code == 201, r.text
        yield ctl, tokens
    finally:
        ctl.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make system-deps` (installs Debian's chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


class Watch:
    """Console errors, page errors and requests to other hosts seen by one page."""

    def __init__(self, page, base: str) -> None:
        self.errors: list[str] = []
        self.foreign: list[str] = []
        host = urlparse(base).netloc
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("request", lambda r: self.foreign.append(r.url) if urlparse(r.url).netloc not in (host, "") else None)


def login(browser, base: str, token: str):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    watch = Watch(page, base)
    page.goto(f"{base}/ui/")
    assert page.url.startswith(f"{base}/ui/login")  # not logged in: sent to the login page
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/ui/")
    return ctx, page, watch


def shot(page, name: str) -> None:
    where = os.environ.get("EDGEFLEET_SCREENSHOT_DIR")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / f"console-{name}.png"), full_page=True)


def test_pages_render_without_console_errors_or_foreign_requests(stack, browser):
    ctl, tokens = stack
    ctx, page, watch = login(browser, ctl.url, tokens["alice"])
    cookie = next(c for c in ctx.cookies() if c["name"] == "edgefleet_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    for path in PAGES:
        r = page.goto(f"{ctl.url}{path}")
        assert r is not None and r.status == 200, path
        page.wait_for_load_state("networkidle")
        shot(page, path.strip("/").replace("/", "-").replace("ui-", "").replace("ui", "fleet") or "fleet")
    assert page.goto(f"{ctl.url}/ui/").status == 200
    assert (
        page.inner_text("#devices-total") == "3" and page.inner_text("#devices-stuck") == "2"
    )  # pi-0002 by hand, one by the rollout
    assert "offline, never seen" in page.inner_text("#stuck")
    page.goto(f"{ctl.url}/ui/devices/pi-0002")
    assert "digits v1" in page.inner_text("#roles") and "offline" in page.inner_text("#why")
    page.goto(f"{ctl.url}/ui/rollouts")
    assert "#1 digits v1 → v2 on eu: RUNNING" in page.inner_text("#rollouts") and "created" in page.inner_text("#rollouts")
    page.goto(f"{ctl.url}/ui/telemetry")
    assert "No telemetry windows" in page.inner_text("#latency-chart")
    r = page.goto(f"{ctl.url}/docs")
    assert r is not None and r.status == 200
    page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)  # Swagger UI rendered from the controller's own files
    shot(page, "api-docs")
    assert not watch.errors, watch.errors
    assert not watch.foreign, watch.foreign
    ctx.close()


def test_approval_in_the_browser_lands_in_the_audit_log(stack, browser):
    ctl, tokens = stack
    ctx, page, watch = login(browser, ctl.url, tokens["alice"])
    page.goto(f"{ctl.url}/ui/models")
    row = page.locator("#digits-v2")
    row.locator("input[name=reason]").fill("canary clean <script>alert(1)</script>")
    row.locator("button", has_text="Approve").click()
    page.wait_for_load_state("networkidle")
    assert "approved by alice" in page.inner_text("#digits-v2")
    page.goto(f"{ctl.url}/ui/audit")
    audit_text = page.inner_text("#audit")
    assert "model.approved" in audit_text and "canary clean <script>alert(1)</script>" in audit_text  # shown as text
    with ctl.client() as admin:
        entries = admin.get("/v1/audit", params={"action": "model.approved"}).json()
    assert [(e["actor"], e["subject"], e["reason"]) for e in entries] == [
        ("alice", "model:digits:2", "canary clean <script>alert(1)</script>")
    ]
    # the same endpoint without the CSRF token is refused
    r = page.request.post(f"{ctl.url}/ui/models/digits/1/approve", form={"reason": "no csrf"}, max_redirects=0)
    assert r.status == 403 and "CSRF" in r.text()
    assert not watch.errors, watch.errors
    ctx.close()


def test_a_viewer_sees_no_approve_button_and_cannot_call_it(stack, browser):
    ctl, tokens = stack
    ctx, page, watch = login(browser, ctl.url, tokens["vera"])
    page.goto(f"{ctl.url}/ui/models")
    assert page.locator("form.approve").count() == 0 and page.locator("button", has_text="Approve").count() == 0
    assert "pending (needs an approver)" in page.inner_text("#digits-v1")
    csrf = page.locator("header form input[name=csrf]").input_value()
    r = page.request.post(f"{ctl.url}/ui/models/digits/1/approve", form={"reason": "sneaky", "csrf": csrf}, max_redirects=0)
    assert r.status == 403 and "needs the approver role" in r.text()
    with ctl.client() as admin:
        assert admin.get("/v1/models/digits/versions/1").json()["approved_by"] is None
    page.click("text=Log out")
    page.wait_for_url(f"{ctl.url}/ui/login")
    assert not any(c["name"] == "edgefleet_session" for c in ctx.cookies())
    assert not watch.errors, watch.errors
    ctx.close()
