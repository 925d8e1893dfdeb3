"""Fast parsing of telemetry windows on the controller, validated by the shared reader.

Telemetry is the controller's hot path: ``json.loads`` alone costs ~90 µs for
a 3 KB window. msgspec parses the same JSON in C; the validation is then the
one and only ``shared.messages.Telemetry.read``, so the controller accepts and
refuses exactly what the protocol says (a unit test checks both paths agree).
Compact payloads (``shared.compact``, told apart by their first byte) are
inflated first, with the same bound. Status and events are rare and use
``shared.messages.decode`` directly.

Wire format v2 (``shared.wire``, first byte ``0xE2``) carries one or more
windows per message, validated by its compiled msgspec schema;
:func:`decode_telemetry_many` returns every window of a payload in any format.
"""

from __future__ import annotations

import msgspec

from shared import compact, wire
from shared.errors import SchemaError
from shared.messages import MAX_INFLATED_BYTES, MAX_PAYLOAD_BYTES, Telemetry
from shared.schema import Reader

_decoder = msgspec.json.Decoder()


def decode_telemetry_many(payload: bytes) -> list[Telemetry]:
    """The windows of a telemetry payload (v2 or v1); SchemaError (a ProtocolError) naming what is wrong."""
    if wire.is_v2(payload):
        return wire.to_telemetry(wire.decode(payload))
    return [decode_telemetry(payload)]


def decode_telemetry(payload: bytes) -> Telemetry:
    """Validate a telemetry payload of one window; raise SchemaError (a ProtocolError) naming what is wrong."""
    if wire.is_v2(payload):
        windows = decode_telemetry_many(payload)
        if len(windows) != 1:
            raise SchemaError(f"expected one telemetry window, got {len(windows)}")
        return windows[0]
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SchemaError(f"payload too large: {len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
    if payload[:1] == bytes([compact.ZLIB_MAGIC]):
        payload = compact.decompress(payload, MAX_INFLATED_BYTES)
    try:
        data = _decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError) as exc:  # msgspec raises RecursionError on deep nesting
        raise SchemaError(f"payload is not valid JSON: {exc}") from None
    return Telemetry.read(Reader(data))
