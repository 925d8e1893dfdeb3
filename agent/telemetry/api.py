"""The local API plus label feedback: ``{"op": "feedback", "prediction_id": "...", "label": 3}``.

Applications that learn the ground truth later report it here; it feeds the
window's ``labels`` counts (accuracy) and, with data capture on, a labelled
sample. Answer: ``{"ok": true, "correct": true}`` or ``{"ok": false, "error": ...}``.
"""

from __future__ import annotations

from typing import Any

from agent.host import ModelHost
from agent.server import LocalApi
from agent.telemetry.service import Telemetry


class TelemetryApi(LocalApi):
    def __init__(self, host: ModelHost, telemetry: Telemetry) -> None:
        super().__init__(host)
        self.telemetry = telemetry

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("op") != "feedback":
            return super().handle(req)
        pid, label = req.get("prediction_id"), req.get("label")
        if not isinstance(pid, str) or not isinstance(label, int) or isinstance(label, bool):
            got = f"prediction_id {type(pid).__name__}, label {type(label).__name__}"
            return {"ok": False, "error": f"bad feedback: expected a string prediction_id and an integer label, got {got}"}
        return self.telemetry.feedback(pid, label)
