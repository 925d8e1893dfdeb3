"""Process-wide memory settings the agent applies to itself at start.

glibc gives each thread that allocates its own malloc arena (up to 8 per core),
and memory freed in one arena cannot serve another. The agent runs about ten
mostly idle threads (MQTT, updater, local API, telemetry), so it caps the arenas
at :data:`ARENA_MAX`, as ``MALLOC_ARENA_MAX=2`` in the systemd unit does, but in
the process itself, so that every way of starting the agent gets it. An operator's
``MALLOC_ARENA_MAX`` in the environment wins. A no-op off glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

ARENA_MAX = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def trim() -> bool:
    """Give free heap pages back to the system (glibc ``malloc_trim``); True if any were released.

    Python frees objects into glibc's heaps, and bulk numpy work leaves free pages between
    live chunks that glibc would keep resident for good; trimming now and then keeps a
    long-running agent's resident size flat. A no-op off glibc.
    """
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False


def _malloc_trim() -> Any:
    global _TRIM
    if _TRIM is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            fn = libc.malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            _TRIM = fn
        except (OSError, AttributeError):
            _TRIM = False
    return _TRIM or None


_TRIM: Any = None  # libc's malloc_trim once looked up (False: none here)


def limit_malloc_arenas(n: int = ARENA_MAX) -> bool:
    """Cap glibc's malloc arenas at ``n``; True if applied. Call before starting threads."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False  # read by glibc itself at start
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, n))
