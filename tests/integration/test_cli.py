"""The ``edgefleet`` operator CLI against an in-process controller (real database, real broker).

The CLI's HTTP client is pointed at the app in-process (a TestClient is an
httpx.Client), so the real CLI code talks to the real API.
"""

from __future__ import annotations

import json
import time

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


def test_rollout_commands_create_show_pause_resume_promote_abort(run, tmp_path, make_bundle):
    for v in (1, 2):
        (tmp_path / f"v{v}.tar").write_bytes(make_bundle(v))
        run("models", "push", str(tmp_path / f"v{v}.tar"))
    tok = json.loads(run("tokens", "create", "ann", "--role", "approver", "--json"))["token"]
    run("models", "approve", "digits", "1", "-r", "ok", token=tok)
    for d in ("c-1", "c-2", "c-3"):
        run("devices", "add", d)
    run("cohorts", "create", "lab", "--member", "c-1", "--member", "c-2", "--member", "c-3")
    run("cohorts", "assign", "lab", "digits", "1")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"stages": [{"share": 0.34, "min_duration_s": 0}, {"share": 1.0, "min_duration_s": 3600}]}))
    assert "v1 -> v2 on lab, RUNNING, stage 1/2 (canary 34%)" in run(
        "rollouts", "create", "lab", "digits", "2", "--plan", str(plan)
    )
    assert "RUNNING" in run("rollouts", "list")
    assert "PAUSED (waiting: operator)" in run("rollouts", "pause", "1", "-r", "look")
    assert "stage 1/2" in run("rollouts", "resume", "1")
    assert "needs an approved version" in run("rollouts", "promote", "1", code=1)
    run("models", "approve", "digits", "2", "-r", "ok", token=tok)
    assert "stage 2/2" in run("rollouts", "promote", "1")
    assert "ROLLED_BACK" in run("rollouts", "abort", "1", "-r", "enough")
    shown = run("rollouts", "show", "1")
    assert "promoted" in shown and "rolled_back" in shown
    assert "'nope'" in run("rollouts", "create", "nope", "digits", "2", code=1)


def test_text_from_devices_and_operators_is_shown_literally_never_as_markup(run, mosquitto, tmp_path, make_bundle, monkeypatch):
    """``[/]`` in a reason crashed ``edgefleet audit log``; ``[bold]`` was swallowed."""
    import paho.mqtt.client as mqtt

    from shared.topics import Kind, device_topic

    monkeypatch.setattr(cli_common.console, "_width", 400)  # whole cells on one line (restored to auto after)
    # First the device (each CLI call here runs the app's lifespan, which ends its MQTT link):
    # it reports a reason (its rollback story) that reaches audit views.
    assert run.api.admin.post("/v1/devices", json={"id": "mk-1"}).status_code == 201
    status = {
        "schema": 1, "device_id": "mk-1", "seq": 1, "sent_at": 1.0, "state": "online",
        "models": {"production": {"model": "digits", "version": 1, "sha256": "a" * 64, "runtime": "onnx", "since": 1.0,
                                  "reason": "rolled back: [/] [bold]boom[/bold]"}},
    }  # fmt: skip
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect(mosquitto.host, mosquitto.port)
    c.loop_start()
    c.publish(device_topic("mk-1", Kind.STATUS), json.dumps(status).encode(), qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()
    deadline = time.monotonic() + 10
    while run.api.app.state.metrics.value("status", "accepted") < 1:
        assert time.monotonic() < deadline, "the device's status was not applied"
        time.sleep(0.05)
    # Then an operator's reason.
    tok = {w: json.loads(run("tokens", "create", w, "--role", "approver", "--json"))["token"] for w in ("olivia", "alice")}
    bundle = tmp_path / "digits-v1.tar"
    bundle.write_bytes(make_bundle(1))
    run("models", "push", str(bundle), token=tok["olivia"])
    nasty = "[/] [bold]x[/bold] [red] [link=http://evil]y[/link]"
    run("models", "approve", "digits", "1", "-r", nasty, token=tok["alice"])
    out = run("audit", "log")
    assert "[/]" in out and "[bold]x[/bold]" in out and "[link=http://evil]y[/link]" in out
    assert "rolled back: [/] [bold]boom[/bold]" in out
    assert "[bold]boom[/bold]" in run("devices", "history", "mk-1")


def test_pipeline_commands_policy_run_runs_show_decisions(run, tmp_path, make_bundle):
    bundle = tmp_path / "digits-v1.tar"
    bundle.write_bytes(make_bundle(1))
    run("models", "push", str(bundle))
    assert "retraining policy disabled" in run("pipeline", "policy")
    assert "no cohort named 'nowhere'" in run("pipeline", "run", "-m", "digits", "-c", "nowhere", "-r", "x", code=1)
    out = run("pipeline", "run", "-m", "digits", "-r", "new lens", "--wait")
    assert "run 1: digits (from v1) for *, manual, refused: dataset: no captured samples" in out  # nothing captured yet
    shown = run("pipeline", "show", "1")
    assert "snapshot of digits samples" in shown.splitlines()[-1]  # the progress lines
    assert "refused: cooldown" in run("pipeline", "run", "-m", "digits", "-r", "again", code=1)
    rows = json.loads(run("pipeline", "decisions", "--json"))
    assert [(d["decision"], d["trigger"], d["actor"]) for d in rows] == [
        ("skip", "manual", "admin"),
        ("retrain", "manual", "admin"),
    ]
    assert json.loads(run("pipeline", "runs", "--json"))[0]["state"] == "refused"
