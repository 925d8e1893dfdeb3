"""Telemetry windows into aggregate rows, in batches (one transaction per batch).

Telemetry windows are many: :class:`TelemetryIngest` queues them and a
background thread writes them in batches:

0. refuse windows whose start is far from this controller's clock, and role
   summaries whose histograms do not have the shape their model version's
   registered manifest fixes (``shapes.py``), so no device can decide the
   shape of an aggregate;
1. drop windows from devices that are not enrolled (counted);
2. dedupe by (device, stream, seq) against a per-stream sliding window
   (``TelemetryCursor``: highest seq and a bitmap of the 62 below it);
3. merge each role summary into the aggregate rows of its key
   (model, version, role, cohort, window) for the whole fleet (``*``) and for
   every cohort the device is in, in this process's own ``shard`` rows, and,
   for a device in a running rollout's cohort, one per-device row
   (``controller.telemetry.rollout_windows``);
4. store the late labels the windows carry (``controller.telemetry.labels``);
5. commit, then acknowledge the MQTT messages (at-least-once from the broker,
   made exactly-once by the dedupe).

Windows come as v1 messages or v2 ones (``wire_windows``: the counts of a whole
batch decoded in one numpy pass); a group's v2 vectors are summed with numpy and
turned into one summary, so the per-window Python work is the dedupe.

Nothing here raises into the MQTT loop; every dropped message is counted in
``Metrics`` and logged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Engine, bindparam, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from controller.core.db import make_engine
from controller.core.metrics import Metrics
from controller.core.tables import TelemetryAggregate
from controller.telemetry.aggregate import SummaryError, check_summary, merge_many, window_start
from controller.telemetry.cursors import Stream, add_gaps, claim_gap, decide, read_cursors, write_cursors
from controller.telemetry.experiment_windows import ExperimentWindows
from controller.telemetry.gc_tuning import ingest_gc
from controller.telemetry.labels import LabelIn, store_labels
from controller.telemetry.membership import MembershipCache
from controller.telemetry.rollout_windows import RolloutWindows
from controller.telemetry.shapes import ShapeBook
from controller.telemetry.wire_windows import Part, Window, WireTelemetry, from_v1, from_v2, sum_parts
from shared import wire
from shared.messages import Telemetry
from shared.telemetry import MergeError

log = logging.getLogger(__name__)

Ack = Callable[[], None]
MAX_SEQ = 2**63 - 1
_NAP_S = 0.005  # while a batch lingers, look at the queue this often


Key = tuple[str, int, str, str, int]  # model, version, role, cohort, window_start


@dataclass
class _Agg:
    row_id: int | None
    windows: int
    summary: dict[str, Any]


@dataclass
class _Partial:
    idxs: set[int]  # messages summed here
    windows: int
    summary: dict[str, Any]


def _merge_items(items: list[tuple[int, Part]], refused: set[int], where: object) -> _Partial | None:
    """Sum one group's summaries; a summary that does not merge with the others is refused.

    v2 vectors of one layout are summed first (numpy, exact), giving one summary for all of them.
    """
    entries: list[tuple[set[int], dict[str, Any]]] = []
    by_layout: dict[wire.Layout, list[tuple[int, Part]]] = defaultdict(list)
    for idx, part in items:
        if not part.coded:
            entries.append(({idx}, part.as_summary()))
        else:
            by_layout[part.layout].append((idx, part))  # type: ignore[index]
    for same in by_layout.values():
        if len(same) == 1:
            entries.append(({same[0][0]}, same[0][1].as_summary()))
            continue
        total = sum_parts([p for _, p in same])
        layout = same[0][1].layout
        assert layout is not None
        entries.append(({i for i, _ in same}, wire.unflatten(layout, total.tolist() if isinstance(total, np.ndarray) else total)))
    try:
        merged = entries[0][1] if len(entries) == 1 else merge_many([e for _, e in entries], counts_checked=True)
        return _Partial({i for idxs, _ in entries for i in idxs}, len(items), merged)
    except MergeError:
        pass
    acc: dict[str, Any] | None = None
    kept: set[int] = set()
    for idxs, summary in entries:
        try:
            acc = summary if acc is None else merge_many([acc, summary])
            kept |= idxs
        except MergeError as exc:
            log.warning("telemetry summary for %s does not merge: %s", where, exc)
            refused.update(idxs)
    return None if acc is None else _Partial(kept, len(kept), acc)


@dataclass
class _Item:
    msg: Telemetry
    ack: Ack


QueueItem = _Item | WireTelemetry


@dataclass
class _Rows:
    """What one batch's new windows add up to, before it is written."""

    rollouts: Any
    experiments: Any
    groups: dict[tuple[str, int, str, int, tuple[str, ...]], list[tuple[int, Part]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    late_labels: list[LabelIn] = field(default_factory=list)  # labels for predictions of earlier windows
    per_device: list[dict[str, Any]] = field(default_factory=list)  # rollout rows
    experiment_rows: list[dict[str, Any]] = field(default_factory=list)


class TelemetryIngest:
    """Batches telemetry windows into aggregate rows (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        *,
        window_s: int = 60,
        batch_max: int = 5000,
        linger_s: float = 0.05,
        membership_ttl_s: float = 120.0,
        shard: str | None = None,
        max_age_s: float = 30 * 86400,
        max_ahead_s: float = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Windows starting more than ``max_age_s`` before or ``max_ahead_s`` after ``clock()`` are refused."""
        self.engine = engine
        self.shapes = ShapeBook(engine)
        self.max_age_s, self.max_ahead_s, self._clock = max_age_s, max_ahead_s, clock
        # One batch reads the dedupe cursors, then writes them: on SQLite take the write lock first.
        sqlite = engine.dialect.name == "sqlite"
        self._batch_engine = make_engine(engine.url.render_as_string(hide_password=False), immediate=True) if sqlite else engine
        self.metrics = metrics
        self.window_s = window_s
        self.batch_max = batch_max
        self.linger_s = linger_s
        self.shard = shard or uuid.uuid4().hex[:16]
        self._q: queue.SimpleQueue[QueueItem | None] = queue.SimpleQueue()
        self._layouts: dict[wire.Layout, str] = {}  # v2 layout -> "" if it has its registered shape, else why not
        self._aggs: dict[Key, _Agg] = {}
        self._membership = MembershipCache(membership_ttl_s)
        self._rollouts = RolloutWindows()
        self._experiments = ExperimentWindows()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.flushed = 0  # windows merged (for the benchmark and tests)

    # --- lifecycle -------------------------------------------------------------

    def submit(self, msg: Telemetry, ack: Ack) -> None:
        self._q.put(_Item(msg, ack))

    def submit_wire(self, msg: WireTelemetry) -> None:
        """A v2 message (``msg.acks``: one per window, called once it is durable or refused)."""
        self._q.put(msg)

    def start(self) -> None:
        self._stop.clear()
        ingest_gc.acquire()
        self._thread = threading.Thread(target=self._run, name="telemetry-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
            ingest_gc.release()
        if self._batch_engine is not self.engine:
            self._batch_engine.dispose()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._flush_safely(self._take())
        self._flush_safely(self._take(block=False))

    def _flush_safely(self, batch: list[QueueItem]) -> None:
        if not batch:
            return
        try:
            self.flush(batch)
        except Exception:  # a bug must not stop ingestion; the batch stays unacknowledged
            log.exception("telemetry batch of %d windows failed", len(batch))
            self.metrics.count("telemetry", "failed", len(batch))

    def _take(self, block: bool = True) -> list[QueueItem]:
        batch: list[QueueItem] = []
        try:
            first = self._q.get(timeout=0.5) if block else self._q.get_nowait()
        except queue.Empty:
            return batch
        if first is not None:
            batch.append(first)
        # Drain what is queued, then nap and drain again until the linger ends: waiting in get() for
        # each window would wake this thread once per message and take the GIL from the MQTT thread.
        deadline = time.monotonic() + self.linger_s
        get = self._q.get_nowait
        while len(batch) < self.batch_max:
            try:
                item = get()
            except queue.Empty:
                left = deadline - time.monotonic()
                if not block or left <= 0 or self._stop.is_set():
                    break
                time.sleep(min(left, _NAP_S))
                continue
            if item is None:
                break
            batch.append(item)
        self.metrics.queue_depth.set(self._q.qsize())
        return batch

    # --- one batch ---------------------------------------------------------------

    def flush(self, batch: list[QueueItem]) -> None:
        """Write one batch; on a database error retry, then leave the messages unacknowledged."""
        windows = [from_v1(x.msg, x.ack) for x in batch if isinstance(x, _Item)]
        v2, refused = from_v2([x for x in batch if isinstance(x, WireTelemetry)])
        for m, exc in refused:
            log.warning("malformed telemetry from %s: %s", m.device_id, exc)
            self.metrics.count("telemetry", "malformed", len(m.acks))
            for ack in m.acks:
                ack()
        windows += v2
        valid: list[Window] = []
        for w in windows:
            if self._validate(w):
                valid.append(w)
            else:
                self.metrics.count("telemetry", "malformed")
                w.ack()
        if not valid:
            return
        self.metrics.batch_size.observe(len(valid))
        for attempt in range(3):
            t0 = time.perf_counter()
            try:
                outcomes, new_aggs = self._write(valid)
            except SQLAlchemyError as exc:
                # e.g. two replicas creating the same device's cursor at once: the retry sees the winner's row
                log.info(
                    "telemetry batch of %d failed (attempt %d): %s; retrying", len(valid), attempt + 1, exc.__class__.__name__
                )
                time.sleep(0.05 * (attempt + 1))
                continue
            self.metrics.flush_seconds.observe(time.perf_counter() - t0)
            self._aggs.update(new_aggs)
            for outcome, n in outcomes.items():
                self.metrics.count("telemetry", outcome, n)
            self.flushed += outcomes.get("accepted", 0)
            for w in valid:
                w.ack()
            self._evict()
            return
        log.error("telemetry batch of %d windows not written after 3 attempts; left unacknowledged for redelivery", len(valid))
        self.metrics.count("telemetry", "failed", len(valid))

    def _validate(self, w: Window) -> bool:
        """Whether the window may be merged (else logged): seq and clock in range, every part of its registered shape."""
        try:
            if w.seq > MAX_SEQ:
                raise SummaryError(f"seq {w.seq} exceeds {MAX_SEQ}")
            now = self._clock()
            if not now - self.max_age_s <= w.window_start <= now + self.max_ahead_s:
                raise SummaryError(
                    f"window_start {w.window_start:.0f} is {w.window_start - now:+.0f} s from the controller's clock "
                    f"(accepted: -{self.max_age_s:.0f} to +{self.max_ahead_s:.0f})"
                )
            for part in w.parts:
                try:
                    if not part.coded:
                        summary = part.as_summary()
                        part.model, part.version = check_summary(summary, deep=False)  # types checked by decode
                        self.shapes.check(summary, part.model, part.version)
                    else:
                        self._check_layout(part)
                except SummaryError as exc:
                    raise SummaryError(f"roles.{part.role}: {exc}") from None
            return True
        except SummaryError as exc:
            log.warning("malformed telemetry from %s seq %s: %s", w.device_id, w.seq, exc)
            return False

    def _check_layout(self, part: Part) -> None:
        """A v2 layout against its registered shape; decided once per distinct layout."""
        layout = part.layout
        assert layout is not None
        why = self._layouts.get(layout)
        if why is None:
            empty = wire.unflatten(layout, [0] * layout.size())
            try:
                self.shapes.check(empty, layout.model, layout.version)
                why = ""
            except SummaryError as exc:
                why = str(exc)
            if "not a registered model version" not in why:  # may be registered later: ask again next time
                self._layouts[layout] = why
        if why:
            raise SummaryError(why)

    def _write(self, valid: list[Window]) -> tuple[dict[str, int], dict[Key, _Agg]]:
        outcomes: dict[str, int] = defaultdict(int)
        with Session(self._batch_engine) as session:
            device_ids = {w.device_id for w in valid}
            membership = self._membership.cohorts_for(session, device_ids)
            known = sorted(d for d in device_ids if membership[d] is not None)
            cursors = read_cursors(session, known)
            state: dict[Stream, tuple[int | None, int]] = dict(cursors)
            # Devices with the same cohorts share one partial sum per (model, version, role, window),
            # added once to each of those cohorts' aggregates.
            rows = _Rows(self._rollouts.active(session), self._experiments.active(session))
            fresh = 0
            late: list[tuple[int, Window, tuple[str, ...]]] = []
            gaps: list[tuple[Stream, int, int]] = []
            for idx, w in enumerate(sorted(valid, key=lambda v: (v.device_id, v.stream, v.seq))):
                cohorts = membership[w.device_id]
                if cohorts is None:
                    outcomes["unknown_device"] += 1
                    continue
                verdict = decide(state, (w.device_id, w.stream), w.seq, gaps)  # seqs are unique per stream (ADR 0080)
                if verdict == "stale":  # below the bitmap: decided against the gaps after this loop
                    late.append((idx, w, cohorts))
                    continue
                if verdict != "new":
                    outcomes["duplicate"] += 1
                    continue
                fresh += self._take_window(idx, w, cohorts, rows)
            add_gaps(session, gaps, time.time())
            for idx, w, cohorts in late:  # rare: one lookup each, after this batch's gaps exist
                if not claim_gap(session, (w.device_id, w.stream), w.seq):
                    outcomes["duplicate"] += 1
                    continue
                fresh += self._take_window(idx, w, cohorts, rows)
            partials: dict[Key, list[_Partial]] = defaultdict(list)
            refused: set[int] = set()
            for (model, version, role, ws, cohorts), items in rows.groups.items():
                part = _merge_items(items, refused, (model, version, role, ws))
                if part is not None:
                    for cohort in cohorts:
                        partials[(model, version, role, cohort, ws)].append(part)
            new_aggs = self._merge_into_aggregates(session, partials, refused)
            outcomes["accepted"] = fresh - len(refused)  # a refused window may have reached some aggregates
            if refused:
                outcomes["malformed"] += len(refused)
            write_cursors(session, cursors, state)
            self._write_aggs(session, new_aggs)
            if rows.late_labels:
                store_labels(session, rows.late_labels)
            RolloutWindows.write(session, rows.per_device)
            self._experiments.write(session, rows.experiment_rows)
            session.commit()
        if outcomes["unknown_device"]:
            log.warning("%d telemetry windows from devices that are not enrolled ignored", outcomes["unknown_device"])
        return dict(outcomes), new_aggs

    def _take_window(self, idx: int, w: Window, cohorts: tuple[str, ...], rows: _Rows) -> int:
        """Add one new window to this batch's groups, labels, rollout and experiment rows; return 1."""
        if w.labels:
            rows.late_labels.extend(self._labels(w.device_id, w.labels))
        ws = window_start(w.window_start, self.window_s)
        for part in w.parts:
            rows.groups[(part.model, part.version, part.role, ws, cohorts)].append((idx, part))
        if rows.rollouts:
            rows.per_device += RolloutWindows.rows(rows.rollouts, w.telemetry(), cohorts)
        if rows.experiments:
            rows.experiment_rows.extend(self._experiments.rows(rows.experiments, w.telemetry(), cohorts))
        return 1

    def _labels(self, device_id: str, labels: Any) -> list[LabelIn]:
        """A window's labels for predictions of earlier windows, on the aggregate window grid."""
        return [
            LabelIn(
                device_id,
                x.prediction_id,
                x.model,
                x.version,
                window_start(x.window_start, self.window_s),
                x.label,
                x.predicted,
                x.role,
                "device",
            )
            for x in labels
        ]

    def _merge_into_aggregates(self, session: Session, partials: dict[Key, list[_Partial]], refused: set[int]) -> dict[Key, _Agg]:
        """Add each key's partial sums to its aggregate; messages in a partial that does not fit are refused."""
        missing = [k for k in partials if k not in self._aggs]
        if missing:  # rows of this shard written before and evicted from memory
            windows = sorted({k[4] for k in missing})
            rows = session.exec(
                select(TelemetryAggregate).where(
                    TelemetryAggregate.shard == self.shard, col(TelemetryAggregate.window_start).in_(windows)
                )
            ).all()
            for r in rows:
                self._aggs.setdefault((r.model, r.version, r.role, r.cohort, r.window_start), _Agg(r.id, r.windows, r.summary))
        out: dict[Key, _Agg] = {}
        for key, parts in partials.items():
            prev = self._aggs.get(key)
            base = [prev.summary] if prev else []
            try:
                merged: dict[str, Any] | None = merge_many([*base, *(p.summary for p in parts)], counts_checked=True)
                n = sum(p.windows for p in parts)
            except MergeError:
                merged, n = (prev.summary if prev else None), 0
                for p in parts:
                    try:
                        merged = p.summary if merged is None else merge_many([merged, p.summary])
                        n += p.windows
                    except MergeError as exc:
                        log.warning("telemetry summaries for %s do not merge with the aggregate: %s", key, exc)
                        refused.update(p.idxs)
            if merged is not None and n:
                out[key] = _Agg(prev.row_id if prev else None, (prev.windows if prev else 0) + n, merged)
        return out

    def _write_aggs(self, session: Session, aggs: dict[Key, _Agg]) -> None:
        now = time.time()
        updates = [{"b_id": a.row_id, "windows": a.windows, "summary": a.summary, "ts": now} for a in aggs.values() if a.row_id]
        if updates:
            stmt = (
                update(TelemetryAggregate)
                .where(col(TelemetryAggregate.id) == bindparam("b_id"))
                .values(windows=bindparam("windows"), summary=bindparam("summary"), updated_at=bindparam("ts"))
            )
            session.connection().execute(stmt, updates)
        for key, a in aggs.items():
            if a.row_id is None:
                row = TelemetryAggregate(
                    model=key[0],
                    version=key[1],
                    role=key[2],
                    cohort=key[3],
                    window_start=key[4],
                    window_s=self.window_s,
                    shard=self.shard,
                    windows=a.windows,
                    summary=a.summary,
                    updated_at=now,
                )
                session.add(row)
                session.flush()
                a.row_id = row.id

    def _evict(self, keep_s: float = 3 * 3600) -> None:
        if len(self._aggs) < 10_000:
            return
        horizon = time.time() - keep_s
        self._aggs = {k: v for k, v in self._aggs.items() if k[4] >= horizon}
