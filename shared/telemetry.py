"""Telemetry summaries: everything is a sum, so windows merge exactly.

A role summary (one per model role per window) looks like::

    {"model": "digits", "version": 3,            # identity: not summed
     "count": 6000, "errors": 2,                 # ints: added
     "latency_ms": [0, 3, 5800, 190, ...],       # counts per LATENCY_EDGES_MS bucket: added element-wise
     "predictions": [601, 588, ...],             # counts per class / reference bin
     "features": {"px0": [..], ...},             # counts over the manifest's reference bin edges
     "shadow": {"agree": 5900, "disagree": 100},
     "labels": {"count": 40, "correct": 38}}

``merge`` adds two such summaries (ints add, lists add element-wise, dicts
merge by key); identity fields must agree. This module is pure and is used by
both the agent (building windows) and the controller (aggregating them).
"""

from __future__ import annotations

import bisect
from typing import Any

IDENTITY_KEYS = frozenset({"model", "version"})
# Fixed log-spaced latency bucket upper edges in milliseconds, ~19% apart
# (2**0.25): a percentile read from the buckets is within that relative error.
LATENCY_EDGES_MS: tuple[float, ...] = tuple(round(0.01 * 2 ** (i / 4), 6) for i in range(0, 4 * 20 + 1))
N_LATENCY_BUCKETS = len(LATENCY_EDGES_MS) + 1  # the last bucket is overflow


def latency_bucket(ms: float) -> int:
    """Index of the bucket holding ``ms`` (bucket i holds (edge[i-1], edge[i]])."""
    return bisect.bisect_left(LATENCY_EDGES_MS, ms)


class MergeError(ValueError):
    """Two summaries cannot be merged (different identity or shapes)."""


def merge(a: Any, b: Any, path: str = "$") -> Any:
    if isinstance(a, bool) or isinstance(b, bool):
        raise MergeError(f"{path}: booleans are not summable")
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            raise MergeError(f"{path}: list lengths differ ({len(a)} vs {len(b)})")
        return [merge(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True))]
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            if k in IDENTITY_KEYS:
                if k in out and out[k] != v:
                    raise MergeError(f"{path}.{k}: {out[k]!r} != {v!r}")
                out[k] = v
            else:
                out[k] = merge(out[k], v, f"{path}.{k}") if k in out else v
        return out
    raise MergeError(f"{path}: cannot merge {type(a).__name__} with {type(b).__name__}")


def percentile_ms(buckets: list[int], q: float) -> float | None:
    """Upper edge of the bucket holding quantile ``q`` (0..1); None if empty."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank and n:
            return LATENCY_EDGES_MS[i] if i < len(LATENCY_EDGES_MS) else float("inf")
    return float("inf")
