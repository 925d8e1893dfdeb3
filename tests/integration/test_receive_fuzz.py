"""Fuzz the controller's whole receive path (every device topic) with hypothesis.

Properties: the decoders raise nothing but ``ProtocolError`` on any bytes or any
JSON-shaped document (deep nesting, huge numbers, duplicate keys, odd strings);
the paho message callback, with the real ingestor on a real database behind it,
lets nothing escape, acknowledges every message and counts it once.
"""

from __future__ import annotations

import json
import string
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session

from controller.core.metrics import Metrics
from controller.core.tables import Device
from controller.telemetry.batch import TelemetryIngest
from controller.telemetry.decode import decode_telemetry
from controller.telemetry.ingest import Ingestor
from controller.telemetry.receiver import ControllerMqtt
from shared import compact
from shared.errors import ProtocolError
from shared.messages import Telemetry, decode
from shared.topics import Kind

pytestmark = [pytest.mark.integration]
DEVICE = "fuzz-1"
KEYS = [
    "schema", "device_id", "seq", "sent_at", "state", "kind", "severity", "message", "detail", "roles", "production",
    "window_start", "window_s", "model", "version", "count", "errors", "latency_ms", "predictions", "features",
    "shadow", "labels", "counters", "system", "agent", "models", "sha256", "runtime", "since", "hardware", "ota",
]  # fmt: skip
numbers = st.one_of(
    st.integers(),
    st.integers(0, 4000).map(lambda n: 10**n),  # up to 4001 digits (JSON text beyond that: the b"9" * n payloads)
    st.integers(0, 4000).map(lambda n: -(10**n)),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, -1, 2**63, 2**64, 1e308]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20), st.sampled_from([DEVICE, "online", "info", "[/]"]))
json_values = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=6), st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), kids, max_size=8)
    ),
    max_leaves=40,
)
documents = st.fixed_dictionaries(
    {"schema": st.sampled_from([1, 1, 2, "1"]), "device_id": st.sampled_from([DEVICE, DEVICE, "other", ""])},
    optional={k: json_values for k in KEYS if k not in ("schema", "device_id")},
)


def nest(depth: int, leaf: str = "1") -> bytes:
    return ("[" * depth + leaf + "]" * depth).encode()


def as_bytes(doc: Any, how: int) -> bytes:
    text = json.dumps(doc, allow_nan=True, default=str)
    if how == 1:  # a duplicate key in front of the real ones
        text = '{"schema":7,' + text[1:] if text.startswith("{") and len(text) > 2 else text
    raw = text.encode()
    if how == 2:
        raw = compact.compress(raw)
    if how == 3:
        raw = raw[: max(len(raw) // 2, 1)] + b"\xff\xc3\x28"  # cut and invalid UTF-8
    return raw


def v2(count: int, flips: list[tuple[int, int]], windows: int, codec: int) -> bytes:
    """A real v2 message (wire.encode), then bytes of its counts flipped below the schema."""
    import zlib

    import msgspec

    from shared import wire
    from shared.telemetry import N_LATENCY_BUCKETS

    lat = [0] * N_LATENCY_BUCKETS
    lat[3] = count
    summary = {"model": "m", "version": 1, "count": count, "errors": 0, "latency_ms": lat, "predictions": [count, 0]}
    ws = [
        Telemetry(
            device_id=DEVICE, seq=10 + k, sent_at=1.0, window_start=time.time(), window_s=60.0, roles={"production": summary}
        )
        for k in range(windows)
    ]
    raw = msgspec.msgpack.decode(wire._inflate(wire.encode(ws)))
    counts = bytearray(raw[4][0][5][0][4])
    for at, value in flips:
        if counts:
            counts[at % len(counts)] = value
    raw[4][0][5][0][4] = bytes(counts)
    body = msgspec.msgpack.encode(raw)
    return bytes([wire.MAGIC_V2]) + zlib.compress(body) if codec else bytes([wire.MAGIC_V2]) + body


payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda b: b"\xe2" + b, st.binary(max_size=300)),
    st.builds(
        v2,
        st.integers(0, 2**40),
        st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3),
        st.integers(1, 3),
        st.integers(0, 1),
    ),
    st.builds(as_bytes, documents, st.integers(0, 3)),
    st.builds(nest, st.integers(1, 60_000)),
    st.builds(lambda d: b'{"a":' * d + b"1" + b"}" * d, st.integers(1, 30_000)),
    st.builds(lambda n: b'{"schema":1,"seq":' + b"9" * n + b"}", st.integers(1, 6000)),
    st.text(alphabet=string.printable + "\u2028\ud7ff\U0001f600", max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
kinds = st.sampled_from([Kind.TELEMETRY, Kind.STATUS, Kind.EVENTS])


@given(payloads, kinds)
@settings(max_examples=400)
def test_decoders_raise_only_protocol_errors(payload: bytes, kind: Kind) -> None:
    for fn in (decode_telemetry, lambda p: decode(kind, p)):
        try:
            fn(payload)
        except ProtocolError:
            pass


@pytest.fixture
def receiver(engine):
    with Session(engine) as s:
        s.add(Device(id=DEVICE))
        s.commit()
    metrics = Metrics()
    tele = TelemetryIngest(engine, metrics, batch_max=50, linger_s=0.0)
    tele.start()
    m = ControllerMqtt(
        "127.0.0.1",
        1,
        Ingestor(engine, metrics, tele),
        on_malformed=lambda k: metrics.count(k if k in ("status", "events", "telemetry") else "other", "malformed"),
    )
    acks: list[int] = []
    m._client.ack = lambda mid, qos: acks.append(mid)  # type: ignore[method-assign]
    yield m, metrics, tele, acks
    tele.stop()


@given(payload=payloads, kind=kinds, topic_device=st.sampled_from([DEVICE, DEVICE, "other", "bad/+", "\udcff"]))
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_message_callback_survives_any_payload_and_acknowledges_it(
    receiver, payload: bytes, kind: Kind, topic_device: str
) -> None:
    m, _, _, acks = receiver
    topic = f"edgefleet/v1/dev/{topic_device}/{kind.value}".encode("utf-8", "surrogateescape")
    msg = mqtt.MQTTMessage(mid=len(acks) + 1, topic=topic)
    msg.payload, msg.qos = payload, 1
    n = len(acks)
    m._client.on_message(m._client, None, msg)  # the guarded callback paho calls
    assert m.decoder_failures == 0, payload[:200]
    assert m.guard.errors == {}
    deadline = time.monotonic() + 10  # telemetry is acknowledged once its batch has committed
    while len(acks) == n and time.monotonic() < deadline:
        time.sleep(0.002)
    assert len(acks) == n + 1, "every message is acknowledged exactly once"
