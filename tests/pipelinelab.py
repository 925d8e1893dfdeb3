"""A small fleet's captured data for pipeline tests and the benchmark: digits before and after a sensor ages.

Devices file capture batches exactly as ``POST /v1/capture/{device}`` stores them
(one JSON-lines file per batch under ``{data_dir}/capture/{device}/``). Raw inputs
are pixels 0..16; devices of the ``aged`` cohort see ``demo.AGED_SENSOR`` after
``drift_at``. Every sample is labelled except every ``unlabelled_every``-th.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.pipeline import datasets, demo
from shared.features import FeatureSpec


@dataclass(frozen=True)
class Lab:
    x: np.ndarray  # raw digits
    y: np.ndarray
    devices: dict[str, datasets.DeviceInfo]


def write_batch(capture: Path, device: str, rows: list[dict], first: int) -> Path:
    folder = capture / device
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{first:012d}-{first + len(rows) - 1:012d}.jsonl"
    path.write_text("".join(json.dumps({"id": first + i, **r}, separators=(",", ":")) + "\n" for i, r in enumerate(rows)))
    return path


SPEC = FeatureSpec.from_dict(demo.feature_spec())


def sample(x: np.ndarray, ts: float, label: int | None, pid: str, model: str = "digits", version: int = 1) -> dict:
    """One capture sample as the agent uploads it: the model inputs and, the app having sent raw, the raw item."""
    raw = np.round(np.asarray(x, dtype=np.float32), 4)
    inputs = SPEC.transform(raw.reshape(1, 8, 8), validate=False).reshape(-1)
    return {"ts": ts, "role": "production", "model": model, "version": version, "inputs": inputs.tolist(),
            "raw": raw.tolist(), "prediction": None, "label": label, "prediction_id": pid}  # fmt: skip


def fleet(n_devices: int = 6) -> Lab:
    x, y = demo.load_raw()
    devices = {}
    for i in range(n_devices):
        cohort = "aged" if i % 2 == 0 else "fresh"
        devices[f"dev-{i}"] = datasets.DeviceInfo((cohort,), "pi4" if i < n_devices // 2 else "pi5")
    return Lab(x, y, devices)


def capture(
    lab: Lab,
    capture_dir: Path,
    *,
    start: float,
    end: float,
    per_device: int,
    drift_at: float | None = None,
    seed: int = 0,
    first_id: int = 1,
    unlabelled_every: int = 5,
    model: str = "digits",
    version: int = 1,
) -> None:
    """``per_device`` samples per device spread evenly over [start, end), as one batch per device."""
    rng = np.random.default_rng(seed)
    for d, (device, info) in enumerate(sorted(lab.devices.items())):
        idx = rng.integers(0, len(lab.x), per_device)
        ts = start + (np.arange(per_device) + 0.5) * (end - start) / per_device
        raw = lab.x[idx].copy()
        if drift_at is not None and "aged" in info.cohorts:
            late = ts >= drift_at
            raw[late] = demo.degrade(raw[late], demo.AGED_SENSOR, seed=seed * 100 + d)
        rows = [
            sample(
                raw[i],
                float(ts[i]),
                None if i % unlabelled_every == 0 else int(lab.y[idx[i]]),
                f"{device}-{first_id + i}",
                model,
                version,
            )
            for i in range(per_device)
        ]
        write_batch(capture_dir, device, rows, first_id)


class CaptureDevice:
    """An enrolled device that uploads capture batches through ``POST /v1/capture/{id}``, signed with its key."""

    def __init__(self, admin: Any, device_id: str, hardware_class: str = "") -> None:
        from controller.identity.pki import new_key
        from shared.csr import make_csr

        r = admin.post("/v1/devices", json={"id": device_id, "hardware_class": hardware_class})
        assert r.status_code == 201, r.text
        token = admin.post("/v1/identity/tokens", json={"device_id": device_id}).json()["token"]
        self.id, self.key = device_id, new_key()
        r = admin.post("/v1/identity/enrol", json={"token": token, "csr": make_csr(self.key, device_id).decode()})
        assert r.status_code == 201, r.text
        self.serial = r.json()["serial"]

    def upload(self, client: Any, rows: list[dict], first: int) -> None:
        from shared.device_auth import sign

        body = json.dumps({"samples": [{"id": first + i, "sample": s} for i, s in enumerate(rows)]}).encode()
        path = f"/v1/capture/{self.id}"
        r = client.post(path, content=body, headers={"Authorization": sign(self.key, self.serial, "POST", path, body),
                                                     "Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 200, r.text


def samples_for(
    lab: Lab, device: str, *, start: float, end: float, n: int, drifted: bool, seed: int, first_id: int, unlabelled_every: int = 5
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """``n`` capture samples of one device over [start, end) and the raw inputs and labels behind them."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(lab.x), n)
    raw = lab.x[idx].copy()
    if drifted:
        raw = demo.degrade(raw, demo.AGED_SENSOR, seed=seed)
    ts = start + (np.arange(n) + 0.5) * (end - start) / n
    rows = [
        sample(raw[i], float(ts[i]), None if i % unlabelled_every == 0 else int(lab.y[idx[i]]), f"{device}-{first_id + i}")
        for i in range(n)
    ]
    return rows, raw, lab.y[idx]
