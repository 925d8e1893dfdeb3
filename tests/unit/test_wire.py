"""controller.wire.decode_telemetry accepts and refuses what shared.messages.decode does (plus integer-only counts)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.telemetry.decode import decode_telemetry
from shared.errors import ProtocolError
from shared.messages import decode
from shared.telemetry import N_LATENCY_BUCKETS
from shared.topics import Kind

pytestmark = [pytest.mark.unit]

GOOD = {
    "schema": 1,
    "device_id": "pi-1",
    "seq": 5,
    "sent_at": 1.5,
    "window_start": 1800000000,
    "window_s": 60,
    "roles": {
        "production": {
            "model": "digits",
            "version": 3,
            "count": 10,
            "errors": 0,
            "latency_ms": [1, 2] + [0] * (N_LATENCY_BUCKETS - 2),
            "features": {"a": [1]},
        }
    },
    "system": {"cpu": 0.5},
    "extra": "ignored",
}


def both(payload: bytes):
    results = []
    for f in (lambda p: decode(Kind.TELEMETRY, p), decode_telemetry):
        try:
            results.append(f(payload))
        except ProtocolError:
            results.append("refused")
    return results


def test_a_good_window_decodes_identically():
    shared_msg, fast = both(json.dumps(GOOD).encode())
    assert fast == shared_msg


@pytest.mark.parametrize(
    "change",
    [
        {"schema": 2},
        {"device_id": "a/b"},
        {"device_id": "x" * 65},
        {"seq": -1},
        {"seq": "1"},
        {"seq": True},
        {"window_s": -1},
        {"sent_at": None},
        {"roles": {"prod": {}}},
        {"roles": []},
        {"window_start": "now"},
    ],
)
def test_invalid_windows_are_refused_by_both(change):
    assert both(json.dumps({**GOOD, **change}).encode()) == ["refused", "refused"]


@pytest.mark.parametrize("payload", [b"", b"{", b"[]", b"null", b"\xff", b'{"schema": 1}', b"NaN"])
def test_garbage_is_refused_by_both(payload):
    assert both(payload) == ["refused", "refused"]


@pytest.mark.parametrize("count", [1.5, True, None, [1.0], ["7"], {"x": 0.5}])  # a top-level string: check_summary
def test_counts_must_be_integers(count):
    payload = json.dumps({**GOOD, "roles": {"production": {"model": "m", "version": 1, "count": count}}}).encode()
    with pytest.raises(ProtocolError):
        decode_telemetry(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(sorted(GOOD)), json_values, max_size=4))
def test_fast_decoder_never_accepts_what_shared_refuses(change):
    shared_msg, fast = both(json.dumps({**GOOD, **change}).encode())
    if shared_msg == "refused":
        assert fast == "refused"
    elif fast != "refused":
        assert fast == shared_msg


def test_compact_payloads_decode_identically():
    from shared.messages import encode_compact

    payload = encode_compact(GOOD)
    assert payload[:1] != b"{"
    shared_msg, fast = both(payload)
    assert fast == shared_msg != "refused"
