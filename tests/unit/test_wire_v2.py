"""Telemetry wire format v2 (shared.wire): the same windows as v1, exactly, and nothing but SchemaError on bad input."""

from __future__ import annotations

import json
import zlib
from dataclasses import replace

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.telemetry.window import RoleAccumulator, SummarySpec
from controller.telemetry.aggregate import merge_many
from controller.telemetry.decode import decode_telemetry, decode_telemetry_many
from shared import wire
from shared.errors import SchemaError
from shared.messages import LateLabel, Telemetry, encode, encode_compact
from shared.schema import Reader
from shared.telemetry import COUNTERS, N_LATENCY_BUCKETS, MergeError

pytestmark = pytest.mark.unit

counts = st.integers(0, 2**40)


@st.composite
def summaries(draw: st.DrawFn, model: str = "m", version: int = 1) -> dict:
    n_feat = draw(st.integers(0, 4))
    bins = [draw(st.integers(0, 5)) for _ in range(n_feat)]
    s = {
        "model": model,
        "version": version,
        "count": draw(counts),
        "errors": draw(counts),
        "samples": draw(counts),
        "latency_ms": draw(st.lists(counts, min_size=N_LATENCY_BUCKETS, max_size=N_LATENCY_BUCKETS)),
        "predictions": draw(st.lists(counts, max_size=6)),
        "features": {f"f{i}": draw(st.lists(counts, min_size=n, max_size=n)) for i, n in enumerate(bins)},
        "shadow": {"agree": draw(counts), "disagree": draw(counts)},
        "labels": {"count": draw(counts), "correct": draw(counts)},
    }
    if draw(st.booleans()):
        s["confidence"] = draw(st.lists(counts, min_size=20, max_size=20))
    if draw(st.booleans()):
        s["quality"] = {k: draw(st.lists(counts, min_size=n_feat, max_size=n_feat)) for k in ("nan", "inf", "out_of_range")}
    if draw(st.booleans()):  # a shadow role's comparison with production (ADR 0067)
        s["shadow"] |= {"dropped": draw(counts), "sampled_out": draw(counts)}
    if draw(st.booleans()):
        k = draw(st.integers(1, 4))
        s["confusion"] = [draw(st.lists(counts, min_size=k, max_size=k)) for _ in range(k)]
    return s


def window(seq: int, roles: dict, **kw: object) -> Telemetry:
    data = {
        "schema": 1,
        "device_id": "dev-1",
        "seq": seq,
        "sent_at": 1700000000.5 + seq,
        "window_start": 1700000000.0 + 60 * seq,
        "window_s": 60.0,
        "roles": roles,
        "system": {"cpu_percent": 12.5, "temp_c": 51.0, "queue_pending": 3},
        "counters": {**dict.fromkeys(COUNTERS, 0), "desired_received": seq},
        "agent": {"version": "1.2.3", "boot": "abc123", "window": seq},
        **kw,
    }
    return Telemetry.read(Reader(json.loads(json.dumps(data))))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(summaries(), st.one_of(st.none(), summaries("m2", 7))), min_size=1, max_size=5))
def test_v2_carries_exactly_the_v1_windows(rows: list) -> None:
    ws = [window(i, {"production": a, **({"canary": b} if b else {})}) for i, (a, b) in enumerate(rows)]
    back = wire.to_telemetry(wire.decode(wire.encode(ws)))
    assert back == ws
    # Merging is unchanged: the same aggregate (or the same refusal) from the v2 windows as from the v1 ones.
    assert _merged([w.roles["production"] for w in back]) == _merged([w.roles["production"] for w in ws])


def _merged(items: list) -> object:
    try:
        return merge_many(items)
    except MergeError as exc:
        return str(exc)


def test_real_agent_windows_round_trip_and_shrink() -> None:
    edges = np.linspace(0.0, 16.0, 9)
    spec = SummarySpec(tuple(f"px{i}" for i in range(64)), (edges,) * 64, 10, None)
    rng = np.random.default_rng(0)
    ws = []
    for seq in range(5):
        acc = RoleAccumulator("digits", 3, "s" * 64, spec)
        for _ in range(300):
            x = rng.integers(0, 17, size=(1, 64)).astype(float)
            out = rng.random((1, 10))
            acc.record(float(rng.random() * 3), x, out / out.sum())
        ws.append(window(seq, {"production": acc.close()}))
    one = wire.encode(ws[:1])
    five = wire.encode(ws)
    assert decode_telemetry(one) == ws[0]
    assert decode_telemetry_many(five) == ws
    assert len(five) / 5 < len(one) < len(encode_compact(ws[0]))


def test_late_labels_and_empty_windows_survive() -> None:
    label = {"prediction_id": "p-1", "role": "production", "model": "m", "version": 2, "window_start": 1.5e9, "label": 4}
    ws = [window(1, {}), window(2, {}, labels=[label, {**label, "predicted": 3}])]
    assert wire.to_telemetry(wire.decode(wire.encode(ws))) == ws
    assert ws[1].labels[0] == LateLabel("p-1", "production", "m", 2, 1.5e9, None, 4)


def test_dense_messages_use_lzma_and_carry_the_same_windows() -> None:
    s = {"model": "m", "version": 1, "count": 3, "errors": 0, "latency_ms": [1, 2] + [0] * (N_LATENCY_BUCKETS - 2)}
    ws = [window(i, {"production": {**s, "count": i}}) for i in range(6)]
    dense = wire.encode(ws, dense=True)
    assert dense[0] == wire.MAGIC_V2_LZMA
    assert wire.to_telemetry(wire.decode(dense)) == ws == decode_telemetry_many(dense)
    with pytest.raises(SchemaError, match="truncated|corrupt"):
        wire.decode(dense[:-4])
    import lzma

    bomb = lzma.compress(b"\x00" * (2 * 1024 * 1024), format=lzma.FORMAT_RAW, filters=wire._lzma_filters(lzma))
    with pytest.raises(SchemaError, match="inflates beyond"):
        wire.decode(bytes([wire.MAGIC_V2_LZMA]) + bomb)


def test_rebatch_joins_single_window_messages() -> None:
    s = {"model": "m", "version": 1, "count": 3, "errors": 0, "latency_ms": [1, 2] + [0] * (N_LATENCY_BUCKETS - 2)}
    ws = [window(i, {"production": s}) for i in range(4)]
    joined, n = wire.rebatch([wire.encode([w]) for w in ws])
    assert n == 4 and wire.to_telemetry(wire.decode(joined)) == ws
    assert len(joined) < sum(len(wire.encode([w])) for w in ws)


def test_windows_of_two_agent_runs_never_share_a_message() -> None:
    """A batch names one boot: windows queued before a restart and after it go in two messages, each labelled right."""
    ws = [replace(window(i, {}), agent={"version": "1", "boot": "a" if i < 2 else "b", "window": i % 2}) for i in range(4)]
    with pytest.raises(SchemaError, match="two agent runs"):
        wire.encode(ws)
    first, n = wire.rebatch([wire.encode([w]) for w in ws])
    assert n == 2 and wire.to_telemetry(wire.decode(first)) == ws[:2]
    second, m = wire.rebatch([wire.encode([w]) for w in ws[2:]])
    assert m == 2 and wire.to_telemetry(wire.decode(second)) == ws[2:]


def test_older_formats_still_decode() -> None:
    w = window(3, {})
    for payload in (encode(w), encode_compact(w), wire.encode([w])):
        assert decode_telemetry_many(payload) == [w]
        assert wire.decode_windows(payload) == [w]


@pytest.mark.parametrize(
    "values",
    [
        [0, 1, 127],
        [0, 1, -1, 127, 128, 255],
        [-(2**15), 2**15 - 1, 300],
        [2**31, -(2**31)],
        [2**62 - 1, -(2**62), 2**63 - 1, -(2**63)],
        [],
    ],
)
def test_packed_differences_round_trip_in_the_fewest_bytes(values: list[int]) -> None:
    v = np.array(values, dtype=np.int64)
    width, data = wire.pack(v, signed=True)
    assert wire.unpack(width, data, len(v), signed=True).tolist() == values
    top = max((2 * x if x >= 0 else -2 * x - 1 for x in values), default=0)  # zigzag
    assert width == min(w for w in (1, 2, 4, 8) if top < 256**w)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**40), min_size=7, max_size=7), min_size=1, max_size=30), st.integers(0, 3))
def test_plane_sums_are_exact(rows: list, big: int) -> None:
    """Counts summed plane by plane without decoding them equal the plain sum (and Python ints when int64 could overflow)."""
    width = (1, 2, 4, 8)[big]
    m = np.array(rows, dtype=np.int64) % (2 ** min(8 * width, 62))
    planes = np.ascontiguousarray(m.astype(f"<u{width}").view(np.uint8).reshape(len(m), 7, width).transpose(0, 2, 1))
    total = wire.plane_sums(planes)
    assert list(total.tolist() if isinstance(total, np.ndarray) else total) == [sum(c) for c in zip(*m.tolist(), strict=True)]
    for r in m:
        w, data = wire.pack(r)
        assert wire.unpack(w, data, 7).tolist() == r.tolist()


def _body(batch: list) -> bytes:
    return bytes([wire.MAGIC_V2]) + zlib.compress(msgspec.msgpack.encode(batch))


def _good() -> list:
    s = {"model": "m", "version": 1, "count": 3, "errors": 0, "latency_ms": [0] * N_LATENCY_BUCKETS}
    batch = wire.decode(wire.encode([window(1, {"production": s})]))
    return msgspec.msgpack.decode(msgspec.msgpack.encode(batch))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[4][0][5][0].__setitem__(4, wire.pack(np.array([1, 2]))[1]), "expected 89 values"),
        (
            lambda b: (b[4][0][5][0].__setitem__(3, 8), b[4][0][5][0].__setitem__(4, wire.pack(np.array([2**62] + [0] * 88))[1])),
            "2\\*\\*62",
        ),
        (lambda b: b[4][0][5][0].__setitem__(3, 3), "width 3"),
        (lambda b: b[4][0][5][0].__setitem__(3, 9), "width"),
        (lambda b: b[4][0][5][0].__setitem__(1, 5), "layout"),
        (lambda b: b[4][0][5][0].__setitem__(2, True), "difference with no earlier window"),
        (lambda b: b[4][0][5][0].__setitem__(0, "boss"), "role"),
        (lambda b: b[3][0].__setitem__(3, [1]), "features but"),
        (lambda b: b.__setitem__(0, "bad id!"), "device_id"),
        (lambda b: b[4][0].__setitem__(0, -1), "seq"),
        (lambda b: b[4][0].__setitem__(2, float("nan")), "window_start"),
        (lambda b: b.__setitem__(4, []), "windows"),
        (lambda b: b[4][0][6].__setitem__("x", -2), "counters"),
    ],
)
def test_malformed_v2_is_refused_by_name(mutate: object, match: str) -> None:
    batch = _good()
    mutate(batch)  # type: ignore[operator]
    with pytest.raises(SchemaError, match=match):
        decode_telemetry_many(_body(batch))


def test_bombs_and_garbage_are_refused() -> None:
    with pytest.raises(SchemaError, match="inflates beyond"):
        wire.decode(bytes([wire.MAGIC_V2]) + zlib.compress(b"\x00" * (2 * 1024 * 1024)))
    with pytest.raises(SchemaError, match="corrupt"):
        wire.decode(bytes([wire.MAGIC_V2]) + b"garbage")
    with pytest.raises(SchemaError, match="truncated"):
        wire.decode(wire.encode([window(1, {})])[:-3])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans(), st.sampled_from([wire.MAGIC_V2, wire.MAGIC_V2_LZMA]))
def test_random_bytes_never_escape_as_anything_but_schema_error(data: bytes, compress: bool, magic: int) -> None:
    payload = bytes([magic]) + (zlib.compress(data) if compress else data)
    try:
        decode_telemetry_many(payload)
    except SchemaError:
        pass


def test_layouts_of_agents_without_shadow_comparisons_still_decode() -> None:
    """The shadow fields of a layout are trailing defaults: a layout written before them decodes unchanged."""
    old = msgspec.msgpack.encode(["m", 1, [], [], 3, False, False])
    assert msgspec.msgpack.decode(old, type=wire.Layout) == wire.Layout("m", 1, (), (), 3, False, False)
    shadow = wire.Layout("m", 1, (), (), 3, False, False, True, 3)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(shadow), type=wire.Layout) == shadow
    assert shadow.size() == wire.Layout("m", 1, (), (), 3, False, False).size() + 2 + 9


def test_a_confusion_matrix_must_be_square_and_small() -> None:
    from shared.messages import read_role_summary

    base = {"model": "m", "version": 1, "count": 1, "errors": 0, "latency_ms": [0] * N_LATENCY_BUCKETS}
    with pytest.raises(SchemaError, match=r"confusion\[1\]: expected 2 counts"):
        read_role_summary(Reader({**base, "confusion": [[1, 0], [0]]}))
    with pytest.raises(SchemaError, match="confusion: expected 1 to 64 rows"):
        read_role_summary(Reader({**base, "confusion": [[0] * 65] * 65}))
    with pytest.raises(SchemaError, match=r"confusion\[0\]\[1\]: expected a non-negative integer"):
        read_role_summary(Reader({**base, "confusion": [[1, -1], [0, 0]]}))
    assert read_role_summary(Reader({**base, "confusion": [[3, 1], [0, 2]]}))["confusion"] == [[3, 1], [0, 2]]
