"""Telemetry wire format v2: windows as delta-coded integer arrays, one compiled schema for both sides.

Version 1 (``shared.messages.Telemetry`` as JSON, optionally deflated by
``shared.compact``) names every histogram bin's feature in every window and
writes counts as decimal text. Version 2 carries the same information, so the
controller rebuilds exactly the v1 role summaries (``to_telemetry``), in a
fraction of the bytes (docs/adr/0063-telemetry-wire-v2.md):

- a message holds one or more windows of one device (``Batch``): on a metered
  link the agent sends several per publish, so the per-message TCP/TLS/MQTT
  overhead and the dictionary-less deflate warm-up are paid once;
- the shape of a role summary (feature names and bins, number of classes, ...)
  is written once per message in ``layouts``; each role window then carries all
  its counts as one flat vector (order in :data:`HEAD` and :func:`flatten`);
- the first window of a role in a message is written as it is; later ones as
  their difference from the mean of the earlier windows of the same role and
  layout in the message (:func:`predictor`; windows of a steady device differ
  little from it), zigzag-mapped. Values take the fewest bytes (1, 2, 4 or 8)
  that hold them all, as byte planes (all low bytes, then all next bytes, ...:
  the high planes are mostly zeros, which deflate well), and the whole message
  is deflated. Plain counts in byte planes are summed without decoding them
  (:func:`plane_sums`: a sum of bytes per plane), which is how the controller
  merges a batch of single-window messages.

``payload = MAGIC_V2 + zlib(msgpack(Batch))``, or ``MAGIC_V2_LZMA + raw LZMA2``
(``encode(..., dense=True)``: ~11 % smaller, ten times the controller's CPU to
inflate; for messages of many windows on metered links). The first byte tells
the formats apart (``{`` JSON v1, ``0x78`` compact v1, ``0xE2``/``0xE3`` v2), so
a controller takes old and new agents alike. The Structs below are the one schema: msgspec decodes
and validates a message in one compiled pass (types, ranges, lengths), then
:func:`counts` decodes every vector with numpy and :func:`check` refuses
vectors that do not fit their layout or go negative. Everything raises
:class:`SchemaError` naming the field; nothing else escapes on bad input.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import msgspec
import numpy as np

from shared.errors import SchemaError
from shared.messages import MAX_INFLATED_BYTES, MAX_LATE_LABELS, MAX_PAYLOAD_BYTES, STREAM_PATTERN, LateLabel, Telemetry
from shared.telemetry import CONFIDENCE_BINS, COUNTERS, MAX_CONFUSION_CLASSES, N_LATENCY_BUCKETS

MAGIC_V2 = 0xE2  # zlib
MAGIC_V2_LZMA = 0xE3  # raw LZMA2 (_lzma_filters)


def _lzma() -> Any:
    """The lzma module, or None where Python was built without it (then dense messages use zlib)."""
    try:
        import lzma
    except ImportError:
        return None
    return lzma


def _lzma_filters(lzma: Any) -> list[dict[str, Any]]:
    return [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": 1 << 20}]


MAX_WINDOWS = 1440  # windows per message (a day of 60 s windows)
WIDTHS = (1, 2, 4, 8)  # bytes per value of a counts vector
LIMIT = 2**62  # every count is below it, so sums of a message's windows and differences fit an int64
# The scalar counts at the head of every vector, in this order.
HEAD = ("count", "errors", "samples", "shadow.agree", "shadow.disagree", "labels.count", "labels.correct")
COMPARISONS = ("dropped", "sampled_out")  # shadow.<name>, after the quality counts when the layout says so

Count = Annotated[int, msgspec.Meta(ge=0, lt=LIMIT)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Small = Annotated[int, msgspec.Meta(ge=0, le=100_000)]
Finite = Annotated[float, msgspec.Meta(ge=-1e15, le=1e15)]  # msgpack floats: NaN and inf fail the bounds


class Layout(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True, gc=False, cache_hash=True):
    """The shape of a role summary: what each position of a counts vector means (hashable: a cache key).

    The trailing fields describe a shadow role's comparison with production (ADR 0067); they
    have defaults, so layouts from agents that predate them decode unchanged."""

    model: Name
    version: Annotated[int, msgspec.Meta(ge=1, lt=2**31)]
    features: Annotated[tuple[Annotated[str, msgspec.Meta(max_length=128)], ...], msgspec.Meta(max_length=4096)]
    bins: Annotated[tuple[Small, ...], msgspec.Meta(max_length=4096)]  # counts per feature histogram
    predictions: Small
    confidence: bool  # CONFIDENCE_BINS counts present
    quality: bool  # nan, inf, out_of_range per feature present
    comparisons: bool = False  # shadow.dropped and shadow.sampled_out present
    confusion: Annotated[int, msgspec.Meta(ge=0, le=MAX_CONFUSION_CLASSES)] = 0  # a confusion x confusion matrix present

    def size(self) -> int:
        conf = CONFIDENCE_BINS if self.confidence else 0
        quality = 3 * len(self.features) if self.quality else 0
        extra = len(COMPARISONS) * self.comparisons + self.confusion**2
        return len(HEAD) + N_LATENCY_BUCKETS + self.predictions + conf + sum(self.bins) + quality + extra


class RoleWindow(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True, gc=False):
    role: Annotated[str, msgspec.Meta(pattern=r"^(production|canary|shadow|arm-[a-z0-9_-]{1,32})$")]
    layout: Annotated[int, msgspec.Meta(ge=0)]  # index into Batch.layouts
    delta: bool  # counts are the difference from ``predictor`` of the earlier windows of this role and layout
    width: Annotated[int, msgspec.Meta(ge=1, le=8)]  # bytes per value: 1, 2, 4 or 8
    counts: Annotated[bytes, msgspec.Meta(max_length=MAX_INFLATED_BYTES)]  # zigzag values, byte planes


class Label(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True, gc=False):
    prediction_id: Annotated[str, msgspec.Meta(max_length=64)]
    role: Annotated[str, msgspec.Meta(pattern=r"^(production|canary|shadow|arm-[a-z0-9_-]{1,32})$")]
    model: Name
    version: Annotated[int, msgspec.Meta(ge=1)]
    window_start: Annotated[float, msgspec.Meta(ge=0, le=1e15)]
    predicted: Count | None
    label: Count


Gauge = Annotated[float, msgspec.Meta(ge=-1e18, le=1e18)] | int | str | bool | None


class Window(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True, gc=False):
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    sent_at: Finite
    window_start: Finite
    window_s: Annotated[float, msgspec.Meta(ge=0, le=1e9)]
    index: Annotated[int, msgspec.Meta(ge=0)]  # windows since the agent's boot
    roles: Annotated[list[RoleWindow], msgspec.Meta(max_length=64)]
    counters: Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)], Count], msgspec.Meta(max_length=64)]
    system: Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)], Gauge], msgspec.Meta(max_length=64)]
    labels: Annotated[list[Label], msgspec.Meta(max_length=MAX_LATE_LABELS)] = []


class Batch(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True, gc=False):
    """One device's windows, oldest first.

    ``stream`` (ADR 0080) is trailing with a default and left out when empty (``encode``), so a
    message without one is byte for byte what agents sent before, and decodes unchanged."""

    device_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    agent_version: Annotated[str, msgspec.Meta(max_length=64)]
    boot: Annotated[str, msgspec.Meta(max_length=64)]
    layouts: Annotated[list[Layout], msgspec.Meta(max_length=64)]
    windows: Annotated[list[Window], msgspec.Meta(min_length=1, max_length=MAX_WINDOWS)]
    stream: Annotated[str, msgspec.Meta(pattern=STREAM_PATTERN)] = ""  # the seq stream: seqs are unique per (device, stream)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Batch)


# --- counts vectors ----------------------------------------------------------------


def layout_of(summary: dict[str, Any]) -> Layout:
    """The layout of a v1 role summary (as ``shared.messages.read_role_summary`` returns it)."""
    feats = summary.get("features") or {}
    return Layout(
        model=summary["model"],
        version=summary["version"],
        features=tuple(feats),
        bins=tuple(len(v) for v in feats.values()),
        predictions=len(summary.get("predictions") or []),
        confidence=summary.get("confidence") is not None,
        quality=summary.get("quality") is not None,
        comparisons=any(k in (summary.get("shadow") or {}) for k in COMPARISONS),
        confusion=len(summary.get("confusion") or []),
    )


def flatten(summary: dict[str, Any]) -> list[int]:
    """A v1 role summary's counts in vector order: HEAD, latency, predictions, confidence, features, quality,
    then (a shadow role's) COMPARISONS and the confusion matrix row by row."""
    shadow, labels = summary.get("shadow") or {}, summary.get("labels") or {}
    out = [
        summary["count"],
        summary["errors"],
        summary.get("samples", 0),
        shadow.get("agree", 0),
        shadow.get("disagree", 0),
        labels.get("count", 0),
        labels.get("correct", 0),
    ]
    out += summary["latency_ms"]
    out += summary.get("predictions") or []
    if summary.get("confidence") is not None:
        out += summary["confidence"]
    for v in (summary.get("features") or {}).values():
        out += v
    quality = summary.get("quality")
    if quality is not None:
        for k in ("nan", "inf", "out_of_range"):
            out += quality[k]
    if any(k in shadow for k in COMPARISONS):
        out += [shadow.get(k, 0) for k in COMPARISONS]
    for row in summary.get("confusion") or []:
        out += row
    return out


def unflatten(layout: Layout, flat: Sequence[int]) -> dict[str, Any]:
    """The v1 role summary of a vector (the inverse of :func:`flatten` for that layout)."""
    v = list(flat)
    s: dict[str, Any] = {
        "model": layout.model,
        "version": layout.version,
        "count": v[0],
        "errors": v[1],
        "samples": v[2],
    }
    pos = len(HEAD)
    s["latency_ms"] = v[pos : pos + N_LATENCY_BUCKETS]
    pos += N_LATENCY_BUCKETS
    s["predictions"] = v[pos : pos + layout.predictions]
    pos += layout.predictions
    features: dict[str, list[int]] = {}
    conf = None
    if layout.confidence:
        conf = v[pos : pos + CONFIDENCE_BINS]
        pos += CONFIDENCE_BINS
    for name, n in zip(layout.features, layout.bins, strict=True):
        features[name] = v[pos : pos + n]
        pos += n
    s["features"] = features
    s["shadow"] = {"agree": v[3], "disagree": v[4]}
    s["labels"] = {"count": v[5], "correct": v[6]}
    if conf is not None:
        s["confidence"] = conf
    if layout.quality:
        nf = len(layout.features)
        s["quality"] = {k: v[pos + i * nf : pos + (i + 1) * nf] for i, k in enumerate(("nan", "inf", "out_of_range"))}
        pos += 3 * nf
    if layout.comparisons:
        s["shadow"] |= dict(zip(COMPARISONS, v[pos : pos + len(COMPARISONS)], strict=True))
        pos += len(COMPARISONS)
    k = layout.confusion
    if k:
        s["confusion"] = [v[pos + i * k : pos + (i + 1) * k] for i in range(k)]
    return s


def pack(values: np.ndarray, *, signed: bool = False) -> tuple[int, bytes]:
    """(width, bytes) of int64 values in the fewest bytes per value that hold them all, as byte planes.

    Counts (``signed=False``) are written as they are; differences (``signed=True``) zigzag-mapped
    (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...) so small ones of either sign take one byte.
    """
    v = np.asarray(values, dtype=np.int64)
    if signed:
        z = ((v << 1) ^ (v >> 63)).view(np.uint64)
    elif len(v) and int(v.min()) < 0:
        raise SchemaError("counts: a count is negative")
    else:
        z = v.view(np.uint64)
    top = int(z.max()) if len(z) else 0
    width = next(w for w in WIDTHS if top < 1 << (8 * w))
    planes = z.astype(f"<u{width}").view(np.uint8).reshape(len(z), width).T
    return width, planes.tobytes()


def unpack(width: int, data: bytes, n: int, *, signed: bool = False) -> np.ndarray:
    """The ``n`` values :func:`pack` wrote; SchemaError if the bytes do not hold exactly that."""
    if width not in WIDTHS:
        raise SchemaError(f"counts: width {width} is not one of {WIDTHS}")
    if len(data) != width * n:
        raise SchemaError(f"counts: expected {n} values of {width} bytes, got {len(data)} bytes")
    if not n:
        return np.zeros(0, np.int64)
    planes = np.frombuffer(data, dtype=np.uint8).reshape(1, width, n)
    out: np.ndarray = zigzag_planes(planes)[0] if signed else join_planes(planes)[0]
    if not signed and width == 8:
        if int(out.max()) >= LIMIT:
            raise SchemaError("counts: a count is 2**62 or more")
        out = out.astype(np.int64)
    return out


def join_planes(planes: np.ndarray) -> np.ndarray:
    """(m, width, n) byte planes -> (m, n) unsigned values (int64 below 8 bytes, else uint64)."""
    width = planes.shape[1]
    kind = np.uint64 if width == 8 else np.int64
    z = planes[:, 0, :].astype(kind)
    for k in range(1, width):
        z |= planes[:, k, :].astype(kind) << kind(8 * k)
    return z


def zigzag_planes(planes: np.ndarray) -> np.ndarray:
    """(m, width, n) byte planes of zigzag values -> (m, n) signed int64 values."""
    z = join_planes(planes)
    if z.dtype == np.uint64:
        out: np.ndarray = (z >> np.uint64(1)).astype(np.int64) ^ -(z & np.uint64(1)).astype(np.int64)
        return out
    z ^= -(z & 1) << 1  # (z >> 1) ^ -(z & 1), in place: the low bit cancels, the shift follows
    z >>= 1
    return z


def plane_sums(planes: np.ndarray) -> np.ndarray | list[int]:
    """Exact element-wise sum of m unsigned vectors, (m, width, n) byte planes: summed plane by plane
    (a sum of bytes), then shifted into place. int64 when it cannot overflow, else Python ints."""
    m, width, n = planes.shape
    per_plane = np.add.reduce(planes, axis=0, dtype=np.int64)  # (width, n), each < m * 256
    if m * 2 ** (8 * width) <= 2**63:
        total: np.ndarray = per_plane[0].copy()
        for k in range(1, width):
            total += per_plane[k] << (8 * k)
        return total
    rows = per_plane.tolist()
    return [sum(rows[k][i] << (8 * k) for k in range(width)) for i in range(n)]


def predictor(total: np.ndarray, n: int) -> np.ndarray:
    """The rounded mean of ``n`` earlier windows summing to ``total``: what a delta-coded vector is relative to."""
    out: np.ndarray = (total + n // 2) // n
    return out


# --- messages ------------------------------------------------------------------------


def encode(windows: Iterable[Telemetry], *, dense: bool = False) -> bytes:
    """One v2 message with ``windows`` (all of one device, oldest first); ``dense``: LZMA, not zlib."""
    ws = list(windows)
    if not ws:
        raise SchemaError("a telemetry message needs at least one window")
    first = ws[0]
    for w in ws:
        w.to_payload()  # the v1 reader's checks: never send what the controller would refuse
        if _origin(w) != _origin(first):  # the batch names one agent run (version, boot, stream) for all its windows
            raise SchemaError(f"windows of two agent runs {_origin(first)} and {_origin(w)} in one message")
    layouts: list[Layout] = []
    index: dict[Layout, int] = {}
    earlier: dict[tuple[str, int], tuple[np.ndarray, int]] = {}  # (role, layout) -> sum and number of windows
    out: list[Window] = []
    for w in ws:
        if w.device_id != first.device_id:
            raise SchemaError(f"windows of {first.device_id!r} and {w.device_id!r} in one message")
        roles = []
        for role, summary in w.roles.items():
            layout = layout_of(summary)
            li = index.setdefault(layout, len(layouts))
            if li == len(layouts):
                layouts.append(layout)
            vec = np.asarray(flatten(summary), dtype=np.int64)
            total, n = earlier.get((role, li), (np.zeros_like(vec), 0))
            delta = n > 0 and int(total.max(initial=0)) < LIMIT
            width, data = pack(vec - predictor(total, n), signed=True) if delta else pack(vec)
            roles.append(RoleWindow(role, li, delta, width, data))
            earlier[(role, li)] = (total + vec, n + 1) if delta or n == 0 else (vec, 1)
        agent = w.agent or {}
        out.append(
            Window(
                seq=w.seq,
                sent_at=w.sent_at,
                window_start=w.window_start,
                window_s=w.window_s,
                index=int(agent.get("window", 0)),
                roles=roles,
                counters={k: v for k, v in w.counters.items() if v},
                system=dict(w.system),
                labels=[
                    Label(x.prediction_id, x.role, x.model, x.version, x.window_start, x.predicted, x.label) for x in w.labels
                ],
            )
        )
    agent = first.agent or {}
    batch = Batch(first.device_id, str(agent.get("version", "")), str(agent.get("boot", "")), layouts, out, first.stream)
    body = _encoder.encode(batch if batch.stream else msgspec.structs.astuple(batch)[:-1])
    if len(body) > MAX_INFLATED_BYTES:
        raise SchemaError(f"telemetry message of {len(ws)} windows is {len(body)} bytes, limit {MAX_INFLATED_BYTES}")
    lzma = _lzma() if dense else None
    if lzma is not None:
        packed: bytes = lzma.compress(body, format=lzma.FORMAT_RAW, filters=_lzma_filters(lzma))
        return bytes([MAGIC_V2_LZMA]) + packed
    return bytes([MAGIC_V2]) + zlib.compress(body, 9)


def is_v2(payload: bytes) -> bool:
    return payload[:1] in (b"\xe2", b"\xe3")


def _inflate(payload: bytes) -> bytes:
    """The body of a v2 payload, at most MAX_INFLATED_BYTES of it."""
    if payload[0] == MAGIC_V2_LZMA:
        lzma = _lzma()
        if lzma is None:
            raise SchemaError("an LZMA telemetry message, and this Python has no lzma module")
        x = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(lzma))
        try:
            body: bytes = x.decompress(payload[1:], MAX_INFLATED_BYTES + 1)
        except lzma.LZMAError as exc:
            raise SchemaError(f"compressed payload is corrupt: {exc}") from None
        if len(body) > MAX_INFLATED_BYTES or (not x.eof and not x.needs_input):
            raise SchemaError(f"compressed payload inflates beyond {MAX_INFLATED_BYTES} bytes")
        if not x.eof:
            raise SchemaError("compressed payload is truncated")
        return body
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload[1:], MAX_INFLATED_BYTES + 1)
    except zlib.error as exc:
        raise SchemaError(f"compressed payload is corrupt: {exc}") from None
    if len(out) > MAX_INFLATED_BYTES or d.unconsumed_tail:
        raise SchemaError(f"compressed payload inflates beyond {MAX_INFLATED_BYTES} bytes")
    if not d.eof:
        raise SchemaError("compressed payload is truncated")
    return out


def decode(payload: bytes) -> Batch:
    """Inflate (bounded) and validate a v2 message; the counts vectors stay coded (see :func:`counts`)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SchemaError(f"payload too large: {len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
    if not is_v2(payload):
        raise SchemaError(f"not a v2 telemetry message (first byte {payload[:1]!r}, expected 0xe2 or 0xe3)")
    body = _inflate(payload)
    try:
        batch = _decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError is a DecodeError
        raise SchemaError(f"telemetry v2: {_named(str(exc))}") from None
    for i, w in enumerate(batch.windows):
        for j, r in enumerate(w.roles):
            if r.layout >= len(batch.layouts):
                raise SchemaError(f"$.windows[{i}].roles[{j}].layout: {r.layout} is not one of {len(batch.layouts)} layouts")
    for i, lay in enumerate(batch.layouts):
        if len(lay.bins) != len(lay.features):
            raise SchemaError(f"$.layouts[{i}]: {len(lay.features)} features but {len(lay.bins)} bin counts")
        if lay.size() > 100_000:
            raise SchemaError(f"$.layouts[{i}]: more than 100000 counts per summary")
    return batch


_ELEMENT = {
    ("Batch", "layouts"): Layout,
    ("Batch", "windows"): Window,
    ("Window", "roles"): RoleWindow,
    ("Window", "labels"): Label,
}


def _named(error: str) -> str:
    """msgspec's array path (``$[4][0][5]``) in field names (``$.windows[0].roles``)."""
    m = re.search(r"at `\$((?:\[[^\]]*\])*)`", error)
    if m is None:
        return error
    t: Any = Batch
    out, in_list = "$", False
    for idx in re.findall(r"\[([^\]]*)\]", m.group(1)):
        if in_list or t is None:
            out, in_list = f"{out}[{idx}]", False
            continue
        names = [f.name for f in msgspec.structs.fields(t)]
        if not idx.isdigit() or int(idx) >= len(names):
            out += f"[{idx}]"
            t = None
            continue
        name = names[int(idx)]
        out += f".{name}"
        nxt = _ELEMENT.get((t.__name__, name))
        t, in_list = nxt, nxt is not None
    return error[: m.start()] + f"at `{out}`"


def counts(batch: Batch) -> list[list[np.ndarray]]:
    """Every role window's counts (int64 vectors, deltas resolved), per window; SchemaError if one does not fit."""
    sizes = [lay.size() for lay in batch.layouts]
    earlier: dict[tuple[str, int], tuple[np.ndarray, int]] = {}
    out: list[list[np.ndarray]] = []
    for i, w in enumerate(batch.windows):
        row = []
        for j, r in enumerate(w.roles):
            where = f"$.windows[{i}].roles[{j}]"
            try:
                vec = unpack(r.width, r.counts, sizes[r.layout], signed=r.delta)
            except SchemaError as exc:
                raise SchemaError(f"{where}.{exc}") from None
            total, n = earlier.get((r.role, r.layout), (np.zeros_like(vec), 0))
            if r.delta:
                if n == 0:
                    raise SchemaError(f"{where}: a difference with no earlier window of {r.role} in the message")
                if int(total.max(initial=0)) >= LIMIT or int(np.abs(vec).max(initial=0)) >= LIMIT:
                    raise SchemaError(f"{where}.counts: a difference of 2**62 or more")
                vec = vec + predictor(total, n)
            if len(vec) and int(vec.min()) < 0:
                raise SchemaError(f"{where}.counts: a count is negative")
            if len(vec) and int(vec.max()) >= LIMIT:
                raise SchemaError(f"{where}.counts: a count is 2**62 or more")
            earlier[(r.role, r.layout)] = (total + vec, n + 1) if r.delta or n == 0 else (vec, 1)
            row.append(vec)
        out.append(row)
    return out


def to_telemetry(batch: Batch, vectors: list[list[np.ndarray]] | None = None) -> list[Telemetry]:
    """The v1 messages a v2 message carries (same fields, same role summaries: merging is unchanged)."""
    vecs = counts(batch) if vectors is None else vectors
    out = []
    for w, row in zip(batch.windows, vecs, strict=True):
        roles: dict[str, dict[str, Any]] = {}
        for r, vec in zip(w.roles, row, strict=True):
            if r.role in roles:
                raise SchemaError(f"$.windows[seq {w.seq}].roles: {r.role} appears twice")
            roles[r.role] = unflatten(batch.layouts[r.layout], vec.tolist())
        out.append(
            Telemetry(
                device_id=batch.device_id,
                seq=w.seq,
                sent_at=w.sent_at,
                window_start=w.window_start,
                window_s=w.window_s,
                roles=roles,
                system=dict(w.system),
                counters={**dict.fromkeys(COUNTERS, 0), **w.counters},
                agent={"version": batch.agent_version, "boot": batch.boot, "window": w.index},
                labels=[
                    LateLabel(x.prediction_id, x.role, x.model, x.version, x.window_start, x.predicted, x.label) for x in w.labels
                ],
                stream=batch.stream,
            )
        )
    return out


def _origin(w: Telemetry) -> tuple[str, str, str, str]:
    """What a batch writes once for all its windows: the device, the agent run (version, boot id) and the seq stream."""
    agent = w.agent or {}
    return w.device_id, str(agent.get("version", "")), str(agent.get("boot", "")), w.stream


def rebatch(payloads: Sequence[bytes], *, dense: bool = False) -> tuple[bytes, int]:
    """One message with the windows of the first ``n`` of several (v2) messages of one device (e.g. queued one
    per window), and ``n``: the longest run of them from one agent run (a batch names one boot; windows queued
    before a restart go in a message of their own)."""
    windows: list[Telemetry] = []
    n = 0
    for p in payloads:
        ws = to_telemetry(decode(p))
        if windows and any(_origin(w) != _origin(windows[0]) for w in ws):
            break
        windows += ws
        n += 1
    return encode(windows, dense=dense), n


def decode_windows(payload: bytes) -> list[Telemetry]:
    """The windows of a telemetry payload in any format (v2, compact v1, JSON v1), for tools and tests."""
    if is_v2(payload):
        return to_telemetry(decode(payload))
    from shared.messages import decode as decode_v1
    from shared.topics import Kind

    message = decode_v1(Kind.TELEMETRY, payload)
    assert isinstance(message, Telemetry)
    return [message]
