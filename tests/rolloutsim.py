"""Simulated devices for rollout tests: real MQTT messages (status, telemetry, events) to a real broker.

They do what an agent reports, without models: run what the controller's desired
state says (or what the test tells them), and send telemetry windows with chosen
counts, errors, labels and latencies.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import paho.mqtt.client as mqtt

from shared.messages import ONLINE, Event, RunningModel, Status, Telemetry, encode
from shared.telemetry import N_LATENCY_BUCKETS, latency_bucket
from shared.topics import Kind, device_topic

_seq = itertools.count(int(time.time() * 1000))


def role_summary(model: str, version: int, count: int, errors: int = 0, *, latency_ms: float = 2.0,
                 labels: int = 0, correct: int = 0, agree: int = 0, disagree: int = 0,
                 shape: tuple[dict[str, int], int] = ({}, 10), dropped: int | None = None, sampled_out: int = 0,
                 confusion: list[list[int]] | None = None) -> dict[str, Any]:  # fmt: skip
    """``shape`` is what the version's manifest fixes (``shared.telemetry.summary_shape``): the ingest refuses others.
    ``dropped``, ``sampled_out`` and ``confusion`` are a shadow role's comparison with production."""
    lat = [0] * N_LATENCY_BUCKETS
    lat[latency_bucket(latency_ms)] = count
    features, n_pred = shape
    preds = [count // n_pred] * n_pred
    out = {
        "model": model, "version": version, "count": count, "errors": errors, "samples": count,
        "latency_ms": lat, "predictions": preds, "features": {f: [0] * n for f, n in features.items()},
        "shadow": {"agree": agree, "disagree": disagree}, "labels": {"count": labels, "correct": correct},
    }  # fmt: skip
    if dropped is not None:
        out["shadow"] |= {"dropped": dropped, "sampled_out": sampled_out}
    if confusion is not None:
        out["confusion"] = confusion
    return out


class SimDevices:
    def __init__(self, host: str, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.connect(host, port)
        self.client.loop_start()

    def _pub(self, device: str, kind: Kind, payload: bytes) -> None:
        self.client.publish(device_topic(device, kind), payload, qos=1).wait_for_publish(5)

    def status(self, device: str, running: dict[str, tuple[str, int, str]], online: bool = True, reason: str = "") -> None:
        models = {role: RunningModel(m, v, sha, "onnx", time.time(), reason) for role, (m, v, sha) in running.items()}
        st = Status(device_id=device, seq=next(_seq), sent_at=time.time(), state=ONLINE if online else "offline",
                    agent_version="0.1.0", models=models)  # fmt: skip
        self._pub(device, Kind.STATUS, encode(st))

    def window(self, device: str, roles: dict[str, dict[str, Any]], window_start: float | None = None) -> None:
        t = Telemetry(device_id=device, seq=next(_seq), sent_at=time.time(),
                      window_start=window_start or time.time(), window_s=60, roles=roles)  # fmt: skip
        self._pub(device, Kind.TELEMETRY, encode(t))

    def event(self, device: str, kind: str, message: str, detail: dict[str, Any]) -> None:
        ev = Event(device_id=device, seq=next(_seq), sent_at=time.time(), kind=kind, severity="error", message=message,
                   detail=detail)  # fmt: skip
        self._pub(device, Kind.EVENTS, encode(ev))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
