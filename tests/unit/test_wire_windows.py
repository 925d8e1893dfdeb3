"""The ingester's bulk path for v2 windows: exact sums, and a bad message refused alone, never an exception."""

from __future__ import annotations

import json
import zlib

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.telemetry.wire_windows import WireTelemetry, from_v2, sum_parts
from shared import wire
from shared.messages import Telemetry
from shared.schema import Reader
from shared.telemetry import N_LATENCY_BUCKETS

pytestmark = pytest.mark.unit


def window(device: str, seq: int, count: int, big: bool = False) -> Telemetry:
    lat = [0] * N_LATENCY_BUCKETS
    lat[10] = count * (70_000 if big else 1)
    data = {
        "schema": 1, "device_id": device, "seq": seq, "sent_at": 1.0, "window_start": 60.0 * seq, "window_s": 60.0,
        "roles": {"production": {"model": "m", "version": 1, "count": count, "errors": 0, "latency_ms": lat,
                                 "predictions": [count, 1, 0], "features": {"a": [0, count, 2]}}},
    }  # fmt: skip
    return Telemetry.read(Reader(json.loads(json.dumps(data))))


def message(payload: bytes) -> WireTelemetry:
    batch = wire.decode(payload)
    return WireTelemetry(batch, tuple((lambda: None) for _ in batch.windows))


def mangle(payload: bytes, how: int) -> bytes:
    raw = msgspec.msgpack.decode(wire._inflate(payload))
    role = raw[4][0][5][0]
    if how == 0:
        role[4] = role[4][:-1]  # one byte short
    elif how == 1:
        role[3] = 1 if role[3] != 1 else 2  # claims another width than its bytes hold
    elif how == 2:
        role[2] = True  # a difference with nothing before it
    return bytes([wire.MAGIC_V2]) + zlib.compress(msgspec.msgpack.encode(raw))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.booleans(), st.integers(-1, 2), st.integers(1, 3)), min_size=1, max_size=12))
def test_bulk_path_sums_exactly_and_refuses_only_bad_messages(specs: list) -> None:
    messages, good_windows, bad = [], [], 0
    for i, (count, big, how, n) in enumerate(specs):
        ws = [window(f"d{i}", 10 + k, count + k, big) for k in range(n)]  # n > 1: differences, decoded one by one
        payload = wire.encode(ws)
        if how >= 0:
            payload = mangle(payload, how)
            bad += 1
        else:
            good_windows += ws
        messages.append(message(payload))
    windows, refused = from_v2(messages)
    assert len(refused) == bad
    assert sorted((w.device_id, w.seq) for w in windows) == sorted((w.device_id, w.seq) for w in good_windows)
    if windows:
        total = sum_parts([p for w in windows for p in w.parts])
        expect = np.sum([wire.flatten(w.roles["production"]) for w in good_windows], axis=0).tolist()
        assert list(total.tolist() if isinstance(total, np.ndarray) else total) == expect
        for w in windows:  # each window still reads back as what was sent
            assert w.telemetry().roles == next(g.roles for g in good_windows if (g.device_id, g.seq) == (w.device_id, w.seq))
