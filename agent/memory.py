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

ARENA_MAX = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


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
