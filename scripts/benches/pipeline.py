"""Pipeline: from a trigger to a registered int8 model, what int8 costs, what retraining recovers, and skew.

A controller (``create_app``: SQLite, the real registry with its TUF hook, no
broker) has ``digits`` v1 registered: the pipeline's own first model, trained on
a day of clean captured samples of 8 devices. Then the ``aged`` cohort's sensors
age (``demo.AGED_SENSOR``: brightness, noise, blur, rotation) and its devices
capture another day; every sample comes with its raw image and most with a
label, as local apps report them. An operator's trigger for ``aged`` goes through
the retraining policy and the in-process runner, the leader's tick registers the
result.

- ``train_to_registered_s``: from the trigger to the registered, blessed version
  (snapshot, quality gate, 40 epochs, int8 conversion, evaluation, bundle, registry).
- ``int8_accuracy_delta_points``: float minus int8 accuracy on the held-out rows (goal ≤ 1).
- ``int8_size_ratio``: int8 ÷ float TFLite model size (goal ≤ 0.3).
- ``drift_recovery_points``: retrained minus incumbent accuracy on held-out drifted
  data (the aged cohort's recent held-out rows), both int8 through ``agent.runtime`` (goal ≥ 5).
- ``skew_max_abs``: largest |agent's featurize(raw) − pipeline's model input| over
  every sample of the dataset (goal 0).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DAY = 86400.0
DEVICES = 8
PER_DAY = 300  # captured samples per device per day


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _write_day(capture: Path, devices: dict[str, str], start: float, first: int, aged: bool, seed: int) -> None:
    """One day of capture batches, as ``POST /v1/capture/{device}`` stores them."""
    from controller.pipeline import demo
    from shared.features import FeatureSpec

    spec = FeatureSpec.from_dict(demo.feature_spec())
    x, y = demo.load_raw()
    for d, (device, cohort) in enumerate(sorted(devices.items())):
        rng = np.random.default_rng(seed * 100 + d)
        idx = rng.integers(0, len(x), PER_DAY)
        raw = x[idx]
        if aged and cohort == "aged":
            raw = demo.degrade(raw, demo.AGED_SENSOR, seed=seed * 100 + d)
        raw = np.round(raw, 4)
        inputs = spec.transform(raw.reshape(-1, 8, 8), validate=False)
        folder = capture / device
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(PER_DAY):
            s = {"id": first + i, "ts": start + (i + 0.5) * DAY / PER_DAY, "role": "production", "model": "digits", "version": 1,
                 "inputs": inputs[i].tolist(), "raw": raw[i].tolist(), "prediction": None,
                 "label": None if i % 5 == 0 else int(y[idx[i]]), "prediction_id": f"{device}-{first + i}"}  # fmt: skip
            lines.append(json.dumps(s, separators=(",", ":")))
        (folder / f"{first:012d}-{first + PER_DAY - 1:012d}.jsonl").write_text("\n".join(lines) + "\n")


def run() -> dict[str, Any]:
    from sqlmodel import Session

    from agent.runtime import load_model
    from controller.app import create_app
    from controller.core.config import Settings
    from controller.core.tables import Cohort, Device
    from controller.pipeline import datasets, demo
    from controller.pipeline import run as pipeline_run
    from controller.pipeline.runner import InProcessRunner
    from controller.pipeline.train import TrainParams
    from shared import bundle as bundle_fmt
    from shared.features import FeatureSpec

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        now = time.time()
        devices = {f"cam-{i}": ("aged" if i % 2 == 0 else "fresh") for i in range(DEVICES)}
        _write_day(tmp / "data" / "capture", devices, now - 2 * DAY, 1, aged=False, seed=1)

        _log("training the incumbent v1 on a clean day")
        first_root = tmp / "first"
        info = {d: datasets.DeviceInfo((c,), "pi4" if c == "aged" else "pi5") for d, c in devices.items()}
        datasets.export_captures(tmp / "data" / "capture", first_root, info)
        spec1 = pipeline_run.RunSpec(
            model="digits", version=1, parent_version=None, n_classes=10, params=TrainParams(), feature_spec=demo.feature_spec()
        )
        first = pipeline_run.execute(spec1, first_root, progress=_log, now=now - DAY)
        assert first.bundle is not None, first.reasons

        settings = Settings(
            environment="development",
            data_dir=tmp / "data",
            database_url=f"sqlite:///{tmp / 'controller.db'}",
            mqtt_enabled=False,
            public_url="http://127.0.0.1:8000",
            pipeline_cooldown_s=3600,
            pipeline_recent_s=DAY,
        )
        app = create_app(settings)
        engine, job = app.state.engine, app.state.pipeline
        job.runner = InProcessRunner(background=False)
        from controller.core.roles import Role
        from controller.core.security import Principal

        with Session(engine) as s:
            app.state.registry.register(s, first.bundle, Principal("admin", Role.ADMIN))
            for d, c in devices.items():
                s.add(Device(id=d, hardware_class="pi4" if c == "aged" else "pi5"))
            for c in ("aged", "fresh"):
                s.add(Cohort(name=c, members=[d for d, cc in devices.items() if cc == c]))
            s.commit()

        _write_day(tmp / "data" / "capture", devices, now - DAY, 10_000, aged=True, seed=2)
        _log("the aged cohort's sensors aged for a day; trigger a run for it")
        t0 = time.perf_counter()
        r = job.request(engine, "digits", "aged", "bench: sensors aged", "bench", now=now)
        job.tick(engine, now=now + 1)
        train_to_registered = time.perf_counter() - t0
        with Session(engine) as s:
            from controller.core.tables import PipelineRun

            row = s.get(PipelineRun, r.id)
            assert row is not None and row.state == "registered", (row.state if row else None, row.reason if row else None)
            result = dict(row.result)
            from controller.release.registry import Registry

            mv = Registry.get(s, "digits", int(row.version or 0))
            cand = app.state.blobs.local_path(mv.sha256).read_bytes()
        m = result["metrics"]
        aged = next(x for x in result["evaluation"]["slices"] if x["set"] == "fleet" and x["slice"] == "cohort:aged")

        _log("skew: the agent's featurize against the pipeline's model inputs, every sample")
        ds = datasets.load(job.datasets_root, result["dataset_sha256"])
        b = bundle_fmt.read(cand)
        loaded = load_model(b.manifest, b.model, "bench")
        fs = b.manifest.features
        assert fs is not None
        rows = np.arange(len(ds))
        pipeline_x = pipeline_run.model_inputs(FeatureSpec.from_dict(fs.to_dict()), ds, rows)
        agent_x = np.concatenate([next(iter(loaded.featurize(ds.raw[i].reshape(1, 8, 8)).values())).reshape(1, -1) for i in rows])
        skew = float(np.max(np.abs(agent_x - pipeline_x)))
        app.state.engine.dispose()
    out = {
        "train_to_registered_s": round(train_to_registered, 2),
        "int8_accuracy_delta_points": round((m["accuracy_float"] - m["accuracy_int8"]) * 100, 3),
        "int8_size_ratio": m["int8_size_ratio"],
        "drift_recovery_points": round((aged["candidate"] - aged["incumbent"]) * 100, 2),
        "drift_recovery_rows": aged["n"],
        "pipeline_accuracy_int8": m["accuracy_int8"],
        "skew_max_abs": skew,
    }
    _log(json.dumps(out))
    return out
