"""Simulated telemetry windows for fleets too large to run as real agents (tests, benchmarks).

:func:`role_summary` bins one device window's raw inputs and model outputs the
way the agent does (``shared.telemetry``: feature histograms over the
manifest's reference edges with out-of-range bins, class counts, top-class
confidence bins, non-finite counts); :func:`telemetry_message` wraps summaries
into a protocol message. The e2e tests use real agents; this is for scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.telemetry import CONFIDENCE_BINS, N_LATENCY_BUCKETS, latency_bucket


def _bin(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts of ``values`` (1-D) in ``len(edges) + 1`` bins, as ``shared.telemetry.bin_index``."""
    idx = np.searchsorted(edges, values, side="right")
    idx[values == edges[-1]] = len(edges) - 1
    return np.bincount(idx, minlength=len(edges) + 1)


def role_summary(
    reference: dict[str, Any], model: str, version: int, x: np.ndarray, probs: np.ndarray, latency_ms: float = 1.0
) -> dict[str, Any]:
    """One window of one device: ``x`` (rows × features) went in, ``probs`` (rows × classes) came out."""
    feats = reference.get("features", [])
    finite = np.isfinite(x)
    features = {}
    for i, f in enumerate(feats):
        col = x[:, i][finite[:, i]]
        features[f["name"]] = _bin(np.asarray(f["bin_edges"], dtype=np.float64), col).astype(int).tolist()
    lat = [0] * N_LATENCY_BUCKETS
    lat[latency_bucket(latency_ms)] = len(x)
    top = np.nan_to_num(probs.max(axis=1), nan=0.0)
    conf = np.minimum((np.maximum(top, 0) * CONFIDENCE_BINS).astype(int), CONFIDENCE_BINS - 1)
    return {
        "model": model,
        "version": version,
        "count": len(x),
        "errors": 0,
        "samples": len(x),
        "latency_ms": lat,
        "predictions": np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]).astype(int).tolist(),
        "features": features,
        "shadow": {"agree": 0, "disagree": 0},
        "labels": {"count": 0, "correct": 0},
        "confidence": np.bincount(conf, minlength=CONFIDENCE_BINS).astype(int).tolist(),
        "quality": {
            "nan": np.isnan(x).sum(axis=0).astype(int).tolist(),
            "inf": np.isinf(x).sum(axis=0).astype(int).tolist(),
            "out_of_range": [0] * x.shape[1],
        },
    }


def telemetry_message(device_id: str, seq: int, window_start: float, window_s: float, roles: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": 1,
        "device_id": device_id,
        "seq": seq,
        "sent_at": window_start + window_s,
        "window_start": window_start,
        "window_s": window_s,
        "roles": roles,
    }


def softmax_probs(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    z = np.nan_to_num(x) @ w + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    out: np.ndarray = p / p.sum(axis=1, keepdims=True)
    return out
