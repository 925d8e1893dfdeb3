"""Rollouts end to end: the real controller and real agents, traffic with labels from local apps.

A candidate that fails its on-device health check and one that passes it but
answers worse (lower accuracy, seen in the agents' own telemetry) are both
rolled back by the leader with no device left on them; a good candidate waits
while the cohort has no traffic (and says so), then reaches 100%. Revoking a
candidate mid-rollout puts its devices back on the baseline, which the agents
really install again.
"""

from __future__ import annotations

import time

import pytest

from firmware_sim.modelgen import make_onnx_bundle
from firmware_sim.rollout_lab import Lab, Traffic

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STAGES = [
    {"share": 0.25, "min_duration_s": 4, "min_devices": 1, "min_inferences": 40, "max_duration_s": 900},
    {"share": 1.0, "min_duration_s": 3},
]
SLACK_MS = 1000.0  # latency budget of the candidates meant to pass the health check on a loaded machine
# Latency is not judged here: this machine is shared and its timing is noise.
THRESHOLDS = {"min_labels": 30, "fail_min_inferences": 30, "max_accuracy_drop": 0.1, "latency_min_samples": 10**9,
              "max_prediction_shift": 0.5}  # fmt: skip


def test_bad_candidates_roll_back_and_a_good_one_reaches_everyone(mosquitto, tmp_path, make_bundle):
    lab = Lab(tmp_path, mosquitto.host, mosquitto.port, n=4, interval_s=1.0)
    traffic: Traffic | None = None
    try:
        lab.start(make_bundle(1))
        traffic = Traffic(lab.agents).start()

        # 1. the candidate fails the agents' health check (its latency budget cannot be met)
        v2 = lab.register(make_onnx_bundle(version=2, epochs=62, latency_budget_ms=1e-5))
        r = lab.wait_rollout(lab.create(v2, STAGES, THRESHOLDS)["id"], ("ROLLED_BACK", "COMPLETED"), timeout=120)
        assert r["state"] == "ROLLED_BACK" and "rolled the candidate back" in r["reason"], r
        assert r["stage"] == 1 and r["devices"]["reverted"] == 1
        lab.wait_actual(lambda v: v == 1, timeout=60, what="every device on v1 after the health-check failure")

        # 2. the candidate passes the health check but is far less accurate (one training epoch)
        v3 = lab.register(make_onnx_bundle(version=3, epochs=1, latency_budget_ms=SLACK_MS))
        r = lab.wait_rollout(lab.create(v3, STAGES, THRESHOLDS)["id"], ("ROLLED_BACK", "COMPLETED"), timeout=180)
        assert r["state"] == "ROLLED_BACK" and "accuracy_loss" in r["reason"], r
        failed = next(d for d in r["decisions"] if d["action"] == "rolled_back")
        acc = {c["name"]: c for c in failed["evidence"]["checks"]}["accuracy_loss"]["figures"]
        assert acc["candidate"] - acc["baseline"] > 0.1  # wrong-answer rates compared, in the evidence
        lab.wait_actual(lambda v: v == 1, timeout=60, what="every device on v1 after the accuracy regression")

        # 3. a good candidate: without traffic the stage holds and says why; with traffic it completes
        traffic.stop()
        v4 = lab.register(make_onnx_bundle(version=4, epochs=64, seed=1, latency_budget_ms=SLACK_MS))
        rid = lab.create(v4, STAGES, THRESHOLDS)["id"]
        lab.wait_actual(lambda v: v == 4, timeout=60, what="the first canary on v4", devices=[_canary(lab, rid, 4)])
        deadline_reason = ""
        for _ in range(60):
            reasons = lab.rollout(rid)["last_analysis"].get("reasons", [])
            deadline_reason = " ".join(reasons)
            if "low traffic" in deadline_reason:
                break
            time.sleep(0.5)
        assert "low traffic: 0 inferences on the candidate" in deadline_reason, deadline_reason
        assert lab.rollout(rid)["state"] == "RUNNING"
        traffic = Traffic(lab.agents).start()
        r = lab.wait_rollout(rid, ("ROLLED_BACK", "COMPLETED"), timeout=240)
        assert r["state"] == "COMPLETED", (r["reason"], _refusals(lab))
        lab.wait_actual(lambda v: v == 4, timeout=60, what="every device on v4")
    finally:
        if traffic is not None:
            traffic.stop()
        lab.stop()


def test_revoking_the_candidate_puts_its_devices_back_on_the_baseline_for_real(mosquitto, tmp_path, make_bundle):
    """The revocation takes the candidate out of the signed targets and leaves the older baseline installable
    (a floor raised above the revoked version made the agents refuse the baseline and stay on the candidate)."""
    lab = Lab(tmp_path, mosquitto.host, mosquitto.port, n=2, interval_s=1.0)
    try:
        lab.start(make_bundle(1))
        v2 = lab.register(make_onnx_bundle(version=2, epochs=62, latency_budget_ms=SLACK_MS))
        hold = [{"share": 0.5, "min_duration_s": 600, "min_devices": 1, "max_duration_s": 900}, {"share": 1.0}]
        rid = lab.create(v2, hold, THRESHOLDS)["id"]
        canary = _canary(lab, rid, v2)
        lab.wait_actual(lambda v: v == v2, timeout=60, what="the canary on v2", devices=[canary])
        with lab.api as api:
            r = api.post(f"/v1/models/digits/versions/{v2}/revoke", json={"reason": "trained on leaked data"})
            assert r.status_code == 200 and r.json()["floor"] == 1, r.text
        r = lab.rollout(rid)
        assert r["state"] == "ROLLED_BACK" and "revoked" in r["reason"], r
        lab.wait_actual(lambda v: v == 1, timeout=60, what="every device back on v1 after the revocation")
        with lab.api as api:
            events = api.get(f"/v1/devices/{canary}/events").json()
        assert [e for e in events if e["kind"] == "ota.rejected"] == []
        # the rollback fast path (ADR 0073): v1 was still on the device and listed by its last refresh
        assert any(e["kind"] == "ota.stored" and e["detail"]["version"] == 1 for e in events), events
    finally:
        lab.stop()


def _canary(lab: Lab, rid: int, version: int) -> str:
    with lab.api as api:
        for d in lab.devices:
            if api.get(f"/v1/devices/{d}").json()["desired"].get("production", {}).get("version") == version:
                return d
    raise AssertionError(f"rollout {rid} put no device on v{version}")


def _refusals(lab: Lab) -> list[str]:
    with lab.api as api:
        return [
            f"{d}: {e['kind']}: {e['message']}"
            for d in lab.devices
            for e in api.get(f"/v1/devices/{d}/events").json()
            if e["kind"] in ("ota.rolled_back", "ota.rejected")
        ]
