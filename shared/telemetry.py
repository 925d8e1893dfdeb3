"""Telemetry summaries: everything is a sum, so windows merge exactly.

A role summary (one per model role per window) looks like::

    {"model": "digits", "version": 3,            # identity: not summed
     "count": 6000, "errors": 2,                 # ints: added (count = calls, errors = failed calls)
     "samples": 6000,                            # rows predicted (a call may carry a batch)
     "latency_ms": [0, 3, 5800, 190, ...],       # counts per LATENCY_EDGES_MS bucket: added element-wise
     "predictions": [601, 588, ...],             # counts per class (or per prediction bin, see below)
     "features": {"px0": [..], ...},             # counts over the manifest's reference bin edges, see below
     "shadow": {"agree": 5900, "disagree": 100}, # shadow model's top class agrees with this role's
     "labels": {"count": 40, "correct": 38},     # ground truth reported by local apps
     "confidence": [0, 0, ..., 310, 5400],       # top-class probability per CONFIDENCE_BINS bin
     "quality": {"nan": [..], "inf": [..],       # per feature (reference order): non-finite inputs
                 "out_of_range": [..]},          #   and inputs outside the feature spec's range
     "confusion": [[..], ..]}                    # shadow role only: [production class][shadow class] counts

Histograms over reference bin edges (``features`` and, for regression outputs,
``predictions``) have ``len(edges) + 1`` counts: index 0 counts values below
``edges[0]``, index ``i`` counts ``edges[i-1] <= v < edges[i]`` (the last
reference bin also holds ``v == edges[-1]``, as in ``numpy.histogram``), and the
last index counts values above ``edges[-1]``. So ``counts[1:-1]`` lines up with
the manifest's reference counts and out-of-range inputs stay visible.

``confidence`` (classification) counts each prediction's top-class probability
in ``CONFIDENCE_BINS`` equal bins over [0, 1] (:func:`confidence_bin`); the
controller estimates accuracy from it where labels are missing. ``quality``
counts bad input values per feature, in the order of the manifest's reference
features. Both are optional: older agents do not send them.

The ``shadow`` role's summary describes the comparison of the shadow model with
production on production's inputs (ADR 0067): ``shadow.agree`` / ``disagree``
(top classes), ``shadow.dropped`` (comparisons lost because the shadow queue was
full: production is never slowed down), ``shadow.sampled_out`` (production
inferences the desired state's ``sampling.shadow_rate`` left uncompared), and
``confusion``, a square matrix over the shadow model's classes (at most
``MAX_CONFUSION_CLASSES``): row = production's top class, column = the shadow
model's. All optional; older agents send none of them.

Latency buckets are fixed and log-spaced: bucket ``i`` holds
``(LATENCY_EDGES_MS[i-1], LATENCY_EDGES_MS[i]]`` and the last bucket is
overflow. :func:`percentile_ms` returns the upper edge of the bucket that holds
the nearest-rank quantile, so for a true value ``v`` within the edges the
estimate ``e`` satisfies ``v <= e < v * LATENCY_RATIO`` (at most 19 % high);
below the first edge it returns the first edge.

A window message's ``counters`` object (agent-level counts such as rejected
desired states) is summable too; ``system`` holds gauges and is not merged.

``merge`` adds two such summaries (ints add, lists add element-wise, dicts
merge by key); identity fields must agree. This module is pure and is used by
both the agent (building windows) and the controller (aggregating them).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from typing import Any

IDENTITY_KEYS = frozenset({"model", "version"})
# Fixed log-spaced latency bucket upper edges in milliseconds, ~19% apart
# (2**0.25): a percentile read from the buckets is within that relative error.
LATENCY_RATIO = 2**0.25
LATENCY_EDGES_MS: tuple[float, ...] = tuple(round(0.01 * 2 ** (i / 4), 6) for i in range(0, 4 * 20 + 1))
N_LATENCY_BUCKETS = len(LATENCY_EDGES_MS) + 1  # the last bucket is overflow
# Agent-level counters every window carries (all sums).
COUNTERS = (
    "desired_received",  # desired-state messages received
    "desired_rejected",  # ... of which refused (bad signature, garbage, replay, expired, ...)
    "messages_malformed",  # messages the link could not even hand over (wrong topic, handler crash)
    "windows_dropped",  # telemetry windows dropped because the on-disk queue was full
    "events_dropped",  # device events dropped because the on-disk queue was full (ADR 0078)
    "capture_samples",  # inputs captured for upload
    "capture_bytes",  # bytes of those samples
)


CONFIDENCE_BINS = 20  # equal-width bins of the top-class probability over [0, 1]
MAX_CONFUSION_CLASSES = 64  # a shadow confusion matrix is sent for models with at most this many classes


def confidence_bin(p: float) -> int:
    """Bin of a top-class probability (values outside [0, 1] go to the end bins)."""
    if not p > 0:  # also NaN
        return 0
    return min(int(p * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)


def latency_bucket(ms: float) -> int:
    """Index of the bucket holding ``ms`` (bucket i holds (edge[i-1], edge[i]])."""
    return bisect.bisect_left(LATENCY_EDGES_MS, ms)


def bin_index(edges: Sequence[float], value: float) -> int:
    """Index of ``value`` in a histogram of ``len(edges) + 1`` counts (see module doc)."""
    if value == edges[-1]:
        return len(edges) - 1
    return bisect.bisect_right(edges, value)


def empty_role_summary(model: str, version: int, n_predictions: int, features: dict[str, int]) -> dict[str, Any]:
    """A zero summary; ``features`` maps feature name to its number of counts."""
    return {
        "model": model,
        "version": version,
        "count": 0,
        "errors": 0,
        "samples": 0,
        "latency_ms": [0] * N_LATENCY_BUCKETS,
        "predictions": [0] * n_predictions,
        "features": {name: [0] * n for name, n in features.items()},
        "shadow": {"agree": 0, "disagree": 0},
        "labels": {"count": 0, "correct": 0},
    }


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


def derive(summary: dict[str, Any]) -> dict[str, float | None]:
    """Figures an operator reads, derived from a (possibly merged) role summary."""
    lat = summary.get("latency_ms", [])
    count = summary.get("count", 0)
    labels = summary.get("labels", {})
    shadow = summary.get("shadow", {})
    compared = shadow.get("agree", 0) + shadow.get("disagree", 0)
    return {
        "p50_ms": percentile_ms(lat, 0.50),
        "p95_ms": percentile_ms(lat, 0.95),
        "p99_ms": percentile_ms(lat, 0.99),
        "error_rate": summary.get("errors", 0) / count if count else None,
        "accuracy": labels.get("correct", 0) / labels["count"] if labels.get("count") else None,
        "shadow_agreement": shadow.get("agree", 0) / compared if compared else None,
    }


def _valid_edges(value: Any) -> bool:
    """Strictly increasing finite numbers, at least two (the agent's rule for usable bin edges)."""
    if not isinstance(value, list) or len(value) < 2:
        return False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return False
    return all(a < b for a, b in itertools.pairwise(value))


def summary_shape(reference: Any, output_shape: Sequence[Any] | None) -> tuple[dict[str, int], int]:
    """The histogram shape a manifest fixes: ``({feature: n_bins}, n_predictions)``.

    Pure and shared: the agent builds its windows with this shape and the
    controller refuses summaries of any other, so the shape comes from the
    signed manifest and never from whichever device reported first. A feature
    list with any unusable ``bin_edges`` or a repeated name turns feature
    histograms off (``{}``).
    """
    ref = reference if isinstance(reference, dict) else {}
    features: dict[str, int] = {}
    feats = ref.get("features")
    for i, f in enumerate(feats if isinstance(feats, list) else []):
        edges = f.get("bin_edges") if isinstance(f, dict) else None
        if not _valid_edges(edges):
            features = {}
            break
        assert isinstance(f, dict) and isinstance(edges, list)
        name = str(f.get("name", f"f{i}"))
        if name in features:  # two features of one name cannot be told apart in a summary
            features = {}
            break
        features[name] = len(edges) + 1
    preds = ref.get("predictions") if isinstance(ref.get("predictions"), dict) else {}
    classes = preds.get("classes") if isinstance(preds, dict) else None
    n_classes = len(classes) if isinstance(classes, list) and classes else 0
    if n_classes:
        return features, n_classes
    pred_edges = preds.get("bin_edges") if isinstance(preds, dict) else None
    if _valid_edges(pred_edges):
        assert isinstance(pred_edges, list)
        return features, len(pred_edges) + 1
    last = output_shape[-1] if output_shape else None
    return features, last if isinstance(last, int) and not isinstance(last, bool) and last > 0 else 1
