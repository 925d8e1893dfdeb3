"""Monitoring: drift detection speed, false alarms, the accuracy estimate, and drift evaluation cost.

A softmax digits model (numpy) is trained on 900 digits; its manifest reference
(feature and prediction histograms, confidence calibration) comes from 450
held-out digits; simulated devices (``firmware_sim.windows``) predict on the
remaining 447, resampled, 300 inferences per device per 60 s window. Windows go
through the real ingest path (``TelemetryIngest``: dedupe, per-cohort
aggregates, SQLite) and the leader's real monitor job (``MonitorJob``, drift
over the latest 3 complete windows, default thresholds).

- ``drift_detect_windows``: 20 devices; from window 10 every pixel reads 0.2
  brighter (a sensor offset of a fifth of the input range; readings saturate at
  1, so dark pixels move and bright ones stay). Windows from the first
  drifted one to the drift alert, counting that window (goal ≤ 3).
- ``false_drift_alarms``: 20 devices, stationary, 500 windows: drift alerts
  opened (goal 0).
- ``estimated_accuracy_abs_error``: 20 devices, Gaussian sensor noise growing
  window by window (σ 0 … 0.6; true accuracy falls from ~0.94 to ~0.6): the
  largest |confidence-based estimate − true accuracy| over the windows, read
  from the accuracy the controller reports per window (goal ≤ 0.05).
- ``drift_eval_ms_per_1k_devices``: 1,000 devices report 3 windows; the time of
  one drift evaluation of the fleet (``service.drift``), median of 20. Windows
  are merged at ingest, so this does not grow with the number of devices.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

W = 60  # seconds per window
DEVICES = 20
PER_WINDOW = 300  # inferences per device per window
OFFSET = 0.2  # injected sensor drift (a fifth of the input range; the sensor saturates at 1)
DRIFT_FROM = 10  # first drifted window


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Fleet:
    """Simulated devices feeding the real ingest path and the real monitor job."""

    def __init__(self, tmp: Path, reference: dict[str, Any], w: np.ndarray, b: np.ndarray, n_devices: int) -> None:
        from sqlmodel import Session

        from controller.core.db import init_db, make_engine
        from controller.core.leader import LeaderContext
        from controller.core.metrics import Metrics
        from controller.core.tables import Device, ModelVersion
        from controller.monitoring.jobs import MonitorJob
        from controller.telemetry.batch import TelemetryIngest

        self.engine = make_engine(f"sqlite:///{tmp}/bench.db")
        init_db(self.engine)
        self.devices = [f"sim-{i:04d}" for i in range(n_devices)]
        with Session(self.engine) as s:
            s.add(
                ModelVersion(
                    name="digits", version=1, runtime="onnx", sha256="0" * 64, length=0, manifest={"reference": reference}
                )
            )
            s.add_all(Device(id=d) for d in self.devices)
            s.commit()
        self.reference, self.w, self.b = reference, w, b
        self.metrics = Metrics()
        self.ingest = TelemetryIngest(self.engine, self.metrics, window_s=W, linger_s=0.01)
        self.ingest.start()
        self.job = MonitorJob(self.metrics, W, drift_windows=3)
        self.ctx = LeaderContext(self.engine, 1, lambda: True)
        self.t0 = (int(time.time()) // W) * W - 1000 * W
        self.seq = 0

    def window(self, k: int, inputs: list[np.ndarray]) -> tuple[int, int]:
        """Ingest window ``k`` (one input batch per device); returns (right, total) predictions."""
        from controller.telemetry.decode import decode_telemetry
        from firmware_sim.windows import role_summary, softmax_probs, telemetry_message

        self.seq += 1
        acked: list[int] = []
        right = total = 0
        for device, (x, y) in zip(self.devices, inputs, strict=True):
            p = softmax_probs(self.w, self.b, x)
            right += int((p.argmax(axis=1) == y).sum())
            total += len(y)
            msg = telemetry_message(
                device, self.seq, self.t0 + k * W + 1, W, {"production": role_summary(self.reference, "digits", 1, x, p)}
            )
            self.ingest.submit(decode_telemetry(json.dumps(msg).encode()), lambda: acked.append(1))
        while len(acked) < len(inputs):
            time.sleep(0.002)
        return right, total

    def tick(self, k: int) -> None:
        """The leader's job right after window ``k`` closed."""
        self.job(self.ctx, now=self.t0 + (k + 1) * W + 1)

    def drift_alerts(self) -> list[Any]:
        from sqlmodel import Session, select

        from controller.core.tables import MonitorAlert

        with Session(self.engine) as s:
            return list(s.exec(select(MonitorAlert).where(MonitorAlert.kind == "drift")).all())

    def close(self) -> None:
        self.ingest.stop()
        self.engine.dispose()


def run() -> dict[str, object]:
    from controller.monitoring.service import Scope, accuracy, drift
    from firmware_sim.modelgen import load_digits, reference_histograms, train_softmax
    from firmware_sim.windows import softmax_probs

    x, y = load_digits()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    train, ref_idx, live = idx[:900], idx[900:1350], idx[1350:]
    w, b = train_softmax(x[train], y[train], epochs=200)
    reference = reference_histograms(x[ref_idx], softmax_probs(w, b, x[ref_idx]), y[ref_idx])

    def batch(offset: float = 0.0, sigma: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        i = rng.choice(live, PER_WINDOW)
        xi = x[i] + offset
        if sigma:
            xi = xi + rng.normal(0, sigma, xi.shape)
        return np.clip(xi, 0.0, 1.0), y[i]  # the sensor saturates at its range

    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        _log(f"drift detection: {DEVICES} devices, +{OFFSET} sensor offset from window {DRIFT_FROM}")
        fleet = Fleet(tmp / "a", reference, w, b, DEVICES)
        detect: int | None = None
        for k in range(DRIFT_FROM + 10):
            fleet.window(k, [batch(OFFSET if k >= DRIFT_FROM else 0.0) for _ in fleet.devices])
            fleet.tick(k)
            firing = [a for a in fleet.drift_alerts() if a.state == "firing"]
            if firing and k < DRIFT_FROM:
                _log(f"  false alarm before the drift, window {k}")
            if firing and k >= DRIFT_FROM:
                detect = k - DRIFT_FROM + 1
                _log(f"  alert after {detect} window(s): {firing[0].summary}")
                break
        out["drift_detect_windows"] = detect if detect is not None else -1
        out["drift_detect_offset"] = OFFSET
        fleet.close()

        _log(f"false alarms: {DEVICES} devices, 500 stationary windows")
        fleet = Fleet(tmp / "b", reference, w, b, DEVICES)
        t = time.perf_counter()
        for k in range(500):
            fleet.window(k, [batch() for _ in fleet.devices])
            fleet.tick(k)
            if k % 100 == 99:
                _log(f"  {k + 1} windows, {len(fleet.drift_alerts())} alerts, {time.perf_counter() - t:.0f} s")
        out["false_drift_alarms"] = len(fleet.drift_alerts())
        fleet.close()

        _log("accuracy estimate under growing sensor noise")
        fleet = Fleet(tmp / "c", reference, w, b, DEVICES)
        truth = {}
        sigmas = np.linspace(0.0, 0.6, 13)
        for k, sigma in enumerate(sigmas):
            right, total = fleet.window(k, [batch(sigma=float(sigma)) for _ in fleet.devices])
            truth[fleet.t0 + k * W] = right / total
        from sqlmodel import Session

        with Session(fleet.engine) as s:
            rows, _ = accuracy(s, Scope("digits"))
        errors = [abs(r.estimated - truth[r.window_start]) for r in rows if r.estimated is not None]
        assert len(errors) == len(sigmas), (len(errors), len(sigmas))
        _log(
            "  "
            + ", ".join(
                f"σ={s:.2f}: true {truth[fleet.t0 + k * W]:.3f} est {rows[k].estimated:.3f}" for k, s in enumerate(sigmas)
            )
        )
        out["estimated_accuracy_abs_error"] = round(max(errors), 4)
        out["estimated_accuracy_true_range"] = [round(min(truth.values()), 3), round(max(truth.values()), 3)]
        fleet.close()

        _log("drift evaluation cost: 1,000 devices, 3 windows")
        fleet = Fleet(tmp / "d", reference, w, b, 1000)
        small = PER_WINDOW // 10
        for k in range(3):
            fleet.window(k, [(x[rng.choice(live, small)], np.zeros(small, dtype=int)) for _ in fleet.devices])
        times = []
        with Session(fleet.engine) as s:
            for _ in range(20):
                t = time.perf_counter()
                res = drift(s, Scope("digits", since=fleet.t0, until=fleet.t0 + 3 * W))
                times.append((time.perf_counter() - t) * 1000)
        assert res and res[0].device_windows == 3000
        out["drift_eval_ms_per_1k_devices"] = round(statistics.median(times), 2)
        fleet.close()
    return out
