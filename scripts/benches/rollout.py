"""Rollout: how fast a bad candidate is taken back, and whether a good one reaches everyone.

Real processes (firmware_sim/rollout_lab.py): a private broker, the controller
with a short analysis interval, ``DEVICES`` agents in one cohort on digits v1,
each with a local app sending 10 predictions/s and their true labels.

1. A candidate that passes the health check but is less accurate (one training
   epoch) is rolled out (25% then 100%). Figures:
   - ``detect_to_rollback_intervals``: from the end of the first telemetry window
     a canary device sent with the candidate (every such window shows the
     regression) to the moment the last canary device reported the baseline again,
     in analysis intervals;
   - ``detect_to_decision_intervals``: the same start to the leader's rollback decision
     (the rest of ``detect_to_rollback_intervals`` is the agents' swap back and report);
   - ``bad_version_exposure_device_min``: device-minutes spent running the candidate;
   - ``devices_left_on_bad``: devices still reporting it at the end (goal 0).
2. A good candidate (same training, another seed): ``good_candidate_completed`` is 1
   when it reached 100% and every device reports it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

DEVICES = 6
INTERVAL_S = 2.0
STAGES = [
    {"share": 0.34, "min_duration_s": 6, "min_devices": 2, "min_inferences": 100, "max_duration_s": 900},
    {"share": 1.0, "min_duration_s": 4},
]
THRESHOLDS = {"min_labels": 30, "fail_min_inferences": 30, "max_accuracy_drop": 0.05, "latency_min_samples": 10**9}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _timeline(db: Path, rid: int, candidate: int, baseline: int) -> dict[str, Any]:
    from sqlmodel import Session, select

    from controller.core.db import make_engine
    from controller.core.tables import ActualChange, RolloutDecision, RolloutDevice, RolloutWindow

    engine = make_engine(f"sqlite:///{db}")
    with Session(engine) as s:
        canaries = [d.device_id for d in s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rid)).all()]
        first_bad = min(
            (w.window_start + w.window_s for w in s.exec(select(RolloutWindow).where(RolloutWindow.rollout_id == rid)).all()
             if w.device_id in canaries and (w.roles.get("production") or {}).get("version") == candidate),
            default=None,
        )  # fmt: skip
        exposure, back_at = 0.0, []
        for d in canaries:
            changes = s.exec(select(ActualChange).where(ActualChange.device_id == d, ActualChange.role == "production")).all()
            on = [_ts(c.at) for c in changes if c.version == candidate]
            if not on:
                continue
            off = [_ts(c.at) for c in changes if c.version == baseline and _ts(c.at) > on[0]]
            back_at.append(off[0] if off else time.time())
            exposure += (back_at[-1] - on[0]) / 60
        decided = [_ts(d.at) for d in s.exec(select(RolloutDecision).where(RolloutDecision.rollout_id == rid)).all()
                   if d.action == "rolled_back"]  # fmt: skip
    engine.dispose()
    return {"canaries": canaries, "first_bad_window_end": first_bad, "all_back_at": max(back_at) if back_at else None,
            "exposure_min": exposure, "decided_at": decided[0] if decided else None}  # fmt: skip


def run() -> dict[str, object]:
    from firmware_sim.modelgen import make_onnx_bundle
    from firmware_sim.mosquitto import MosquittoProcess
    from firmware_sim.rollout_lab import Lab, Traffic

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = MosquittoProcess(work / "broker")
        broker.start()
        lab = Lab(work, broker.host, broker.port, n=DEVICES, interval_s=INTERVAL_S)
        traffic: Traffic | None = None
        try:
            _log("starting the controller and agents")
            lab.start(make_onnx_bundle(version=1, epochs=61, latency_budget_ms=1000.0))
            traffic = Traffic(lab.agents, rate_hz=10).start()
            bad = lab.register(make_onnx_bundle(version=2, epochs=1, latency_budget_ms=1000.0))
            _log("rolling out a less accurate candidate")
            rid = lab.create(bad, STAGES, THRESHOLDS)["id"]
            r = lab.wait_rollout(rid, ("ROLLED_BACK", "COMPLETED"), timeout=300)
            _log(f"bad candidate: {r['state']}: {r['reason']}")
            try:
                lab.wait_actual(lambda v: v != bad, timeout=60, what="no device on the bad candidate")
            except TimeoutError as exc:
                _log(str(exc)[:500])
            left = sum(1 for v in lab.actual().values() if v == bad)
            tl = _timeline(work / "controller" / "controller.db", rid, bad, 1)
            detect = decide = None
            if tl["first_bad_window_end"] is not None and tl["decided_at"] is not None:
                decide = round((tl["decided_at"] - tl["first_bad_window_end"]) / INTERVAL_S, 2)
            if tl["first_bad_window_end"] is not None and tl["all_back_at"] is not None:
                detect = round((tl["all_back_at"] - tl["first_bad_window_end"]) / INTERVAL_S, 2)
                if tl["decided_at"] is not None:
                    t0 = tl["first_bad_window_end"]
                    _log(f"decided {tl['decided_at'] - t0:.2f} s and every canary back {tl['all_back_at'] - t0:.2f} s "
                         "after the first bad window ended")  # fmt: skip
            good = lab.register(make_onnx_bundle(version=3, epochs=63, seed=1, latency_budget_ms=1000.0))
            _log("rolling out a good candidate")
            rid2 = lab.create(good, STAGES, THRESHOLDS)["id"]
            r2 = lab.wait_rollout(rid2, ("ROLLED_BACK", "COMPLETED"), timeout=600)
            _log(f"good candidate: {r2['state']}: {r2['reason']}")
            completed = 0
            if r2["state"] == "COMPLETED":
                try:
                    lab.wait_actual(lambda v: v == good, timeout=90, what="every device on the good candidate")
                    completed = 1
                except TimeoutError as exc:
                    _log(str(exc)[:500])
        finally:
            if traffic is not None:
                traffic.stop()
            lab.stop()
            broker.stop()
    return {
        "analysis_interval_s": INTERVAL_S,
        "detect_to_rollback_intervals": detect,
        "detect_to_decision_intervals": decide,
        "bad_version_exposure_device_min": round(tl["exposure_min"], 3),
        "devices_left_on_bad": left,
        "good_candidate_completed": completed,
        "rollout_devices": DEVICES,
        "bad_rollback_reason": r["reason"][:160],
    }
