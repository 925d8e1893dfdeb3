"""Accuracy without labels, from the top-class confidence histogram (pure; CBPE-like).

A classifier's prediction with top-class probability ``c`` is right with
probability ``a(c)``. The agent counts predictions per confidence bin
(``shared.telemetry.CONFIDENCE_BINS``); the expected accuracy of a window is
``Σ n_b · a_b / Σ n_b``. ``a_b`` is the calibration: the reference accuracy in
bin ``b`` measured on the model's evaluation data (manifest
``reference.confidence.counts`` / ``.correct``), smoothed and made monotone
(:func:`calibration`); without a reference, the bin's mid confidence (a
calibrated model's own promise). This is NannyML's confidence-based
performance estimation with histogram calibration; like it, it assumes the
relation between inputs and labels did not change (covariate shift only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shared.telemetry import CONFIDENCE_BINS

PRIOR_WEIGHT = 2.0  # samples' worth of weight the bin's mid confidence gets against measured accuracy


@dataclass(frozen=True)
class Estimate:
    accuracy: float
    stderr: float  # binomial standard error of the expected number right, over the predictions
    predictions: int


def calibration(reference: Any) -> list[float]:
    """Accuracy per confidence bin from a manifest's ``reference.confidence`` (bin mid-points without one).

    Each bin's measured accuracy is shrunk towards a prior with the weight of ``PRIOR_WEIGHT``
    samples (sparse bins): the bin's mid confidence scaled by the reference's overall accuracy
    over its mean confidence (a model that is under- or over-confident everywhere). Then the
    values are made non-decreasing in confidence by isotonic
    regression (pool adjacent violators, weighted by samples), as CBPE calibrates.
    """
    mids = [(i + 0.5) / CONFIDENCE_BINS for i in range(CONFIDENCE_BINS)]
    conf = reference.get("confidence") if isinstance(reference, dict) else None
    if not isinstance(conf, dict):
        return mids
    counts, correct = conf.get("counts"), conf.get("correct")
    if not (isinstance(counts, list) and isinstance(correct, list) and len(counts) == len(correct) == CONFIDENCE_BINS):
        return mids
    clean = []
    for n, k in zip(counts, correct, strict=True):
        ok = isinstance(n, int) and isinstance(k, int) and 0 <= k <= n
        clean.append((n, k) if ok else (0, 0))
    # Sparse bins lean on the model's stated confidence, scaled by the reference's accuracy over
    # its mean confidence (a model under- or over-confident everywhere).
    stated = sum(n * m for (n, _), m in zip(clean, mids, strict=True))
    ratio = sum(k for _, k in clean) / stated if stated else 1.0
    values, weights = [], []
    for mid, (n, k) in zip(mids, clean, strict=True):
        prior = min(mid * ratio, 1.0)
        values.append((k + PRIOR_WEIGHT * prior) / (n + PRIOR_WEIGHT))
        weights.append(n + PRIOR_WEIGHT)
    return isotonic(values, weights)


def isotonic(values: list[float], weights: list[float]) -> list[float]:
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, size]
    for v, w in zip(values, weights, strict=True):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, s2 = blocks.pop()
            m1, w1, s1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, s1 + s2])
    out: list[float] = []
    for m, _, size in blocks:
        out.extend([m] * int(size))
    return out


def estimate_accuracy(confidence: Any, calib: list[float]) -> Estimate | None:
    """Expected accuracy of the predictions counted in ``confidence``; None without predictions."""
    if not isinstance(confidence, list) or len(confidence) != len(calib):
        return None
    n = sum(c for c in confidence if isinstance(c, int) and c > 0)
    if n == 0:
        return None
    expected = sum(c * a for c, a in zip(confidence, calib, strict=True) if isinstance(c, int) and c > 0)
    var = sum(c * a * (1 - a) for c, a in zip(confidence, calib, strict=True) if isinstance(c, int) and c > 0)
    return Estimate(expected / n, math.sqrt(var) / n, n)


def reference_confidence(probabilities: Any, labels: Any) -> dict[str, list[int]]:
    """The manifest's ``reference.confidence`` section from evaluation outputs (numpy arrays)."""
    import numpy as np

    from shared.telemetry import confidence_bin

    p = np.asarray(probabilities, dtype=np.float64)
    top = p.max(axis=1)
    right = p.argmax(axis=1) == np.asarray(labels)
    bins = np.array([confidence_bin(float(c)) for c in top], dtype=np.int64)
    return {
        "counts": np.bincount(bins, minlength=CONFIDENCE_BINS).tolist(),
        "correct": np.bincount(bins, weights=right.astype(np.float64), minlength=CONFIDENCE_BINS).astype(int).tolist(),
    }
