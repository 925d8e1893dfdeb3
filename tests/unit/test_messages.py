import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import SchemaError
from shared.messages import MAX_PAYLOAD_BYTES, Event, Status, decode, encode
from shared.topics import Kind

pytestmark = pytest.mark.unit

SHA = "ab" * 32


def status(**over):
    msg = {
        "schema": 1,
        "device_id": "pi-1",
        "seq": 3,
        "sent_at": 1.5,
        "state": "online",
        "agent_version": "0.1.0",
        "models": {"production": {"model": "digits", "version": 2, "sha256": SHA, "runtime": "onnx", "since": 1.0}},
    }
    msg.update(over)
    return json.dumps(msg).encode()


def test_valid_status_decodes():
    s = decode(Kind.STATUS, status())
    assert isinstance(s, Status)
    assert s.models["production"].version == 2
    assert decode(Kind.STATUS, encode(s)) == s


def test_event_round_trip():
    e = Event(device_id="pi-1", seq=1, sent_at=2.0, kind="ota.rejected", severity="error", message="bad", detail={"x": 1})
    assert decode(Kind.EVENTS, encode(e)) == e


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (status(schema=2), "unsupported schema version 2, expected 1"),
        (status(seq="3"), r"\$.seq: expected an integer"),
        (status(seq=-1), r"\$.seq: expected an integer >= 0"),
        (status(state="sleeping"), "expected one of online, offline"),
        (status(device_id="a/b"), "Invalid device_id"),
        (status(models={"boss": {}}), "invalid role"),
        (status(models={"production": {"model": "m", "version": 1, "sha256": "zz", "runtime": "onnx", "since": 1}}), "sha256"),
        (status(sent_at=float("nan")), "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b"[]", "expected an object"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
def test_malformed_status_gives_clear_error(payload, match):
    with pytest.raises(SchemaError, match=match):
        decode(Kind.STATUS, payload)


def test_missing_field_is_named():
    msg = json.loads(status())
    del msg["seq"]
    with pytest.raises(SchemaError, match=r"\$.seq: missing required field"):
        decode(Kind.STATUS, json.dumps(msg).encode())


def test_oversized_payload_rejected_unread():
    with pytest.raises(SchemaError, match="payload too large"):
        decode(Kind.TELEMETRY, b" " * (MAX_PAYLOAD_BYTES + 1))


def test_no_device_schema_for_desired():
    with pytest.raises(SchemaError, match="no device message schema"):
        decode(Kind.DESIRED, b"{}")


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise_anything_but_schema_error(data):
    for kind in (Kind.STATUS, Kind.TELEMETRY, Kind.EVENTS):
        try:
            decode(kind, data)
        except SchemaError:
            pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(
            ["schema", "device_id", "seq", "sent_at", "state", "models", "kind", "severity", "roles", "window_s", "window_start"]
        ),
        json_values,
    )
)
def test_arbitrary_json_objects_never_crash_the_decoder(obj):
    data = json.dumps(obj).encode()
    for kind in (Kind.STATUS, Kind.TELEMETRY, Kind.EVENTS):
        try:
            decode(kind, data)
        except SchemaError:
            pass


@pytest.mark.parametrize(
    ("features", "match"),
    [
        ({"a": [1, 2], "b": [True]}, r"features\.b\[0\]: expected a non-negative integer"),
        ({"a": [1, -1]}, r"features\.a\[1\]: expected a non-negative integer"),
        ({"a": [1.0]}, r"features\.a\[0\]"),
        ({"a": 3}, r"features\.a: expected a list"),
        ({f"f{i}": [] for i in range(4097)}, "at most 4096 features"),
    ],
)
def test_feature_histograms_are_checked_with_a_precise_error(features, match):
    from shared.telemetry import N_LATENCY_BUCKETS

    role = {"model": "m", "version": 1, "count": 1, "errors": 0, "latency_ms": [0] * N_LATENCY_BUCKETS, "features": features}
    window = {
        "schema": 1,
        "device_id": "pi-1",
        "seq": 1,
        "sent_at": 1.0,
        "window_start": 1.0,
        "window_s": 60,
        "roles": {"production": role},
    }
    with pytest.raises(SchemaError, match=match):
        decode(Kind.TELEMETRY, json.dumps(window).encode())
    role["features"] = {"a": [0, 5], "b": []}
    assert decode(Kind.TELEMETRY, json.dumps(window).encode()).roles["production"]["features"] == {"a": [0, 5], "b": []}


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_constants_are_refused(constant):
    with pytest.raises(SchemaError, match="not valid JSON"):
        decode(Kind.STATUS, status().replace(b'"sent_at": 1.5', b'"sent_at": ' + constant))


def test_the_writer_runs_the_readers_checks():
    good = Status(device_id="pi-1", seq=1, sent_at=1.0, state="online")
    assert decode(Kind.STATUS, encode(good)) == good
    with pytest.raises(SchemaError, match="state"):
        Status(device_id="pi-1", seq=1, sent_at=1.0, state="asleep").to_payload()
    with pytest.raises(SchemaError, match="severity"):
        encode(Event(device_id="pi-1", seq=1, sent_at=1.0, kind="x", severity="fatal"))
    with pytest.raises(SchemaError, match="device_id"):
        Event(device_id="no/slashes", seq=1, sent_at=1.0, kind="x").to_payload()
