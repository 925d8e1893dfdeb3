"""A simulated device: a real agent, its camera, and the local app that calls it.

The app asks the agent for a prediction ``app_rate_hz`` times a second through the
agent's local API handler (the same code the Unix socket serves, called in process),
and reports the true label for a share ``label_rate`` of them after ``label_delay_s``
(a person confirming, a later sensor), as label feedback. With ``raw`` the app sends
the sensor's raw frame and the agent turns it into model inputs with the serving
model's feature spec (what captured samples then carry for retraining). The fleet
process calls :meth:`SimDevice.tick` for all its devices from one thread.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any

from agent.daemon import Agent
from firmware_sim.sensors import Camera


@dataclass(frozen=True)
class AppSpec:
    rate_hz: float = 1.0  # predictions per second
    label_rate: float = 0.5  # share of predictions whose true label the app reports
    label_delay_s: float = 2.0  # seconds from prediction to label
    raw: bool = False  # send the sensor's raw frame (8x8, 0..16), not model inputs


@dataclass
class AppStats:
    calls: int = 0
    errors: int = 0  # answers with ok = false once the device had a model (a swap must never cause one)
    before_model: int = 0  # calls before the device's first model (no model loaded yet)
    labels: int = 0
    correct: int = 0
    last_error: str = ""


@dataclass
class SimDevice:
    device_id: str
    agent: Agent
    camera: Camera
    app: AppSpec
    rng: random.Random
    stats: AppStats = field(default_factory=AppStats)
    had_model: bool = False
    _next: float = 0.0
    _labels: list[tuple[float, str, int]] = field(default_factory=list)

    def tick(self, now: float) -> None:
        while self._labels and self._labels[0][0] <= now:
            _, pid, label = heapq.heappop(self._labels)
            self._call({"op": "feedback", "prediction_id": pid, "label": label}, feedback=True)
        if self.app.rate_hz <= 0 or now < self._next:
            return
        self._next = max(self._next, now - 1.0) + self.rng.expovariate(self.app.rate_hz)  # Poisson arrivals
        if self.app.raw:
            x, label = self.camera.raw_frame()
            out = self._call({"op": "predict", "inputs": x, "raw": True})
        else:
            x, label = self.camera.frame()
            out = self._call({"op": "predict", "inputs": x})
        if out.get("ok") and self.rng.random() < self.app.label_rate:
            heapq.heappush(self._labels, (now + self.app.label_delay_s, str(out["prediction_id"]), label))

    def _call(self, req: dict[str, Any], feedback: bool = False) -> dict[str, Any]:
        try:
            out = self.agent.local.handle(req)
        except Exception as exc:  # the app must survive anything the agent does
            out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if feedback:
            if out.get("ok"):
                self.stats.labels += 1
                self.stats.correct += bool(out.get("correct"))
            return out
        if out.get("ok"):
            self.had_model = True
        elif not self.had_model:
            self.stats.before_model += 1
            return out
        self.stats.calls += 1
        if not out.get("ok"):
            self.stats.errors += 1
            self.stats.last_error = str(out.get("error", ""))[:200]
        return out
