"""Compressed telemetry: pinned dictionary, one decode path, hostile input refused cleanly."""

from __future__ import annotations

import random
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.link import backoff_delay
from shared import compact
from shared.errors import SchemaError
from shared.messages import Telemetry, decode, encode, encode_compact
from shared.telemetry import empty_role_summary
from shared.topics import Kind

pytestmark = pytest.mark.unit


def window(**over):
    msg = {
        "schema": 1, "device_id": "pi-1", "seq": 7, "sent_at": 1.0, "window_start": 0.0, "window_s": 60.0,
        "roles": {"production": empty_role_summary("digits", 3, 10, {"px0": 10})},
        "system": {"cpu_percent": 3.0}, "counters": {"desired_rejected": 2}, "agent": {"boot": "ab", "window": 0},
    }  # fmt: skip
    msg.update(over)
    return msg


def test_the_v1_dictionary_is_pinned():
    assert compact.ZDICT_V1_ID == 4261520548 == zlib.adler32(compact.ZDICT_V1)


def test_compact_and_plain_json_decode_to_the_same_message():
    msg = window()
    a, b = decode(Kind.TELEMETRY, encode_compact(msg)), decode(Kind.TELEMETRY, encode(msg))
    assert isinstance(a, Telemetry) and a == b
    assert a.counters == {"desired_rejected": 2}
    assert len(encode_compact(msg)) < len(encode(msg)) / 2


def test_a_deflate_bomb_is_refused_not_inflated():
    c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, compact.ZDICT_V1)
    bomb = c.compress(b'{"a":"' + b"0" * 50_000_000) + c.flush()
    assert len(bomb) < 256 * 1024
    with pytest.raises(SchemaError, match="inflates beyond"):
        decode(Kind.TELEMETRY, bomb)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (zlib.compress(b"{}"), "preset dictionary"),
        (encode_compact(window())[:-5], "truncated|corrupt"),
        (encode_compact(window(roles={"production": {"model": "m", "version": 1, "count": -1}})), "count"),
        (encode_compact(window(roles={"production": {**empty_role_summary("m", 1, 2, {}), "latency_ms": [1]}})), "82 counts"),
        (encode_compact(window(counters={"x": True})), "integer"),
    ],
)
def test_bad_compact_payloads_say_what_is_wrong(payload, match):
    with pytest.raises(SchemaError, match=match):
        decode(Kind.TELEMETRY, payload)


@given(st.binary(max_size=300))
def test_garbage_only_ever_raises_schema_error(junk):
    for payload in (junk, bytes([0x78]) + junk, b"{" + junk):
        try:
            decode(Kind.TELEMETRY, payload)
        except SchemaError:
            pass


def test_backoff_grows_exponentially_is_capped_and_jittered():
    rng = random.Random(1)
    assert [backoff_delay(a, 1.0, 8.0, jitter=False) for a in range(6)] == [1, 2, 4, 8, 8, 8]
    draws = [backoff_delay(3, 1.0, 8.0, rng=rng) for _ in range(2000)]
    assert 0 <= min(draws) < 0.1 and 7.9 < max(draws) <= 8.0
    assert 3.5 < sum(draws) / len(draws) < 4.5  # uniform over [0, 8]
    assert backoff_delay(10_000, 1.0, 30.0, jitter=False) == 30.0
