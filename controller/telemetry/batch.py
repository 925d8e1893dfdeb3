"""Telemetry windows into aggregate rows, in batches (one transaction per batch).

Telemetry windows are many: :class:`TelemetryIngest` queues them and a
background thread writes them in batches:

0. refuse windows whose start is far from this controller's clock, and role
   summaries whose histograms do not have the shape their model version's
   registered manifest fixes (``shapes.py``), so no device can decide the
   shape of an aggregate;
1. drop windows from devices that are not enrolled (counted);
2. dedupe by (device, seq) against a per-device sliding window
   (``TelemetryCursor``: highest seq and a bitmap of the 62 below it);
3. merge each role summary into the aggregate rows of its key
   (model, version, role, cohort, window) for the whole fleet (``*``) and for
   every cohort the device is in, in this process's own ``shard`` rows, and,
   for a device in a running rollout's cohort, one per-device row
   (``controller.telemetry.rollout_windows``);
4. store the late labels the windows carry (``controller.telemetry.labels``);
5. commit, then acknowledge the MQTT messages (at-least-once from the broker,
   made exactly-once by the dedupe).

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
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, bindparam, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from controller.core.db import make_engine
from controller.core.metrics import Metrics
from controller.core.tables import TelemetryAggregate
from controller.telemetry.aggregate import SummaryError, check_summary, merge_many, window_start
from controller.telemetry.cursors import add_gaps, claim_gap, dedupe, gaps_left, read_cursors, write_cursors
from controller.telemetry.experiment_windows import ExperimentWindows
from controller.telemetry.gc_tuning import ingest_gc
from controller.telemetry.labels import LabelIn, store_labels
from controller.telemetry.membership import MembershipCache
from controller.telemetry.rollout_windows import RolloutWindows
from controller.telemetry.shapes import ShapeBook
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


def _merge_items(items: list[tuple[int, dict[str, Any]]], refused: set[int], where: object) -> _Partial | None:
    """Sum one group's summaries; a summary that does not merge with the others is refused."""
    try:
        return _Partial({i for i, _ in items}, len(items), merge_many([s for _, s in items], counts_checked=True))
    except MergeError:
        pass
    acc: dict[str, Any] | None = None
    idxs: set[int] = set()
    for idx, s in items:
        try:
            acc = s if acc is None else merge_many([acc, s])
            idxs.add(idx)
        except MergeError as exc:
            log.warning("telemetry summary for %s does not merge: %s", where, exc)
            refused.add(idx)
    return None if acc is None else _Partial(idxs, len(idxs), acc)


@dataclass
class _Item:
    msg: Telemetry
    ack: Ack


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
        self._q: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
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

    def _flush_safely(self, batch: list[_Item]) -> None:
        if not batch:
            return
        try:
            self.flush(batch)
        except Exception:  # a bug must not stop ingestion; the batch stays unacknowledged
            log.exception("telemetry batch of %d windows failed", len(batch))
            self.metrics.count("telemetry", "failed", len(batch))

    def _take(self, block: bool = True) -> list[_Item]:
        batch: list[_Item] = []
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

    def flush(self, batch: list[_Item]) -> None:
        """Write one batch; on a database error retry, then leave the messages unacknowledged."""
        valid: list[tuple[_Item, list[tuple[str, str, int, dict[str, Any]]]]] = []
        for item in batch:
            parts = self._validate(item.msg)
            if parts is None:
                self.metrics.count("telemetry", "malformed")
                item.ack()
            else:
                valid.append((item, parts))
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
            for item, _ in valid:
                item.ack()
            self._evict()
            return
        log.error("telemetry batch of %d windows not written after 3 attempts; left unacknowledged for redelivery", len(valid))
        self.metrics.count("telemetry", "failed", len(valid))

    def _validate(self, msg: Telemetry) -> list[tuple[str, str, int, dict[str, Any]]] | None:
        """(role, model, version, summary) per role, or None (logged) if malformed."""
        try:
            if msg.seq > MAX_SEQ:
                raise SummaryError(f"seq {msg.seq} exceeds {MAX_SEQ}")
            now = self._clock()
            if not now - self.max_age_s <= msg.window_start <= now + self.max_ahead_s:
                raise SummaryError(
                    f"window_start {msg.window_start:.0f} is {msg.window_start - now:+.0f} s from the controller's clock "
                    f"(accepted: -{self.max_age_s:.0f} to +{self.max_ahead_s:.0f})"
                )
            out = []
            for role, summary in msg.roles.items():
                try:
                    model, version = check_summary(summary, deep=False)  # value types checked by controller.telemetry.decode
                    self.shapes.check(summary, model, version)
                except SummaryError as exc:
                    raise SummaryError(f"roles.{role}: {exc}") from None
                out.append((role, model, version, summary))
            return out
        except SummaryError as exc:
            log.warning("malformed telemetry from %s seq %s: %s", msg.device_id, msg.seq, exc)
            return None

    def _write(
        self, valid: list[tuple[_Item, list[tuple[str, str, int, dict[str, Any]]]]]
    ) -> tuple[dict[str, int], dict[Key, _Agg]]:
        outcomes: dict[str, int] = defaultdict(int)
        with Session(self._batch_engine) as session:
            device_ids = {item.msg.device_id for item, _ in valid}
            membership = self._membership.cohorts_for(session, device_ids)
            known = sorted(d for d in device_ids if membership[d] is not None)
            cursors = read_cursors(session, known)
            state: dict[str, tuple[int | None, int]] = dict(cursors)
            # Devices with the same cohorts share one partial sum per (model, version, role, window),
            # added once to each of those cohorts' aggregates.
            groups: dict[tuple[str, int, str, int, tuple[str, ...]], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
            fresh = 0
            late: list[tuple[int, _Item, list[tuple[str, str, int, dict[str, Any]]], tuple[str, ...]]] = []
            gaps: list[tuple[str, int, int]] = []
            late_labels: list[LabelIn] = []  # labels for predictions of earlier windows, joined on the device
            rollouts = self._rollouts.active(session)
            per_device: list[dict[str, Any]] = []
            experiments, experiment_rows = self._experiments.active(session), []
            for idx, (item, parts) in enumerate(sorted(valid, key=lambda v: (v[0].msg.device_id, v[0].msg.seq))):
                m = item.msg
                cohorts = membership[m.device_id]
                if cohorts is None:
                    outcomes["unknown_device"] += 1
                    continue
                prev_high, prev_bits = state.get(m.device_id, (None, 0))
                verdict, high, bits = dedupe(prev_high, prev_bits, m.seq)
                if verdict == "new" and (prev_high is None or m.seq > prev_high):
                    gaps.extend((m.device_id, lo, hi) for lo, hi in gaps_left(prev_high, prev_bits, m.seq))
                if verdict == "stale":  # below the bitmap: decided against the gaps after this loop
                    late.append((idx, item, parts, cohorts))
                    continue
                if verdict != "new":
                    outcomes["duplicate"] += 1
                    continue
                state[m.device_id] = (high, bits)
                late_labels.extend(self._labels(m))
                ws = window_start(m.window_start, self.window_s)
                for role, model, version, summary in parts:
                    groups[(model, version, role, ws, cohorts)].append((idx, summary))
                if rollouts:
                    per_device += RolloutWindows.rows(rollouts, m, cohorts)
                experiment_rows.extend(self._experiments.rows(experiments, m, cohorts))
                fresh += 1
            add_gaps(session, gaps, time.time())
            for idx, item, parts, cohorts in late:  # rare: one lookup each, after this batch's gaps exist
                if not claim_gap(session, item.msg.device_id, item.msg.seq):
                    outcomes["duplicate"] += 1
                    continue
                late_labels.extend(self._labels(item.msg))
                ws = window_start(item.msg.window_start, self.window_s)
                for role, model, version, summary in parts:
                    groups[(model, version, role, ws, cohorts)].append((idx, summary))
                if rollouts:
                    per_device += RolloutWindows.rows(rollouts, item.msg, cohorts)
                experiment_rows.extend(self._experiments.rows(experiments, item.msg, cohorts))
                fresh += 1
            partials: dict[Key, list[_Partial]] = defaultdict(list)
            refused: set[int] = set()
            for (model, version, role, ws, cohorts), items in groups.items():
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
            if late_labels:
                store_labels(session, late_labels)
            RolloutWindows.write(session, per_device)
            self._experiments.write(session, experiment_rows)
            session.commit()
        if outcomes["unknown_device"]:
            log.warning("%d telemetry windows from devices that are not enrolled ignored", outcomes["unknown_device"])
        return dict(outcomes), new_aggs

    def _labels(self, m: Telemetry) -> list[LabelIn]:
        """The message's labels for predictions of earlier windows, on the aggregate window grid."""
        return [
            LabelIn(
                m.device_id,
                x.prediction_id,
                x.model,
                x.version,
                window_start(x.window_start, self.window_s),
                x.label,
                x.predicted,
                x.role,
                "device",
            )
            for x in m.labels
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
