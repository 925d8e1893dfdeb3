"""The ``edgefleet`` operator CLI against an in-process controller (real database, real broker).

The CLI's HTTP client is pointed at the app in-process (a TestClient is an
httpx.Client), so the real CLI code talks to the real API.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

from controller import cli
from controller.cli import common as cli_common
from tests.controller_app import ADMIN_TOKEN, running_api, settings_for

pytestmark = [pytest.mark.integration]


@pytest.fixture
def run(tmp_path, mosquitto, monkeypatch):
    with running_api(settings_for(tmp_path, f"sqlite:///{tmp_path}/cli.db", mosquitto.port)) as api:
        monkeypatch.setattr(
            cli_common, "client", lambda url, token: TestClient(api.app, headers={"Authorization": f"Bearer {token}"})
        )
        runner = CliRunner()

        def invoke(*args: str, token: str = ADMIN_TOKEN, code: int = 0) -> str:
            r = runner.invoke(cli.app, [*args, "--token", token])
            assert r.exit_code == code, r.output
            return r.output

        invoke.api = api
        yield invoke


def test_operator_workflow_from_push_to_audit_verify(run, tmp_path, make_bundle):
    tok = {}
    for who, role in (("olivia", "approver"), ("alice", "approver")):
        tok[who] = json.loads(run("tokens", "create", who, "--role", role, "--json"))["token"]
    bundle = tmp_path / "digits-v1.tar"
    bundle.write_bytes(make_bundle(1))
    assert "registered digits v1" in run("models", "push", str(bundle), token=tok["olivia"])
    assert "cannot approve" in run("models", "approve", "digits", "1", "-r", "mine", token=tok["olivia"], code=1)
    assert "approved digits v1" in run("models", "approve", "digits", "1", "-r", "eval ok", token=tok["alice"])
    run("devices", "add", "pi-1", "--region", "eu", "--tag", "door", token=tok["olivia"])
    run("cohorts", "create", "eu", "--region", "eu", token=tok["olivia"])
    assert "to 1 devices of eu" in run("cohorts", "assign", "eu", "digits", "1", "-r", "ship", token=tok["olivia"])
    assert "digits@production -> v1" in run("models", "alias", "digits", "production", "1", token=tok["olivia"])
    state = json.loads(run("audit", "state", "--device", "pi-1", "--json", token=tok["olivia"]))
    assert state["devices"][0]["decided_by"] == "olivia" and state["devices"][0]["desired_version"] == 1
    assert "audit chain ok" in run("audit", "verify")
    with run.api.app.state.engine.begin() as conn:
        conn.execute(text("UPDATE auditentry SET reason = 'nothing to see' WHERE action = 'model.approved'"))
    out = run("audit", "verify", code=4)
    assert "BROKEN" in out and "edited after it was written" in out
    assert "needs the admin role" in run("tokens", "list", token=tok["olivia"], code=1)
