"""The agent's telemetry: records inferences, closes windows, stores and forwards them.

Threads: the inference threads only append each call to the model host's
``pending`` deque (``ModelHost.recording``); ``telemetry-window`` takes them off
every ``FLUSH_S`` seconds and bins them in bulk with numpy (:meth:`Telemetry.flush`:
histograms, recent predictions for label feedback, capture sampling, the shadow
hand-off; the same sums as binning each call, ADR 0060), closes a window every
``window_s`` seconds and commits it to the on-disk queue; ``telemetry-sender``
forwards the queue to the broker, by default ten windows a message, each window at
once while the desired state asks for fresh telemetry or when it holds something
notable (``agent.telemetry.cadence``, ADR 0076); ``telemetry-shadow`` (only while a shadow
model is loaded) runs the shadow model on a ``sampling.shadow_rate`` share of
production's inputs and counts agreement, a confusion matrix and the comparisons
it missed (sampled out, or dropped when its queue was full). A window also closes early when a role changes model, so each
window has one model per role.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from agent.config import AgentConfig
from agent.host import InferenceRecord, ModelHost, NoModelError, Observed
from agent.http import from_config
from agent.link import MqttLink
from agent.runtime import LoadedModel
from agent.telemetry import cadence
from agent.telemetry.capture import CaptureSpool, Uploader
from agent.telemetry.predlog import Prediction, PredictionLog
from agent.telemetry.queue import WindowQueue
from agent.telemetry.sender import Sender
from agent.telemetry.system import SystemMetrics, SystemSource
from agent.telemetry.window import RoleAccumulator, WindowBuilder, top_classes
from shared import wire
from shared.cadence import holders as fresh_holders
from shared.cadence import is_fresh
from shared.messages import MAX_LATE_LABELS, LateLabel, now
from shared.messages import Telemetry as TelemetryWindow

log = logging.getLogger(__name__)
RECENT_PREDICTIONS = 4096  # predictions kept in memory (with inputs, for capture) for label feedback
FLUSH_S = 0.1  # seconds between bulk binnings of the observed calls (and at every window close)
UNLOGGED_MAX = 4096  # predictions held for the prediction log before they are written (else: at window close)
STOP_DRAIN_S = 3.0  # seconds a clean stop waits for the last windows' acks
STOP_SEND_S = 0.5  # ... when no ack came in this run yet: time to send them, not to wait for acks that may never come
PENDING_LABELS = 10_000  # late labels waiting for the next windows (MAX_LATE_LABELS go in each); oldest dropped


class _Recent(NamedTuple):
    """What feedback needs of a prediction still in memory (a tuple: one per inference, made in bulk)."""

    acc: RoleAccumulator  # the window it was counted in
    prediction: Prediction
    sha256: str
    inputs: Any  # kept only while data capture is on
    raw: Any = None  # the raw input the feature spec made ``inputs`` from; kept only while data capture is on


class Telemetry:
    def __init__(
        self,
        cfg: AgentConfig,
        host: ModelHost,
        link: MqttLink,
        next_seq: Callable[[], int],
        agent_version: str,
        system: SystemSource | None = None,  # gauges; default psutil's when [telemetry] system_metrics
        stream: str = "",  # the id of ``next_seq``'s sequence (ADR 0080); "" sends none
    ) -> None:
        self.cfg = cfg
        self.stream = stream
        self.host = host
        self.link = link
        self._next_seq = next_seq
        self.agent_version = agent_version
        self.boot = os.urandom(6).hex()
        self.flush_s = FLUSH_S  # seconds between bulk binnings; a simulator of many idle agents in one process waits longer
        self.builder = WindowBuilder()
        self.queue = WindowQueue(queue_path(cfg.data_dir), cfg.telemetry.queue_max_windows, cfg.telemetry.queue_max_events)
        t = cfg.telemetry
        self.sender = Sender(
            link,
            self.queue,
            max_inflight=t.max_inflight,
            ack_timeout=t.ack_timeout_s,
            controller_acks=t.controller_acks,
            windows_per_publish=t.windows_per_publish,
            batch_wait_s=t.batch_wait_s or t.windows_per_publish * t.window_s,
            fresh=lambda: is_fresh(self.host.sampling),
        )
        if system is None and cfg.telemetry.system_metrics:
            system = SystemMetrics(cfg.data_dir)
        self.system = system
        self.spool = CaptureSpool(cfg.data_dir / "capture.db", cfg.capture) if cfg.capture.enabled else None
        self.uploader = None
        if self.spool is not None:
            self.uploader = Uploader(self.spool, cfg.capture, cfg.device_id, http=from_config(cfg, timeout=30.0))
        self.windows = 0
        self._window_start = time.time()
        self._close_lock = threading.RLock()
        self._malformed_seen = 0
        self._recent: OrderedDict[str, _Recent] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._served: OrderedDict[str, LoadedModel] = OrderedDict()  # sha256 -> model, the last few that served
        self._unlogged: list[Prediction] = []  # predictions since the last window close, for the prediction log
        self._late: deque[LateLabel] = deque(maxlen=PENDING_LABELS)  # labels for predictions of earlier windows
        self.predlog = PredictionLog(cfg.data_dir / "predictions.db", cfg.telemetry.prediction_log_max)
        self._shadow_q: queue.Queue[tuple[Any, int, Any]] = queue.Queue(maxsize=64)  # (inputs, predicted, raw)
        self._rng = random.Random()  # noqa: S311 (shadow sampling, not security-relevant)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._window_loop, name="telemetry-window", daemon=True),
            threading.Thread(target=self._shadow_loop, name="telemetry-shadow", daemon=True),
        ]

    # -- life cycle ------------------------------------------------------------
    def start(self) -> None:
        self.host.on_backlog = self.flush
        self.host.recording = True
        for t in self._threads:
            t.start()
        self.sender.start()
        if self.uploader is not None:
            self.uploader.start()

    def stop(self) -> None:
        """Store the partial window too, so a clean restart loses nothing."""
        self.host.recording = False
        self.host.on_backlog = None
        self._stop.set()
        try:
            self._shadow_q.put_nowait((None, -1, None))  # wake the shadow thread so it sees the stop
        except queue.Full:
            pass
        for t in self._threads:
            t.join(timeout=5.0)
        self.close_window()
        # What waits (a batch, the last window) goes now if the link is up. The stop waits for its acks when acks
        # come (one came in this run, or a controller acked this queue in an earlier one: a restart right after
        # reconnecting waits for the acks in flight); a receiver that never acks costs only STOP_SEND_S. What is not
        # acknowledged stays on disk for the next start.
        if self.link.connected:
            self.sender.drain(STOP_DRAIN_S if self.sender.acks_expected() else STOP_SEND_S)
        self.sender.stop()
        if self.uploader is not None:
            self.uploader.stop()
        self.predlog.close()

    def local_status(self) -> dict[str, Any]:
        """The telemetry part of ``edgefleet-agent status``: queue, windows and messages, the publish cadence."""
        holders = fresh_holders(self.host.sampling)
        return {
            "queue_depth": self.queue.pending(),
            "windows": self.windows,
            "messages": self.sender.messages,
            "cadence": "fresh" if holders else "batched",
            "fresh_for": list(holders),
            **({"capture": self.uploader.status()} if self.uploader is not None else {}),
        }

    # -- windows -----------------------------------------------------------------
    def _window_loop(self) -> None:
        period = self.cfg.telemetry.window_s
        while True:
            due = self._window_start + period
            if self._stop.wait(max(0.0, min(self.flush_s, due - time.time()))):
                return
            try:
                if time.time() >= due:
                    self.close_window()
                else:
                    self.flush()
            except Exception:
                log.exception("could not close telemetry window")
                self._stop.wait(1.0)

    def close_window(self) -> int:
        """Close the current window and commit it to the queue; return its seq."""
        with self._close_lock:
            self._flush_locked()
            seq = self._close_locked()
        self.sender.wake()
        return seq

    def _close_locked(self, model_changed: bool = False) -> int:
        """Close the current window (the caller holds ``_close_lock``); return its seq."""
        end = time.time()
        roles, counters = self.builder.close()
        counters["messages_malformed"] += self._take_malformed()
        with self._recent_lock:
            unlogged, self._unlogged = self._unlogged, []
            labels = [self._late.popleft() for _ in range(min(len(self._late), MAX_LATE_LABELS))]
        self._log_predictions(unlogged)
        start, self._window_start = self._window_start, end
        index, self.windows = self.windows, self.windows + 1
        seq = self._next_seq()
        system = self.system.sample() if self.system is not None else {}
        system["queue_pending"] = self.queue.pending()

        def render(dropped: dict[str, int]) -> bytes:
            for counter, n in dropped.items():  # windows_dropped, events_dropped
                counters[counter] = counters.get(counter, 0) + n
            return wire.encode(
                [
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
                        stream=self.stream,
                    )
                ]
            )

        dropped = self.queue.put(seq, end, render)
        if dropped:
            log.warning("telemetry queue full (%d windows): dropped the %d oldest", self.queue.max_windows, dropped)
        why = cadence.notable(roles, counters, model_changed=model_changed)
        if why:
            log.debug("telemetry window %d goes now: %s", seq, why)
            self.sender.hurry(seq)
        return seq

    def _log_predictions(self, preds: list[Prediction]) -> None:
        try:
            self.predlog.add_many(preds)
        except Exception:  # a full disk must not stop telemetry; those predictions' late labels are lost
            log.exception("could not write %d predictions to the prediction log", len(preds))

    def _take_malformed(self) -> int:
        seen = self.link.malformed
        delta, self._malformed_seen = seen - self._malformed_seen, seen
        return delta

    def add_event(self, seq: int, payload: bytes) -> None:
        """Store a device event until a controller acknowledges it (ADR 0078); the sender sends it at once."""
        dropped = self.queue.put_event(seq, time.time(), payload)
        if dropped:
            log.warning("event queue full (%d events): dropped the %d oldest", self.queue.max_events, dropped)
        self.sender.wake()

    def count(self, name: str, n: int = 1) -> None:
        """Add to an agent counter of the current window (see ``shared.telemetry.COUNTERS``)."""
        self.builder.count(name, n)

    # -- inferences --------------------------------------------------------------
    def observe(self, rec: InferenceRecord) -> None:
        """Count one inference given as a record (for callers outside the model host's own recording)."""
        self.host.pending.append((rec.role, rec.model, rec.inputs, rec.outputs, rec.latency_ms, rec.prediction_id, None))

    def flush(self) -> None:
        """Bin the calls observed so far into the current window (called every ``FLUSH_S`` and at window close)."""
        with self._close_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        for m in self.host.roles().values():  # what served lately: in-process applications' summaries name it
            self._served.pop(m.sha256, None)
            self._served[m.sha256] = m
        while len(self._served) > 8:
            self._served.popitem(last=False)
        items = self.host.take_pending()
        if not items:
            return
        groups: dict[tuple[str, int], list[Observed]] = {}  # (role, model) in order of first appearance
        for it in items:
            key = (it[0], id(it[1]))
            group = groups.get(key)
            if group is None:
                groups[key] = [it]
            else:
                group.append(it)
        for group in groups.values():
            self._add_group(group)

    def _add_group(self, group: list[Observed]) -> None:
        role, model = group[0][0], group[0][1]
        m = model.manifest
        acc = self.builder.accumulator(role, m, model.sha256)
        if acc is None:  # another model held this role in this window: it ends here
            self._close_locked(model_changed=True)
            self.sender.wake()
            acc = self.builder.accumulator(role, m, model.sha256)
            if acc is None:
                raise RuntimeError(f"role {role} holds another model in a fresh window")
        in_name, out_name = m.inputs[0].name, m.outputs[0].name
        inputs = [it[2].get(in_name) if isinstance(it[2], dict) else it[2] for it in group]
        outputs = [it[3].get(out_name) if it[3] is not None else None for it in group]
        if not acc.add_bulk(acc.measure_many([it[4] for it in group], inputs, outputs)):
            raise RuntimeError("a window closed outside the telemetry lock")
        if not acc.spec.classes:
            return
        ok = [i for i, o in enumerate(outputs) if o is not None]
        if not ok:
            return
        predicted = first_top_classes([outputs[i] for i in ok])
        self._remember(role, acc, model.sha256, [group[i] for i in ok], [inputs[i] for i in ok], predicted)
        if role == "production":
            shadow = self.host.roles().get("shadow")
            if shadow is not None:
                self._offer_shadow(shadow, [group[i][2] for i in ok], predicted, [group[i][6] for i in ok])

    def _offer_shadow(self, shadow: LoadedModel, inputs: list[Any], predicted: list[int], raws: list[Any]) -> None:
        """Queue production's inputs for the shadow model: a ``shadow_rate`` share of them, as room allows.

        What is not compared is counted in the shadow role's summary (``sampled_out``,
        ``dropped`` when the queue is full: production is never slowed down), so agreement
        is read knowing how much of the traffic it covers."""
        rate = shadow_rate(self.host.sampling)
        sampled_out = dropped = 0
        for x, p, r in zip(inputs, predicted, raws, strict=True):
            if rate < 1.0 and self._rng.random() >= rate:
                sampled_out += 1
                continue
            if dropped:
                dropped += 1
                continue
            try:
                self._shadow_q.put_nowait((x, p, r))
            except queue.Full:
                dropped += 1
        if sampled_out or dropped:
            acc = self.builder.accumulator("shadow", shadow.manifest, shadow.sha256)
            if acc is not None:
                acc.record_missed("sampled_out", sampled_out)
                acc.record_missed("dropped", dropped)

    def _remember(
        self, role: str, acc: RoleAccumulator, sha256: str, items: list[Observed], inputs: list[Any], predicted: list[int]
    ) -> None:
        """Keep what label feedback needs of these predictions; sample inputs for capture."""
        m = items[0][1].manifest
        window_start = round(self._window_start, 3)
        keep_inputs = self.spool is not None
        preds = [Prediction(it[5], role, m.name, m.version, window_start, p) for it, p in zip(items, predicted, strict=True)]
        with self._recent_lock:
            recent = self._recent
            for pred, x, it in zip(preds, inputs, items, strict=True):
                kept = (x, it[6]) if keep_inputs else (None, None)
                recent[pred.prediction_id] = _Recent(acc, pred, sha256, *kept)
            self._unlogged.extend(preds)
            while len(recent) > RECENT_PREDICTIONS:
                recent.popitem(last=False)
            unlogged = None
            if len(self._unlogged) >= UNLOGGED_MAX:  # a busy window: bounded memory, one transaction per batch
                unlogged, self._unlogged = self._unlogged, []
        if unlogged:
            self._log_predictions(unlogged)
        if self.spool is not None:
            for pred, x, it in zip(preds, inputs, items, strict=True):
                if self.spool.sampled():
                    self._capture(role, acc, x, None, pred.predicted, pred.prediction_id, it[6])

    def add_summary(self, req: dict[str, Any]) -> dict[str, Any]:
        """An application's in-process window (``agent.embedded``): its role summary is added to this
        window's, its late labels travel with the next window, its shadow samples go to the shadow model.

        ``req``: ``{"role", "sha256", "summary", "labels": [late label, ...], "shadow": [[inputs, predicted], ...]}``.
        The model must be one this agent has loaded (the application loads what the agent committed).
        """
        from shared.messages import read_role_summary
        from shared.schema import Reader

        role, sha = req.get("role"), req.get("sha256")
        if not isinstance(role, str) or not isinstance(sha, str):
            raise ValueError("summary expects a string role and sha256")
        model = next((m for m in self.host.roles().values() if m.sha256 == sha), None) or self._served.get(sha)
        if model is None:
            return {"ok": False, "error": f"no model with sha256 {sha[:12]}... served here lately; summary not added"}
        summary = read_role_summary(Reader(req.get("summary"), "summary"))
        if (summary["model"], summary["version"]) != (model.manifest.name, model.manifest.version):
            raise ValueError(f"summary is of {summary['model']} v{summary['version']}, sha256 {sha[:12]}... is not")
        late = [LateLabel.read(Reader(x, "labels[]")) for x in req.get("labels") or []]
        with self._close_lock:
            acc = self.builder.accumulator(role, model.manifest, sha)
            if acc is None:  # the role serves another model now: its window ends here, as for local calls
                self._close_locked()
                acc = self.builder.accumulator(role, model.manifest, sha)
            if acc is None or not acc.add_summary(summary):
                raise RuntimeError(f"no open window for role {role}")
        with self._recent_lock:
            self._late.extend(late)
        shadow = self.host.roles().get("shadow") if role == "production" else None
        if shadow is not None:
            samples = [x for x in req.get("shadow") or [] if isinstance(x, list) and len(x) == 2 and type(x[1]) is int]
            if samples:
                self._offer_shadow(shadow, [x[0] for x in samples], [x[1] for x in samples], [None] * len(samples))
        return {"ok": True, "shadow": shadow is not None}

    def feedback(self, prediction_id: str, label: int) -> dict[str, Any]:
        """Ground truth for an earlier prediction, from a local application.

        It counts for the prediction's window and version: in the window's own summary while
        that window is open, else as a late label in the next telemetry message. Predictions
        older than the in-memory ones are found in the prediction log on disk.
        """
        with self._recent_lock:
            entry = self._recent.get(prediction_id)
        if entry is None:  # not binned yet: queued, or taken by the telemetry thread's flush (the lock waits for it)
            self.flush()
            with self._recent_lock:
                entry = self._recent.get(prediction_id)
        pred = entry.prediction if entry is not None else self.predlog.get(prediction_id)
        if pred is None:
            return {"ok": False, "error": f"unknown or expired prediction_id {prediction_id!r:.80}"}
        # A prediction captured when served is captured once: labelled in place while it waits in the spool; once
        # uploaded, its label goes as a late label (stored by (device, prediction id), joined by the datasets) and
        # not in the window's summary, so accuracy counts it once.
        spooled = "absent"
        if self.spool is not None and entry is not None and entry.inputs is not None:
            spooled = self.spool.label(prediction_id, label)
        if entry is None or spooled == "sent" or not entry.acc.record_label(pred.predicted, label):
            late = LateLabel(pred.prediction_id, pred.role, pred.model, pred.version, pred.window_start, pred.predicted, label)
            with self._recent_lock:
                self._late.append(late)
        acc = self.builder.current(pred.role)
        if spooled == "absent" and self.spool is not None and entry is not None and entry.inputs is not None and acc is not None:
            self._capture(pred.role, acc, entry.inputs, label, pred.predicted, prediction_id, entry.raw)
        return {"ok": True, "correct": pred.predicted == label}

    def _capture(
        self,
        role: str,
        acc: RoleAccumulator,
        inputs: Any,
        label: int | None,
        predicted: int | None,
        prediction_id: str = "",
        raw: Any = None,
    ) -> None:
        assert self.spool is not None
        try:
            data = np.asarray(inputs, dtype=np.float32).round(6).tolist()
            if isinstance(raw, dict):  # a frame's named raw tensor: the model's one raw input
                raw = next(iter(raw.values()), None)
            raw_data = None if raw is None else np.asarray(raw, dtype=np.float32).round(6).tolist()
        except (ValueError, TypeError):
            return
        sample = {"ts": now(), "role": role, "model": acc.model, "version": acc.version, "inputs": data,
                  "prediction": predicted, "label": label, "prediction_id": prediction_id}  # fmt: skip
        if raw_data is not None:  # the pipeline trains on raw with the bundle's feature spec (docs/features.md)
            sample["raw"] = raw_data
        size = self.spool.offer(sample, labelled=label is not None)
        if size:
            self.count("capture_samples")
            self.count("capture_bytes", size)

    def _shadow_loop(self) -> None:
        while not self._stop.is_set():
            inputs, predicted, raw = self._shadow_q.get()
            if self._stop.is_set():
                return
            try:
                shadow = self.host.get("shadow")
                if raw is not None and shadow.manifest.features is not None:
                    # production was sent raw: the shadow model makes its own features (its spec may be newer)
                    out = self.host.predict_arrays(raw, role="shadow", raw=True)
                else:
                    out = self.host.predict_arrays(inputs, role="shadow")  # recorded in the shadow role's summary too
            except (NoModelError, ValueError, TypeError):
                continue
            except Exception:
                log.exception("shadow inference failed")
                continue
            first = next(iter(out.outputs.values()), None)
            if first is None:
                continue
            top = int(top_classes(np.asarray(first))[0])
            m = out.model
            acc = self.builder.accumulator("shadow", m.manifest, m.sha256)
            while acc is not None and not acc.record_shadow(top == predicted, predicted, top):
                acc = self.builder.accumulator("shadow", m.manifest, m.sha256)


def shadow_rate(sampling: dict[str, Any]) -> float:
    """The share of production inferences the shadow model sees (``sampling.shadow_rate``; 1 if absent or bad)."""
    v = sampling.get("shadow_rate", 1.0)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        return 1.0
    return float(v)


def first_top_classes(outputs: list[Any]) -> list[int]:
    """Top class of each output's first row (what label feedback and shadow agreement compare)."""
    arrs = [np.asarray(o) for o in outputs]
    if all(a.shape == arrs[0].shape for a in arrs) and arrs[0].size:
        a0 = arrs[0]
        rows = a0.shape[0] if a0.ndim > 1 else 1
        return [int(c) for c in np.stack(arrs).reshape(len(arrs), rows, -1)[:, 0, :].argmax(axis=1)]
    return [int(top_classes(a)[0]) for a in arrs]


def queue_path(data_dir: Path) -> Path:
    return data_dir / "telemetry.db"
