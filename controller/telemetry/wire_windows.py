"""Telemetry windows of one ingest batch, v1 and v2 alike, with the v2 counts decoded all at once (no I/O).

The receiver hands v2 messages over decoded but with their counts still coded
(:class:`WireTelemetry`): per message that is one zlib inflate and one compiled
msgspec decode+validate. Here the count vectors of the batch's single-window
messages (plain counts, byte planes) of one width and length become one
``(m, width, n)`` byte array without decoding anything: a wrong length sends
its message to ``shared.wire.counts``, which names what is wrong, and only that
message is refused; plain counts cannot be negative. Messages of several
windows (differences) are decoded one by one.

A role window then stays coded (:class:`Part`): the batcher sums the planes of
a group (``shared.wire.plane_sums``) and builds one v1 summary per group, not
one per window. Sums stay exact: int64 only while they cannot overflow it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared import wire
from shared.errors import SchemaError
from shared.messages import LateLabel, Telemetry
from shared.telemetry import COUNTERS

Ack = Callable[[], None]
_SAFE = 2**63 - 1
Cell = tuple[np.ndarray, int, int]  # decoded counts, -1, their largest | byte planes (m, width, n), row, a bound
Vectors = list[list[Cell]]  # per window, per role


@dataclass(frozen=True)
class WireTelemetry:
    """A v2 message from the receiver: validated, counts still coded; ``acks[i]`` acknowledges window ``i``."""

    batch: wire.Batch
    acks: tuple[Ack, ...]

    @property
    def device_id(self) -> str:
        return self.batch.device_id


@dataclass(slots=True)
class Part:
    """One role's summary in one window: a v1 dict, or a v2 counts vector with its layout."""

    role: str
    model: str
    version: int
    summary: dict[str, Any] | None = None
    vec: np.ndarray | None = None  # decoded counts
    vmax: int = 0  # the largest count (or a bound of it)
    layout: wire.Layout | None = None
    matrix: np.ndarray | None = None  # (m, width, n) byte planes of plain counts; this part is one row
    row: int = 0

    @property
    def coded(self) -> bool:
        return self.layout is not None

    def vector(self) -> np.ndarray:
        if self.vec is None:
            assert self.matrix is not None
            self.vec = wire.join_planes(self.matrix[self.row : self.row + 1])[0].astype(np.int64)
        return self.vec

    def as_summary(self) -> dict[str, Any]:
        if self.summary is None:
            assert self.layout is not None
            self.summary = wire.unflatten(self.layout, self.vector().tolist())
        return self.summary


@dataclass(slots=True)
class Window:
    """One telemetry window, whatever format it came in."""

    device_id: str
    seq: int
    window_start: float
    window_s: float
    ack: Ack
    parts: list[Part] = field(default_factory=list)
    labels: Sequence[LateLabel | wire.Label] = ()
    msg: Telemetry | None = None  # the v1 message (built on demand for a v2 window: rollouts, experiments)
    source: tuple[wire.Batch, int] | None = None  # v2: the message and this window's index in it
    stream: str = ""  # the device's seq stream (ADR 0080); "" from agents that send none

    def telemetry(self) -> Telemetry:
        if self.msg is None:
            assert self.source is not None
            batch, i = self.source
            w = batch.windows[i]
            self.msg = Telemetry(
                device_id=batch.device_id,
                seq=w.seq,
                sent_at=w.sent_at,
                window_start=w.window_start,
                window_s=w.window_s,
                roles={p.role: p.as_summary() for p in self.parts},
                system=dict(w.system),
                counters={**dict.fromkeys(COUNTERS, 0), **w.counters},
                agent={"version": batch.agent_version, "boot": batch.boot, "window": w.index},
                labels=[
                    LateLabel(x.prediction_id, x.role, x.model, x.version, x.window_start, x.predicted, x.label) for x in w.labels
                ],
                stream=batch.stream,
            )
        return self.msg


def from_v1(msg: Telemetry, ack: Ack) -> Window:
    parts = [Part(role, s.get("model"), s.get("version"), summary=s) for role, s in msg.roles.items()]  # type: ignore[arg-type]
    return Window(msg.device_id, msg.seq, msg.window_start, msg.window_s, ack, parts, msg.labels, msg, stream=msg.stream)


def from_v2(messages: Sequence[WireTelemetry]) -> tuple[list[Window], list[tuple[WireTelemetry, SchemaError]]]:
    """The windows of ``messages``, and the messages refused with why (their counts do not fit)."""
    windows: list[Window] = []
    refused: list[tuple[WireTelemetry, SchemaError]] = []
    fast, slow = _bulk(messages)
    for m, vecs in fast:
        windows += _windows(m, vecs)
    for m in slow:
        try:
            vectors = wire.counts(m.batch)  # counts below 2**62
        except SchemaError as exc:
            refused.append((m, exc))
            continue
        windows += _windows(m, [[(v, -1, int(v.max()) if len(v) else 0) for v in row] for row in vectors])
    return windows, refused


def _windows(m: WireTelemetry, vecs: Vectors) -> list[Window]:
    b = m.batch
    out = []
    for i, (w, row) in enumerate(zip(b.windows, vecs, strict=True)):
        parts = []
        for r, (data, at, bound) in zip(w.roles, row, strict=True):
            lay = b.layouts[r.layout]
            if at < 0:
                parts.append(Part(r.role, lay.model, lay.version, None, data, bound, lay))
            else:
                parts.append(Part(r.role, lay.model, lay.version, None, None, bound, lay, data, at))
        out.append(Window(b.device_id, w.seq, w.window_start, w.window_s, m.acks[i], parts, w.labels, None, (b, i), b.stream))
    return out


def _bulk(messages: Sequence[WireTelemetry]) -> tuple[list[tuple[WireTelemetry, Vectors]], list[WireTelemetry]]:
    """Byte planes of every plain (non-difference) message, one array per (width, length), nothing
    decoded; the rest is left to ``wire.counts``, which also names what is wrong."""
    plain: list[WireTelemetry] = []
    slow: list[WireTelemetry] = []
    same: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)  # (width, n) -> (message, window, role)
    for m in messages:
        layouts = m.batch.layouts
        sizes = [lay.size() for lay in layouts]
        mine: list[tuple[tuple[int, int], tuple[int, int, int]]] = []
        k = len(plain)
        fine = True
        for i, w in enumerate(m.batch.windows):
            for j, r in enumerate(w.roles):
                n = sizes[r.layout]
                if r.delta or r.width not in _BULK_WIDTHS or len(r.counts) != r.width * n or not n:
                    fine = False
                    break
                mine.append(((r.width, n), (k, i, j)))
        if not fine:
            slow.append(m)
            continue
        for key, cell in mine:
            same[key].append(cell)
        plain.append(m)
    cells: list[dict[tuple[int, int], Cell]] = [{} for _ in plain]
    for (width, n), where in same.items():
        blob = b"".join([plain[k].batch.windows[i].roles[j].counts for k, i, j in where])
        matrix = np.frombuffer(blob, dtype=np.uint8).reshape(len(where), width, n)
        bound = 2 ** (8 * width) - 1
        for row, (k, i, j) in enumerate(where):
            cells[k][(i, j)] = (matrix, row, bound)
    good = [
        (m, [[cells[k][(i, j)] for j in range(len(w.roles))] for i, w in enumerate(m.batch.windows)]) for k, m in enumerate(plain)
    ]
    return good, slow


_BULK_WIDTHS = (1, 2, 4)  # plain counts of 8 bytes may exceed the limit: checked one by one


def sum_parts(parts: Sequence[Part]) -> np.ndarray | list[int]:
    """Exact element-wise sum of the counts of same-layout coded parts."""
    by_matrix: dict[int, tuple[np.ndarray, list[int]]] = {}
    loose: list[Part] = []
    for p in parts:
        if p.matrix is not None and p.vec is None:
            by_matrix.setdefault(id(p.matrix), (p.matrix, []))[1].append(p.row)
        else:
            loose.append(p)
    totals: list[np.ndarray | list[int]] = [wire.plane_sums(m[rows]) for m, rows in by_matrix.values()]
    if loose:
        totals.append(sum_vectors(loose))
    if len(totals) == 1:
        return totals[0]
    if all(isinstance(t, np.ndarray) for t in totals) and sum(p.vmax for p in parts) <= _SAFE:
        return np.add.reduce(np.stack(totals))  # type: ignore[arg-type,no-any-return]
    cols = [t.tolist() if isinstance(t, np.ndarray) else t for t in totals]
    return [sum(c) for c in zip(*cols, strict=True)]


def sum_vectors(parts: Sequence[Part]) -> np.ndarray | list[int]:
    """Exact element-wise sum of same-layout vectors (int64 when it cannot overflow, else Python ints)."""
    vecs = [p.vector() for p in parts]
    if sum(p.vmax for p in parts) <= _SAFE:
        total: np.ndarray = np.add.reduce(np.stack(vecs))
        return total
    return [sum(col) for col in zip(*(v.tolist() for v in vecs), strict=True)]
