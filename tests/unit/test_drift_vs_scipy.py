"""Every drift statistic from merged device windows equals scipy's on the raw data binned the same way.

Devices bin their own inputs into windows (``shared.telemetry.bin_index``) and
the windows are merged (``controller.telemetry.aggregate.merge_many``); the same
statistics computed by scipy on the concatenated raw values of all devices,
binned over the same edges, must agree to floating-point precision.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from controller.monitoring import stats
from controller.monitoring.drift import drift_report, reference_from_manifest
from controller.telemetry.aggregate import merge_many
from shared.telemetry import bin_index

pytestmark = pytest.mark.unit

EDGES = [0.0, 0.1, 0.25, 0.4, 0.5, 0.7, 0.9, 1.0]
CLASSES = 5


def window(model_values: np.ndarray, preds: np.ndarray) -> dict:
    """One device window as the agent builds it (features binned over EDGES, class counts)."""
    feats = {}
    for j in range(model_values.shape[1]):
        counts = [0] * (len(EDGES) + 1)
        for v in model_values[:, j]:
            counts[bin_index(EDGES, float(v))] += 1
        feats[f"f{j}"] = counts
    return {
        "model": "m",
        "version": 1,
        "count": len(preds),
        "predictions": np.bincount(preds, minlength=CLASSES).tolist(),
        "features": feats,
    }


def binned(values: np.ndarray) -> np.ndarray:
    """Index of each raw value's bin (the same rule as the agent)."""
    return np.array([bin_index(EDGES, float(v)) for v in values])


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    ref_x = rng.beta(2, 3, size=(3000, 3))
    ref_p = rng.choice(CLASSES, size=3000, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    manifest_ref = {
        "features": [
            {"name": f"f{j}", "bin_edges": EDGES, "counts": np.histogram(ref_x[:, j], bins=EDGES)[0].tolist()} for j in range(3)
        ],
        "predictions": {"classes": list(range(CLASSES)), "counts": np.bincount(ref_p, minlength=CLASSES).tolist()},
    }
    # Five devices, each several windows; feature 0 shifted and partly out of range, feature 2 unchanged.
    device_windows, raw_x, raw_p = [], [], []
    for d in range(5):
        for _ in range(4):
            n = int(rng.integers(20, 200))
            x = rng.beta(2, 3, size=(n, 3))
            x[:, 0] = x[:, 0] * 1.2 + 0.05 * d - 0.02
            x[:, 1] = rng.beta(3, 2, size=n)
            p = rng.choice(CLASSES, size=n, p=[0.1, 0.2, 0.2, 0.2, 0.3])
            device_windows.append(window(x, p))
            raw_x.append(x)
            raw_p.append(p)
    return manifest_ref, ref_x, ref_p, merge_many(device_windows), np.concatenate(raw_x), np.concatenate(raw_p)


def test_every_feature_statistic_matches_scipy(data):
    manifest_ref, ref_x, _, merged, raw_x, _ = data
    report = drift_report(reference_from_manifest(manifest_ref), merged)
    assert [f.name for f in report.features] == ["f0", "f1", "f2"]
    nb = len(EDGES) + 1
    positions = stats.bin_centres(EDGES)
    for j, f in enumerate(report.features):
        ref_idx, cur_idx = binned(ref_x[:, j]), binned(raw_x[:, j])
        ref_counts = np.bincount(ref_idx, minlength=nb).astype(float)
        cur_counts = np.bincount(cur_idx, minlength=nb).astype(float)
        assert merged["features"][f.name] == cur_counts.astype(int).tolist()  # merging loses nothing

        p = np.maximum(ref_counts / ref_counts.sum(), stats.EPS)
        q = np.maximum(cur_counts / cur_counts.sum(), stats.EPS)
        assert f.psi == pytest.approx(float(np.sum(rel_entr(q, p) + rel_entr(p, q))), rel=1e-12)
        assert f.js == pytest.approx(float(jensenshannon(ref_counts, cur_counts, base=2)), rel=1e-9, abs=1e-12)
        ref_pos, cur_pos = positions[ref_idx], positions[cur_idx]
        w = sps.wasserstein_distance(cur_pos, ref_pos) / np.std(ref_pos)
        assert f.wasserstein == pytest.approx(float(w), rel=1e-9)
        assert (f.n_ref, f.n_cur) == (len(ref_x), len(raw_x))
    by = {f.name: f for f in report.features}
    assert by["f0"].drifted and by["f1"].drifted and not by["f2"].drifted
    assert by["f0"].out_of_range > 0
    assert report.drifted_features == 2
    assert report.drift_share == pytest.approx(2 / 3)
    assert report.dataset_drift


def test_class_prediction_chi_square_matches_scipy(data):
    manifest_ref, _, ref_p, merged, _, raw_p = data
    pred = drift_report(reference_from_manifest(manifest_ref), merged).predictions
    assert pred is not None
    table = np.array([np.bincount(ref_p, minlength=CLASSES), np.bincount(raw_p, minlength=CLASSES)])
    chi2, p_value, _, _ = sps.chi2_contingency(table, correction=False)
    assert pred.chi2 == pytest.approx(chi2, rel=1e-12)
    assert pred.chi2_p == pytest.approx(p_value, rel=1e-9, abs=1e-300)
    assert pred.cramers_v == pytest.approx(sps.contingency.association(table, method="cramer"), rel=1e-9)
    assert pred.js == pytest.approx(float(jensenshannon(table[0], table[1], base=2)), rel=1e-9)
    assert pred.drifted and pred.verdict == "drift"


def test_empty_classes_are_dropped_like_scipy_needs():
    ref, cur = [50, 0, 30, 20], [40, 0, 35, 25]
    res = stats.chi_square(ref, cur)
    chi2, p_value, dof, _ = sps.chi2_contingency(np.array([[50, 30, 20], [40, 35, 25]]), correction=False)
    assert (res.statistic, res.dof) == (pytest.approx(chi2), dof)
    assert res.p_value == pytest.approx(p_value)


def test_small_samples_raise_the_threshold_and_large_ones_do_not():
    # 9 bins: with 40 samples the noise level is far above PSI 0.1; with 100k it is the default.
    small = stats.psi_threshold(10_000, 40, 9)
    assert small > 0.5
    assert stats.psi_threshold(10_000, 100_000, 9) == stats.DEFAULT_THRESHOLDS.psi
    assert stats.js_threshold(10_000, 40, 9) > stats.js_threshold(10_000, 100_000, 9) == 0.1
    assert stats.wasserstein_threshold(10_000, 40) > 0.1


def test_no_false_drift_on_samples_from_the_reference():
    """Stationary data: across 300 small and large windows, no feature is flagged."""
    rng = np.random.default_rng(3)
    ref_x = rng.beta(2, 3, size=(5000, 1))
    manifest_ref = {"features": [{"name": "f0", "bin_edges": EDGES, "counts": np.histogram(ref_x[:, 0], EDGES)[0].tolist()}]}
    ref = reference_from_manifest(manifest_ref)
    flagged = 0
    for i in range(300):
        n = 40 if i % 2 else 4000
        x = rng.beta(2, 3, size=(n, 1))
        flagged += drift_report(ref, window(x, np.zeros(n, dtype=int))).dataset_drift
    assert flagged == 0


def test_few_samples_give_no_verdict():
    ref = reference_from_manifest({"features": [{"name": "f0", "bin_edges": EDGES, "counts": [10] * 7}]})
    rep = drift_report(ref, {"features": {"f0": [0, 0, 0, 0, 0, 0, 0, 5, 5]}})
    assert rep.features[0].verdict == "insufficient" and not rep.dataset_drift
