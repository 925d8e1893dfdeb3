"""The agent's telemetry: records inferences, closes windows, stores and forwards them.

Threads: the inference threads call :meth:`Telemetry.observe` (binning with
numpy, then a short locked add); ``telemetry-window`` closes a window every
``window_s`` seconds and commits it to the on-disk queue; ``telemetry-sender``
forwards the queue to the broker; ``telemetry-shadow`` (only while a shadow
model is loaded) runs the shadow model on production's inputs and counts
agreement. A window also closes early when a role changes model, so each
window has one model per role.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import AgentConfig
from agent.host import InferenceRecord, ModelHost, NoModelError
from agent.http import from_config
from agent.link import MqttLink
from agent.telemetry.capture import CaptureSpool, Uploader
from agent.telemetry.predlog import Prediction, PredictionLog
from agent.telemetry.queue import WindowQueue
from agent.telemetry.sender import Sender
from agent.telemetry.system import SystemMetrics
from agent.telemetry.window import RoleAccumulator, WindowBuilder, top_classes
from shared.messages import MAX_LATE_LABELS, LateLabel, encode_compact, now
from shared.messages import Telemetry as TelemetryWindow

log = logging.getLogger(__name__)
RECENT_PREDICTIONS = 4096  # predictions kept in memory (with inputs, for capture) for label feedback
PENDING_LABELS = 10_000  # late labels waiting for the next windows (MAX_LATE_LABELS go in each); oldest dropped


@dataclass(frozen=True)
class _Recent:
    """What feedback needs of a prediction still in memory."""

    acc: RoleAccumulator  # the window it was counted in
    prediction: Prediction
    sha256: str
    inputs: Any  # kept only while data capture is on


class Telemetry:
    def __init__(
        self, cfg: AgentConfig, host: ModelHost, link: MqttLink, next_seq: Callable[[], int], agent_version: str
    ) -> None:
        self.cfg = cfg
        self.host = host
        self.link = link
        self._next_seq = next_seq
        self.agent_version = agent_version
        self.boot = os.urandom(6).hex()
        self.builder = WindowBuilder()
        self.queue = WindowQueue(queue_path(cfg.data_dir), cfg.telemetry.queue_max_windows)
        self.sender = Sender(link, self.queue, max_inflight=cfg.telemetry.max_inflight)
        self.system = SystemMetrics(cfg.data_dir) if cfg.telemetry.system_metrics else None
        self.spool = CaptureSpool(cfg.data_dir / "capture.db", cfg.capture) if cfg.capture.enabled else None
        self.uploader = None
        if self.spool is not None:
            self.uploader = Uploader(self.spool, cfg.capture, cfg.device_id, http=from_config(cfg, timeout=30.0))
        self.windows = 0
        self._window_start = time.time()
        self._close_lock = threading.Lock()
        self._malformed_seen = 0
        self._recent: OrderedDict[str, _Recent] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._unlogged: list[Prediction] = []  # predictions since the last window close, for the prediction log
        self._late: deque[LateLabel] = deque(maxlen=PENDING_LABELS)  # labels for predictions of earlier windows
        self.predlog = PredictionLog(cfg.data_dir / "predictions.db", cfg.telemetry.prediction_log_max)
        self._shadow_q: queue.Queue[tuple[Any, int]] = queue.Queue(maxsize=64)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._window_loop, name="telemetry-window", daemon=True),
            threading.Thread(target=self._shadow_loop, name="telemetry-shadow", daemon=True),
        ]

    # -- life cycle ------------------------------------------------------------
    def start(self) -> None:
        self.host.observers.append(self.observe)
        for t in self._threads:
            t.start()
        self.sender.start()
        if self.uploader is not None:
            self.uploader.start()

    def stop(self) -> None:
        """Store the partial window too, so a clean restart loses nothing."""
        if self.observe in self.host.observers:
            self.host.observers.remove(self.observe)
        self._stop.set()
        try:
            self._shadow_q.put_nowait((None, -1))  # wake the shadow thread so it sees the stop
        except queue.Full:
            pass
        for t in self._threads:
            t.join(timeout=5.0)
        self.close_window()
        self.sender.stop()
        if self.uploader is not None:
            self.uploader.stop()
        self.predlog.close()

    # -- windows -----------------------------------------------------------------
    def _window_loop(self) -> None:
        period = self.cfg.telemetry.window_s
        while not self._stop.wait(max(0.0, self._window_start + period - time.time())):
            try:
                self.close_window()
            except Exception:
                log.exception("could not close telemetry window")
                self._stop.wait(1.0)

    def close_window(self) -> int:
        """Close the current window and commit it to the queue; return its seq."""
        with self._close_lock:
            end = time.time()
            roles, counters = self.builder.close()
            counters["messages_malformed"] += self._take_malformed()
            with self._recent_lock:
                unlogged, self._unlogged = self._unlogged, []
                labels = [self._late.popleft() for _ in range(min(len(self._late), MAX_LATE_LABELS))]
            try:
                self.predlog.add_many(unlogged)
            except Exception:  # a full disk must not stop telemetry; those predictions' late labels are lost
                log.exception("could not write %d predictions to the prediction log", len(unlogged))
            start, self._window_start = self._window_start, end
            index, self.windows = self.windows, self.windows + 1
            seq = self._next_seq()
            system = self.system.sample() if self.system is not None else {}
            system["queue_pending"] = self.queue.pending()

            def render(dropped: int) -> bytes:
                counters["windows_dropped"] += dropped
                return encode_compact(
                    TelemetryWindow(
                        device_id=self.cfg.device_id,
                        seq=seq,
                        sent_at=now(),
                        window_start=round(start, 3),
                        window_s=round(end - start, 3),
                        roles=roles,
                        system=system,
                        counters=counters,
                        agent={"version": self.agent_version, "boot": self.boot, "window": index},
                        labels=labels,
                    )
                )

            dropped = self.queue.put(seq, end, render)
            if dropped:
                log.warning("telemetry queue full (%d windows): dropped the %d oldest", self.queue.max_windows, dropped)
        self.sender.wake()
        return seq

    def _take_malformed(self) -> int:
        seen = self.link.malformed
        delta, self._malformed_seen = seen - self._malformed_seen, seen
        return delta

    def count(self, name: str, n: int = 1) -> None:
        """Add to an agent counter of the current window (see ``shared.telemetry.COUNTERS``)."""
        self.builder.count(name, n)

    # -- inferences --------------------------------------------------------------
    def _accumulator(self, rec: InferenceRecord) -> RoleAccumulator:
        m = rec.model.manifest
        for _ in range(3):
            acc = self.builder.accumulator(rec.role, m, rec.model.sha256)
            if acc is not None:
                return acc
            self.close_window()  # another model held this role in this window
        raise RuntimeError(f"role {rec.role} keeps changing model")

    def observe(self, rec: InferenceRecord) -> None:
        m = rec.model.manifest
        inputs = rec.inputs.get(m.inputs[0].name) if isinstance(rec.inputs, dict) else rec.inputs
        output = rec.outputs.get(m.outputs[0].name) if rec.outputs is not None else None
        error = rec.error is not None
        while True:
            acc = self._accumulator(rec)
            try:
                parts = acc.measure(rec.latency_ms, inputs, output, error)
            except (ValueError, TypeError):
                parts = acc.measure(rec.latency_ms, None, None, error)
            if acc.add(parts):
                break
        if error:
            return
        predicted = int(top_classes(np.asarray(output))[0]) if acc.spec.classes else None
        keep_inputs = self.spool is not None
        if predicted is not None:
            pred = Prediction(rec.prediction_id, rec.role, m.name, m.version, round(self._window_start, 3), predicted)
            with self._recent_lock:
                self._recent[rec.prediction_id] = _Recent(acc, pred, rec.model.sha256, inputs if keep_inputs else None)
                self._unlogged.append(pred)
                while len(self._recent) > RECENT_PREDICTIONS:
                    self._recent.popitem(last=False)
        if self.spool is not None and self.spool.sampled():
            self._capture(rec.role, acc, inputs, None, predicted, rec.prediction_id)
        if rec.role == "production" and predicted is not None and "shadow" in self.host.roles():
            try:
                self._shadow_q.put_nowait((rec.inputs, predicted))
            except queue.Full:
                pass  # shadow comparison is best effort; never slow production down

    def feedback(self, prediction_id: str, label: int) -> dict[str, Any]:
        """Ground truth for an earlier prediction, from a local application.

        It counts for the prediction's window and version: in the window's own summary while
        that window is open, else as a late label in the next telemetry message. Predictions
        older than the in-memory ones are found in the prediction log on disk.
        """
        with self._recent_lock:
            entry = self._recent.get(prediction_id)
        pred = entry.prediction if entry is not None else self.predlog.get(prediction_id)
        if pred is None:
            return {"ok": False, "error": f"unknown or expired prediction_id {prediction_id!r:.80}"}
        if entry is None or not entry.acc.record_label(pred.predicted, label):
            late = LateLabel(pred.prediction_id, pred.role, pred.model, pred.version, pred.window_start, pred.predicted, label)
            with self._recent_lock:
                self._late.append(late)
        acc = self.builder.current(pred.role)
        if self.spool is not None and entry is not None and entry.inputs is not None and acc is not None:
            self._capture(pred.role, acc, entry.inputs, label, pred.predicted, prediction_id)
        return {"ok": True, "correct": pred.predicted == label}

    def _capture(
        self, role: str, acc: RoleAccumulator, inputs: Any, label: int | None, predicted: int | None, prediction_id: str = ""
    ) -> None:
        assert self.spool is not None
        try:
            data = np.asarray(inputs, dtype=np.float32).round(6).tolist()
        except (ValueError, TypeError):
            return
        sample = {"ts": now(), "role": role, "model": acc.model, "version": acc.version, "inputs": data,
                  "prediction": predicted, "label": label, "prediction_id": prediction_id}  # fmt: skip
        size = self.spool.offer(sample, labelled=label is not None)
        if size:
            self.count("capture_samples")
            self.count("capture_bytes", size)

    def _shadow_loop(self) -> None:
        while not self._stop.is_set():
            inputs, predicted = self._shadow_q.get()
            if self._stop.is_set():
                return
            try:
                out = self.host.predict(inputs, role="shadow")  # recorded in the shadow role's summary too
            except (NoModelError, ValueError, TypeError):
                continue
            except Exception:
                log.exception("shadow inference failed")
                continue
            acc = self.builder.current("shadow")
            first = next(iter(out["outputs"].values()), None)
            if acc is None or first is None:
                continue
            agree = int(top_classes(np.asarray(first))[0]) == predicted
            while acc is not None and not acc.record_shadow(agree):
                acc = self.builder.current("shadow")


def queue_path(data_dir: Path) -> Path:
    return data_dir / "telemetry.db"
