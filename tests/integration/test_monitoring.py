"""Monitoring over the real ingest path and a real database: drift per cohort, late labels, SLO alerts.

Telemetry windows go through ``TelemetryIngest`` (dedupe, per-cohort aggregates)
exactly as from the broker; the monitor job runs as the leader runs it; alerts
reach the audit log, ``/metrics`` and a real HTTP webhook.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy.special import rel_entr
from sqlmodel import Session, select

from controller.core.leader import LeaderContext
from controller.core.tables import AuditEntry, ModelVersion
from controller.monitoring import stats
from controller.monitoring.jobs import MonitorJob
from controller.telemetry.decode import decode_telemetry
from firmware_sim.modelgen import load_digits, train_softmax
from firmware_sim.windows import role_summary, softmax_probs, telemetry_message
from shared.telemetry import bin_index
from tests.controller_app import running_api, settings_for

pytestmark = [pytest.mark.integration]
W = 60
NOW = (int(time.time()) // W) * W
T0 = NOW - 20 * W  # first window of the tests' history


class Hook:
    """A real HTTP server collecting webhook posts."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


@pytest.fixture
def api(tmp_path, database_url, make_bundle):
    with running_api(settings_for(tmp_path, database_url)) as api:
        assert api.admin.post("/v1/models", content=make_bundle(1)).status_code == 201
        for d in ("d1", "d2", "d3", "d4"):
            assert api.admin.post("/v1/devices", json={"id": d}).status_code == 201
        r = api.admin.post("/v1/cohorts", json={"name": "north", "members": ["d1", "d2"]})
        assert r.status_code == 201, r.text
        yield api


@pytest.fixture(scope="module")
def model():
    x, y = load_digits()
    w, b = train_softmax(x, y, epochs=60)
    return x, y, w, b


def reference(api) -> dict:
    with Session(api.app.state.engine) as s:
        return s.exec(select(ModelVersion).where(ModelVersion.name == "digits")).one().manifest["reference"]


class Fleet:
    def __init__(self, api) -> None:
        self.api = api
        self.seq: dict[str, int] = {}

    def send(self, msgs: list[dict]) -> None:
        tele = self.api.app.state.telemetry
        before = tele.flushed
        tele.start()
        acked = []
        for m in msgs:
            tele.submit(decode_telemetry(json.dumps(m).encode()), lambda: acked.append(1))
        deadline = time.monotonic() + 30
        while len(acked) < len(msgs):
            assert time.monotonic() < deadline, "ingest did not acknowledge the windows"
            time.sleep(0.02)
        tele.stop()
        assert tele.flushed >= before

    def window(self, device: str, ws: int, summary: dict, labels: list[dict] | None = None) -> dict:
        self.seq[device] = self.seq.get(device, 0) + 1
        msg = telemetry_message(device, self.seq[device], ws + 1, W, {"production": summary})
        if labels:
            msg["labels"] = labels
        return msg


def sample(text: str, name: str, **labels: str) -> float | None:
    """A sample's value from Prometheus text, by name and labels (a subset)."""
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == name and all(smp.labels.get(k) == v for k, v in labels.items()):
                return float(smp.value)
    return None


def run_monitor(api, now: float) -> None:
    """The leader's monitor once the windows before ``now`` have settled (agents batch theirs, ADR 0076)."""
    job: MonitorJob = api.app.state.monitor
    assert job.settle_windows == 10  # the default
    job(LeaderContext(api.app.state.engine, 1, lambda: True), now=now + job.settle_windows * job.window_s)


def test_drift_per_cohort_matches_scipy_and_raises_an_alert_with_evidence(api, model, hook):
    x, _, w, b = model
    ref = reference(api)
    fleet = Fleet(api)
    rng = np.random.default_rng(1)
    north_raw = []
    msgs = []
    for k in range(3):
        ws = T0 + k * W
        for d in ("d1", "d2", "d3", "d4"):
            xi = x[rng.choice(len(x), 200)]
            if d in ("d1", "d2"):  # the north cohort's sensors read 0.35 too high
                xi = np.clip(xi + 0.35, 0, 1.2)
                north_raw.append(xi)
            msgs.append(fleet.window(d, ws, role_summary(ref, "digits", 1, xi, softmax_probs(w, b, xi))))
    fleet.send(msgs)

    r = api.admin.get("/v1/monitoring/drift", params={"model": "digits", "cohort": "north"})
    assert r.status_code == 200, r.text
    [north] = r.json()
    assert north["dataset_drift"] and north["windows"] == 3 and north["device_windows"] == 6
    raw = np.concatenate(north_raw)
    for f in north["features"][:16]:  # the merged aggregate rows give scipy's PSI on the raw values
        j = int(f["name"][2:])
        edges = ref["features"][j]["bin_edges"]
        cur = np.bincount([bin_index(edges, float(v)) for v in raw[:, j]], minlength=len(edges) + 1)
        refc = np.array([0, *ref["features"][j]["counts"], 0])
        p = np.maximum(refc / refc.sum(), stats.EPS)
        q = np.maximum(cur / cur.sum(), stats.EPS)
        assert f["psi"] == pytest.approx(float(np.sum(rel_entr(q, p) + rel_entr(p, q))), rel=1e-9)
    assert north["predictions"]["n_cur"] == 1200 and north["predictions"]["chi2_p"] is not None

    whole = api.admin.get("/v1/monitoring/drift", params={"model": "digits", "cohort": "*"}).json()[0]
    assert whole["device_windows"] == 12 and whole["drift_share"] <= north["drift_share"]

    api.app.state.monitor.alerts.webhook_url = hook.url
    api.app.state.monitor(LeaderContext(api.app.state.engine, 1, lambda: True), now=T0 + 3 * W + 5)
    assert api.admin.get("/v1/monitoring/alerts", params={"kind": "drift"}).json() == []  # not judged before they settle
    run_monitor(api, now=T0 + 3 * W + 5)
    alerts = api.admin.get("/v1/monitoring/alerts", params={"state": "firing", "kind": "drift"}).json()
    keys = {a["key"] for a in alerts}
    assert "drift/digits/north/production/v1" in keys
    alert = next(a for a in alerts if a["cohort"] == "north")
    ev = alert["evidence"]
    assert ev["version"] == 1 and ev["drifted_features"] > 0 and ev["top_features"]
    top = ev["top_features"][0]
    assert top["psi"] > top["psi_threshold"] and top["n"] == 1200
    with Session(api.app.state.engine) as s:
        fired = s.exec(select(AuditEntry).where(AuditEntry.action == "monitor.alert.fired")).all()
    assert any(e.subject == "drift/digits/north/production/v1" and e.evidence["top_features"] for e in fired)
    assert any(h["key"] == "drift/digits/north/production/v1" and h["state"] == "firing" for h in hook.received)
    metrics = api.admin.get("/metrics").text
    assert sample(metrics, "edgefleet_drift_detected", cohort="north", model="digits", version="1") == 1.0
    assert sample(metrics, "edgefleet_monitor_alerts_firing", kind="drift", severity="ticket") >= 1.0

    run_monitor(api, now=T0 + 3 * W + 7)  # the same condition again: no second transition
    with Session(api.app.state.engine) as s:
        assert len(s.exec(select(AuditEntry).where(AuditEntry.action == "monitor.alert.fired")).all()) == len(fired)

    # The sensors are fixed: three clean windows later the alert resolves.
    msgs = []
    for k in range(3, 6):
        for d in ("d1", "d2"):
            xi = x[rng.choice(len(x), 200)]
            msgs.append(fleet.window(d, T0 + k * W, role_summary(ref, "digits", 1, xi, softmax_probs(w, b, xi))))
    fleet.send(msgs)
    run_monitor(api, now=T0 + 6 * W + 5)
    firing = api.admin.get("/v1/monitoring/alerts", params={"state": "firing", "kind": "drift"}).json()
    assert "drift/digits/north/production/v1" not in {a["key"] for a in firing}
    assert any(h["state"] == "resolved" for h in hook.received)

    # Against an earlier period of the same version instead of the manifest: the drift was in T0..T0+2.
    r = api.admin.get(
        "/v1/monitoring/drift",
        params={
            "model": "digits",
            "cohort": "north",
            "since": T0,
            "until": T0 + 3 * W,
            "baseline_since": T0 + 3 * W,
            "baseline_until": T0 + 6 * W,
        },
    )
    assert r.json()[0]["reference"] == "period" and r.json()[0]["dataset_drift"]


def test_late_labels_count_for_the_prediction_window_and_version(api, model):
    x, y, w, b = model
    ref = reference(api)
    fleet = Fleet(api)
    w1, w2 = T0 + 10 * W, T0 + 12 * W
    xi = x[:100]
    p = softmax_probs(w, b, xi)
    pred = p.argmax(axis=1)
    fleet.send([fleet.window("d3", w1, role_summary(ref, "digits", 1, xi, p))])
    # Two windows later the device joins labels for 40 of window 1's predictions (from its on-disk context).
    device_labels = [
        {
            "prediction_id": f"p{i}",
            "role": "production",
            "model": "digits",
            "version": 1,
            "window_start": w1 + 7,
            "predicted": int(pred[i]),
            "label": int(y[i]),
        }
        for i in range(40)
    ]
    late_msg = fleet.window("d3", w2, role_summary(ref, "digits", 1, xi[:10], p[:10]), labels=device_labels)
    fleet.send([late_msg])
    fleet.send([late_msg])  # redelivered by the broker: deduped, labels not counted twice
    # Days later a back office posts labels for 30 more of them, by prediction id; one is wrong on purpose.
    posted = [
        {
            "device_id": "d3",
            "prediction_id": f"p{i}",
            "label": int(y[i]) if i != 45 else (int(y[i]) + 1) % 10,
            "predicted": int(pred[i]),
            "model": "digits",
            "version": 1,
            "predicted_at": w1 + 30,
        }
        for i in range(40, 70)
    ]
    r = api.admin.post("/v1/labels", json={"labels": posted})
    assert r.status_code == 200 and r.json() == {"stored": 30}
    assert api.admin.post("/v1/labels", json={"labels": posted[:5]}).json() == {"stored": 5}  # replaces, no double count
    bad = api.admin.post("/v1/labels", json={"labels": [{**posted[0], "device_id": "nope"}]})
    assert bad.status_code == 422 and "unknown device" in bad.json()["detail"]

    acc = api.admin.get("/v1/monitoring/accuracy", params={"model": "digits", "since": w1, "until": w2 + W}).json()
    rows = {r["window_start"]: r for r in acc["windows"]}
    truth = (pred[:70] == y[:70]).astype(int)
    truth[45] = 0
    assert rows[w1]["labels"] == 70 and rows[w1]["correct"] == int(truth.sum())
    assert rows[w1]["version"] == 1 and rows[w1]["accuracy"] == pytest.approx(truth.mean())
    assert rows[w2]["labels"] == 0 and rows[w2]["accuracy"] is None
    assert rows[w1]["estimated"] is not None and 0.5 < rows[w1]["estimated"] <= 1
    # d3 is not in the north cohort: its labels do not count there.
    north = api.admin.get("/v1/monitoring/accuracy", params={"model": "digits", "cohort": "north"}).json()
    assert north["labels"] == 0


def test_slo_burn_rate_alert_pages_and_shows_in_metrics(api, model):
    x, _, w, b = model
    ref = reference(api)
    fleet = Fleet(api)
    rules = [{"long_s": 5 * W, "short_s": W, "factor": 2.0, "severity": "page"}]
    r = api.admin.put(
        "/v1/monitoring/slos/digits-errors",
        json={"model": "digits", "kind": "errors", "target": 0.99, "windows": rules},
    )
    assert r.status_code == 200, r.text
    assert api.admin.put("/v1/monitoring/slos/bad", json={"model": "digits", "kind": "latency", "target": 0.9}).status_code == 422
    msgs = []
    for k in range(5):
        xi = x[:100]
        s = role_summary(ref, "digits", 1, xi, softmax_probs(w, b, xi))
        s["errors"] = 10 if k >= 3 else 0  # 10 % of calls fail in the last two windows: burn 10x
        msgs.append(fleet.window("d4", NOW - (5 - k) * W, s))
    fleet.send(msgs)
    run_monitor(api, now=NOW + 1)
    [status_] = api.admin.get("/v1/monitoring/slos", params={"at": NOW + 1}).json()
    assert status_["firing"] and status_["severity"] == "page"
    rule = status_["evidence"]["rules"][0]
    assert rule["short_burn"] == pytest.approx(10.0) and rule["long_burn"] == pytest.approx(4.0)
    alerts = api.admin.get("/v1/monitoring/alerts", params={"kind": "slo"}).json()
    assert alerts[0]["key"] == "slo/digits-errors" and alerts[0]["state"] == "firing" and "burning" in alerts[0]["summary"]
    metrics = api.admin.get("/metrics").text
    assert sample(metrics, "edgefleet_slo_burn_rate", slo="digits-errors", window="60s") == pytest.approx(10.0)
    assert sample(metrics, "edgefleet_slo_burn_rate", slo="digits-errors", window="300s") == pytest.approx(4.0)
    assert sample(metrics, "edgefleet_monitor_alerts_firing", kind="slo", severity="page") == 1.0


def test_cli_monitor_prints_tables_and_json(api, model, monkeypatch):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from controller import cli
    from controller.cli import common as cli_common

    x, _, w, b = model
    ref = reference(api)
    fleet = Fleet(api)
    msgs = []
    for k in range(3):
        for d in ("d1", "d2"):
            xi = np.clip(x[:150] + 0.4, 0, 1.2)
            msgs.append(fleet.window(d, NOW - (3 - k) * W, role_summary(ref, "digits", 1, xi, softmax_probs(w, b, xi))))
    fleet.send(msgs)
    api.admin.put("/v1/monitoring/slos/lat", json={"model": "digits", "kind": "latency", "target": 0.99, "threshold_ms": 50})
    monkeypatch.setattr(
        cli_common, "client", lambda url, token: TestClient(api.app, headers={"Authorization": f"Bearer {token}"})
    )
    runner = CliRunner()

    def run(*args: str) -> str:
        r = runner.invoke(cli.app, [*args, "--token", "test-admin-token"])
        assert r.exit_code == 0, r.output
        return r.output

    table = run("monitor", "drift", "--cohort", "north", "--model", "digits")
    assert "DRIFT" in table and "px" in table and "PSI" in table
    data = json.loads(run("monitor", "drift", "--cohort", "north", "--model", "digits", "--json"))
    assert data[0]["dataset_drift"] is True
    acc = json.loads(run("monitor", "accuracy", "--model", "digits", "--json"))
    assert acc["predictions"] == 900 and acc["estimated"] is not None
    assert "estimated" in run("monitor", "accuracy", "--model", "digits", "--cohort", "north")
    assert "lat" in run("monitor", "slo", "--model", "digits")
    assert json.loads(run("monitor", "slo", "--model", "digits", "--json"))[0]["firing"] is False
