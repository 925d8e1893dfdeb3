"""Binary tensor frames for the local API: the same Unix socket as the JSON lines.

A frame is ``MAGIC`` (4 bytes; its first byte, NUL, never starts a JSON line), the
header length as a little-endian u32, a UTF-8 JSON header object, then the raw
little-endian array bytes, one array after another in the order the header lists them
(``"tensors": [{"name", "dtype", "shape"}, ...]``). The byte count of the data is
implied by the dtypes and shapes, so nothing else is needed to find the next frame.
Pure functions: the server, the client and the benchmark's echo server share them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

MAGIC = b"\x00EF1"
PREFIX = struct.Struct("<4sI")  # magic, header length
MAX_HEADER_BYTES = 64 * 1024
MAX_DIMS = 8
# dtype name -> little-endian numpy dtype; the names the manifests use
DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in (
        ("float32", "<f4"),
        ("float64", "<f8"),
        ("int8", "i1"),
        ("uint8", "u1"),
        ("int16", "<i2"),
        ("int32", "<i4"),
        ("int64", "<i8"),
    )
}
_NAMES = {dt: name for name, dt in DTYPES.items()}


class FrameError(ValueError):
    """A frame that cannot be read; the byte stream is out of step and the connection must close."""


def tensor_specs(header: dict[str, Any], max_bytes: int) -> list[tuple[str, np.dtype[Any], tuple[int, ...], int]]:
    """Check the header's ``tensors`` list: per tensor name, dtype, shape and byte count."""
    tensors = header.get("tensors", [])
    if not isinstance(tensors, list):
        raise FrameError("header 'tensors' must be a list")
    out, total = [], 0
    for i, t in enumerate(tensors):
        if not isinstance(t, dict):
            raise FrameError(f"tensor {i}: expected an object with name, dtype and shape")
        name, dtype, shape = t.get("name", ""), t.get("dtype"), t.get("shape")
        if not isinstance(name, str):
            raise FrameError(f"tensor {i}: name must be a string")
        dt = DTYPES.get(dtype) if isinstance(dtype, str) else None
        if dt is None:
            raise FrameError(f"tensor {i}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(type(d) is int and 0 <= d <= max_bytes for d in shape):
            raise FrameError(f"tensor {i}: shape must be a list of at most {MAX_DIMS} non-negative integers, got {shape!r}")
        size = dt.itemsize
        for d in shape:
            size *= d
        total += size
        if total > max_bytes:
            raise FrameError(f"frame data larger than {max_bytes} bytes")
        out.append((name, dt, tuple(shape), size))
    return out


def split_arrays(data: bytes, specs: list[tuple[str, np.dtype[Any], tuple[int, ...], int]]) -> dict[str, np.ndarray]:
    """Views of ``data`` (read-only, no copy) as the arrays the specs describe."""
    out, offset = {}, 0
    for name, dt, shape, size in specs:
        out[name] = np.frombuffer(data, dtype=dt, count=size // dt.itemsize, offset=offset).reshape(shape)
        offset += size
    return out


def encode(header: dict[str, Any], arrays: Iterable[tuple[str, np.ndarray]] = ()) -> bytes:
    """One frame: ``header`` plus ``tensors`` describing ``arrays``, then their bytes (one copy)."""
    parts: list[Any] = []
    tensors = []
    for name, arr in arrays:
        le = arr.dtype.newbyteorder("<")
        dt = _NAMES.get(le)
        if dt is None:
            raise ValueError(f"array {name!r}: dtype {arr.dtype} is not one of {sorted(DTYPES)}")
        if arr.dtype != le:
            arr = arr.astype(le)
        tensors.append({"name": name, "dtype": dt, "shape": list(arr.shape)})
        parts.append(arr.data if arr.flags.c_contiguous else np.ascontiguousarray(arr).data)
    if tensors:
        header = {**header, "tensors": tensors}
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((PREFIX.pack(MAGIC, len(head)), head, *parts))


def read_frame(read: Any, max_bytes: int, *, magic_read: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """Read one frame with ``read(n)`` (a buffered file's ``read``); None at a clean end of stream.

    ``magic_read``: the caller already consumed the first byte of the magic. Raises
    :class:`FrameError` on a truncated or malformed frame.
    """
    first = read(PREFIX.size - 1 if magic_read else PREFIX.size)
    if not first:
        return None
    raw = MAGIC[:1] + first if magic_read else first
    if len(raw) != PREFIX.size:
        raise FrameError("truncated frame prefix")
    magic, n = PREFIX.unpack(raw)
    if magic != MAGIC:
        raise FrameError(f"bad frame magic {magic!r}, expected {MAGIC!r}")
    if n > MAX_HEADER_BYTES:
        raise FrameError(f"frame header of {n} bytes is larger than {MAX_HEADER_BYTES}")
    head = read(n)
    if len(head) != n:
        raise FrameError(f"truncated frame header: {len(head)} of {n} bytes")
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise FrameError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("frame header must be a JSON object")
    specs = tensor_specs(header, max_bytes)
    size = sum(s[3] for s in specs)
    data = read(size) if size else b""
    if len(data) != size:
        raise FrameError(f"truncated frame data: {len(data)} of {size} bytes")
    return header, split_arrays(data, specs)
