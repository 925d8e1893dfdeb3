"""Compact telemetry payloads: deflate (zlib) with a fixed preset dictionary.

Measured on a real 60 s window of the digits model (64 features x 10 bins,
10 classes, 82 latency buckets) at 100 inferences/s: canonical JSON 3533 bytes,
CBOR 2379, zlib(JSON) 1515, zlib(CBOR) 1548, zlib(JSON) with this dictionary
1212. See docs/adr/0020-telemetry-payload-compaction.md for the choice.

The dictionary is the canonical JSON of an empty v1 window, so the keys and
long runs of zeros every window repeats cost almost nothing. It is part of the
wire format: never edit ``ZDICT_V1`` (a unit test pins its adler32, which zlib
also writes into every stream's header); a new dictionary needs a new id.
Decoding is bounded, so a deflate bomb is refused rather than inflated.
"""

from __future__ import annotations

import zlib

from shared.errors import SchemaError


def _zeros(n: int) -> str:
    return "[" + ",".join(["0"] * n) + "]"


def _role(name: str) -> str:
    return (
        f'"{name}":{{"count":0,"errors":0,"features":{{"feature":{_zeros(10)}}},"labels":{{"correct":0,"count":0}},'
        f'"latency_ms":{_zeros(82)},"model":"","predictions":{_zeros(10)},"samples":0,'
        f'"shadow":{{"agree":0,"disagree":0}},"version":1}}'
    )


ZDICT_V1: bytes = (
    '{"agent":{"boot":"","version":"","window":0},"counters":{"capture_bytes":0,"capture_samples":0,'
    '"desired_received":0,"desired_rejected":0,"messages_malformed":0,"windows_dropped":0},"device_id":"",'
    f'"roles":{{{_role("canary")},{_role("production")},{_role("shadow")}}},"schema":1,"sent_at":0,"seq":0,'
    '"system":{"cpu_percent":0.0,"disk_percent":0.0,"load1":0.0,"mem_percent":0.0,"temp_c":0.0},'
    '"window_s":60.0,"window_start":0}'
).encode()
ZDICT_V1_ID = zlib.adler32(ZDICT_V1)
ZLIB_MAGIC = 0x78  # first byte of a zlib stream with a 32 KiB window


def compress(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, ZDICT_V1)
    return c.compress(data) + c.flush()


def decompress(payload: bytes, max_bytes: int) -> bytes:
    """Inflate a zlib stream made by :func:`compress`; refuse more than ``max_bytes`` of output."""
    if len(payload) < 6 or payload[0] != ZLIB_MAGIC or not payload[1] & 0x20:
        raise SchemaError("compressed payload: expected a zlib stream with the v1 preset dictionary")
    dict_id = int.from_bytes(payload[2:6], "big")
    if dict_id != ZDICT_V1_ID:
        raise SchemaError(f"compressed payload: unknown preset dictionary id {dict_id}, expected {ZDICT_V1_ID}")
    d = zlib.decompressobj(15, zdict=ZDICT_V1)
    try:
        out = d.decompress(payload, max_bytes + 1)
    except zlib.error as exc:
        raise SchemaError(f"compressed payload is corrupt: {exc}") from None
    if len(out) > max_bytes or d.unconsumed_tail:
        raise SchemaError(f"compressed payload inflates beyond {max_bytes} bytes")
    if not d.eof:
        raise SchemaError("compressed payload is truncated")
    return out
