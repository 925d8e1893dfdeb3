"""Confidence-based accuracy estimation tracks the true accuracy on simulated drift.

A softmax model on the digits data is calibrated on a held-out split (the
manifest's ``reference.confidence``); devices then see inputs with growing
Gaussian sensor noise, bin their top-class confidences per window, and the
merged windows give the estimate. Stated error: |estimate - true| <= 0.05 at
every noise level while the true accuracy falls from ~0.94 to ~0.64.
"""

from __future__ import annotations

import numpy as np
import pytest

from controller.monitoring.estimate import calibration, estimate_accuracy, isotonic, reference_confidence
from controller.telemetry.aggregate import merge_many
from firmware_sim.modelgen import load_digits, train_softmax
from shared.telemetry import CONFIDENCE_BINS, confidence_bin

pytestmark = pytest.mark.unit
MAX_ERROR = 0.05


def test_estimate_tracks_true_accuracy_under_sensor_noise():
    x, y = load_digits()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    train, calib, test = idx[:900], idx[900:1350], idx[1350:]
    w, b = train_softmax(x[train], y[train], epochs=200)

    def probs(v: np.ndarray) -> np.ndarray:
        z = v @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    cal = calibration({"confidence": reference_confidence(probs(x[calib]), y[calib])})
    trues = []
    for sigma in (0.0, 0.1, 0.2, 0.3, 0.4, 0.6):
        windows, right, total = [], 0, 0
        for _device in range(6):  # each device sees the test digits with its own noise draw
            xt = np.clip(x[test] + rng.normal(0, sigma, x[test].shape), 0, 1)
            p = probs(xt)
            right += int((p.argmax(axis=1) == y[test]).sum())
            total += len(xt)
            windows.append({"model": "digits", "version": 1, "confidence": _histogram(p.max(axis=1))})
        merged = merge_many(windows)
        est = estimate_accuracy(merged["confidence"], cal)
        assert est is not None and est.predictions == total
        true = right / total
        trues.append(true)
        assert abs(est.accuracy - true) <= MAX_ERROR, f"sigma {sigma}: estimated {est.accuracy:.3f}, true {true:.3f}"
    assert trues[0] - trues[-1] > 0.25  # the drift really hurt accuracy


def _histogram(conf: np.ndarray) -> list[int]:
    return np.bincount([confidence_bin(float(c)) for c in conf], minlength=CONFIDENCE_BINS).tolist()


def test_without_calibration_the_model_is_taken_at_its_word():
    cal = calibration({})
    h = [0] * CONFIDENCE_BINS
    h[-1] = 100  # all predictions at 0.95..1.0
    est = estimate_accuracy(h, cal)
    assert est is not None and est.accuracy == pytest.approx(0.975)
    assert estimate_accuracy([0] * CONFIDENCE_BINS, cal) is None
    assert estimate_accuracy([1, 2], cal) is None


def test_isotonic_pools_violators():
    assert isotonic([0.5, 0.3, 0.9], [1, 1, 1]) == pytest.approx([0.4, 0.4, 0.9])
    assert isotonic([0.1, 0.2], [5, 1]) == [0.1, 0.2]


def test_confidence_bins_cover_zero_to_one():
    assert confidence_bin(0.0) == 0 and confidence_bin(1.0) == CONFIDENCE_BINS - 1
    assert confidence_bin(float("nan")) == 0 and confidence_bin(0.5) == CONFIDENCE_BINS // 2
