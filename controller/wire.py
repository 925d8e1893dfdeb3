"""Fast decoding of telemetry windows on the controller (msgspec), equivalent to ``shared.messages.decode``.

Telemetry is the controller's hot path: ``json.loads`` alone costs ~90 µs for
a 3 KB window with a few hundred counts, more than the whole budget per
message. msgspec decodes and type-checks the same JSON in C. The rules are the
ones of ``shared.messages.Telemetry.read`` plus the summary shape the
aggregator needs (counts are integers, never floats or booleans); a unit test
checks both decoders agree on valid and invalid payloads. Status and events are
rare and keep using ``shared.messages.decode``.
"""

from __future__ import annotations

import math
from typing import Any, Union

import msgspec

from shared.errors import ProtocolError, SchemaError
from shared.messages import MAX_PAYLOAD_BYTES, SCHEMA_VERSION, Telemetry, validate_role
from shared.topics import validate_device_id

# A role summary: identity strings and counts nested up to three levels.
_Leaf = Union[int, list[int]]  # noqa: UP007 - msgspec needs typing.Union here
SummaryValue = Union[str, int, list[int], dict[str, Union[int, list[int], dict[str, _Leaf]]]]  # noqa: UP007


class _Window(msgspec.Struct):
    schema: int
    device_id: str
    seq: int
    sent_at: float
    window_start: float
    window_s: float
    roles: Union[dict[str, dict[str, SummaryValue]], None] = None  # noqa: UP007
    system: Union[dict[str, Any], None] = None  # noqa: UP007


_decoder = msgspec.json.Decoder(_Window)


def decode_telemetry(payload: bytes) -> Telemetry:
    """Validate a telemetry payload; raise SchemaError (a ProtocolError) naming what is wrong."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SchemaError(f"payload too large: {len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
    try:
        w = _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise SchemaError(f"telemetry: {exc}") from None
    except msgspec.DecodeError as exc:
        raise SchemaError(f"payload is not valid JSON: {exc}") from None
    if w.schema != SCHEMA_VERSION:
        raise SchemaError(f"$.schema: unsupported schema version {w.schema}, expected {SCHEMA_VERSION}")
    if len(w.device_id) > 64:
        raise SchemaError("$.device_id: expected a string of at most 64 characters")
    try:
        validate_device_id(w.device_id)
    except ProtocolError as exc:
        raise SchemaError(f"$.device_id: {exc}") from None
    if w.seq < 0:
        raise SchemaError(f"$.seq: expected an integer >= 0, got {w.seq}")
    for name in ("sent_at", "window_start", "window_s"):
        if not math.isfinite(getattr(w, name)):
            raise SchemaError(f"$.{name}: expected a finite number")
    if w.window_s < 0:
        raise SchemaError(f"$.window_s: expected a number >= 0, got {w.window_s}")
    roles = w.roles or {}
    for role in roles:
        validate_role(role, f"$.roles.{role}")
    return Telemetry(
        device_id=w.device_id,
        seq=w.seq,
        sent_at=w.sent_at,
        window_start=w.window_start,
        window_s=w.window_s,
        roles=roles,
        system=w.system or {},
    )
