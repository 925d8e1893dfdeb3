"""Ground truth from local applications: "prediction X was really label Y".

Recent predictions are kept in a bounded map (oldest dropped first) so a label
can be matched to the model that made the prediction; per-role counts of
labelled and correct predictions are sums, ready for the telemetry window.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


class UnknownPredictionError(LookupError):
    """The prediction id is unknown (never made, or too old and dropped)."""


@dataclass(frozen=True, slots=True)
class Made:
    role: str
    model: str
    version: int
    output: Any  # the first output array; its argmax is the predicted class (computed when a label comes)


class FeedbackLog:
    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._recent: OrderedDict[str, Made] = OrderedDict()
        self._lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = {}  # role -> {"count": n, "correct": k}

    def record(self, prediction_id: str, made: Made) -> None:
        with self._lock:
            self._recent[prediction_id] = made
            if len(self._recent) > self.capacity:
                self._recent.popitem(last=False)

    def label(self, prediction_id: str, label: Any) -> dict[str, Any]:
        with self._lock:
            made = self._recent.pop(prediction_id, None)
            if made is None:
                raise UnknownPredictionError(
                    f"unknown prediction_id {prediction_id!r:.80} "
                    f"(never made, already labelled, or older than the last {self.capacity})"
                )
            predicted = _argmax(made.output)
            correct = None if predicted is None else predicted == label
            c = self.counts.setdefault(made.role, {"count": 0, "correct": 0})
            c["count"] += 1
            c["correct"] += int(bool(correct))
        return {"model": made.model, "version": made.version, "role": made.role, "correct": correct}


def _argmax(output: Any) -> int | None:
    size = getattr(output, "size", 0)
    return int(output.reshape(-1).argmax()) if size > 1 else None
