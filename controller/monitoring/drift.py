"""Drift of a merged summary against a reference (pure).

The reference is either the bundle manifest's ``reference`` section (counts
over the reference bin edges, per input feature and for the predictions) or a
merged summary of an earlier period (:func:`reference_from_summary`). Device
histograms carry two extra bins (below/above the edges, ``shared.telemetry``);
the manifest's reference has none there, so it is padded with zeros: inputs out
of the reference range are drift too.

Each feature gets PSI, Jensen–Shannon distance and the normed Wasserstein
distance with their sample-size-aware thresholds (``controller.monitoring.stats``);
a feature drifts when its PSI **and** its JS distance exceed their thresholds
(two views agreeing: fewer false alarms on sparse bins). Class predictions get
the χ² test (drift: p below ``chi2_p`` and Cramér's V above ``cramers_v``) and
PSI/JS for the console. The dataset drifts when the share of drifted features
reaches ``drift_share``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from controller.monitoring import stats
from controller.monitoring.stats import DEFAULT_THRESHOLDS, Thresholds
from controller.monitoring.summary import part


class ReferenceError(ValueError):
    """The manifest's reference section cannot be used for drift."""


@dataclass(frozen=True)
class FeatureRef:
    name: str
    edges: np.ndarray  # strictly increasing bin edges
    counts: np.ndarray  # len(edges) + 1 counts (outer bins included)


@dataclass(frozen=True)
class Reference:
    features: tuple[FeatureRef, ...]
    classes: int  # > 0: class predictions with this many classes
    predictions: np.ndarray | None  # reference counts of predictions (class counts, or binned like a feature)
    prediction_edges: np.ndarray | None  # regression predictions: bin edges
    source: str = "manifest"


def _edges(value: Any, where: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64) if isinstance(value, list) else np.empty(0)
    if arr.ndim != 1 or len(arr) < 2 or not np.all(np.isfinite(arr)) or not np.all(np.diff(arr) > 0):
        raise ReferenceError(f"{where}.bin_edges: expected at least two strictly increasing numbers")
    return arr


def _counts(value: Any, n: int, where: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64) if isinstance(value, list) else np.empty(0)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ReferenceError(f"{where}.counts: expected {n} non-negative counts")
    return arr


def reference_from_manifest(reference: Any) -> Reference:
    """Read a manifest's ``reference`` section; the counts are padded to device histograms."""
    if not isinstance(reference, dict):
        raise ReferenceError("manifest.reference: expected an object")
    feats: list[FeatureRef] = []
    raw = reference.get("features", [])
    for i, f in enumerate(raw if isinstance(raw, list) else []):
        where = f"manifest.reference.features[{i}]"
        if not isinstance(f, dict):
            raise ReferenceError(f"{where}: expected an object")
        edges = _edges(f.get("bin_edges"), where)
        inner = _counts(f.get("counts"), len(edges) - 1, where)
        feats.append(FeatureRef(str(f.get("name", f"f{i}")), edges, np.concatenate([[0.0], inner, [0.0]])))
    preds = reference.get("predictions")
    classes, pred_counts, pred_edges = 0, None, None
    if isinstance(preds, dict):
        if isinstance(preds.get("classes"), list) and preds["classes"]:
            classes = len(preds["classes"])
            pred_counts = _counts(preds.get("counts"), classes, "manifest.reference.predictions")
        elif "bin_edges" in preds:
            pred_edges = _edges(preds.get("bin_edges"), "manifest.reference.predictions")
            inner = _counts(preds.get("counts"), len(pred_edges) - 1, "manifest.reference.predictions")
            pred_counts = np.concatenate([[0.0], inner, [0.0]])
    return Reference(tuple(feats), classes, pred_counts, pred_edges)


def reference_from_summary(base: Reference, summary: dict[str, Any]) -> Reference:
    """An earlier period's merged summary as the reference (bin edges from ``base``)."""
    feats = part(summary, "features")
    out = []
    for f in base.features:
        c = feats.get(f.name)
        counts = np.asarray(c, dtype=np.float64) if isinstance(c, list) and len(c) == len(f.counts) else np.zeros_like(f.counts)
        out.append(FeatureRef(f.name, f.edges, counts))
    p = summary.get("predictions")
    pred = None
    if base.predictions is not None and isinstance(p, list) and len(p) == len(base.predictions):
        pred = np.asarray(p, dtype=np.float64)
    return Reference(tuple(out), base.classes, pred, base.prediction_edges, source="period")


@dataclass
class FeatureDrift:
    name: str
    n_ref: int
    n_cur: int
    psi: float
    psi_threshold: float
    js: float
    js_threshold: float
    wasserstein: float  # in units of the reference's standard deviation
    wasserstein_threshold: float
    out_of_range: float  # share of current values outside the reference edges
    drifted: bool
    verdict: str  # "drift" | "ok" | "insufficient"


@dataclass
class PredictionDrift:
    n_ref: int
    n_cur: int
    psi: float
    js: float
    chi2: float | None  # classes only
    chi2_p: float | None
    cramers_v: float | None
    drifted: bool
    verdict: str


@dataclass
class DriftReport:
    features: list[FeatureDrift] = field(default_factory=list)
    predictions: PredictionDrift | None = None
    drifted_features: int = 0
    drift_share: float = 0.0
    dataset_drift: bool = False
    reference: str = "manifest"
    thresholds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def feature_drift(ref: FeatureRef, cur_counts: Any, t: Thresholds = DEFAULT_THRESHOLDS) -> FeatureDrift:
    cur = np.asarray(cur_counts, dtype=np.float64)
    if cur.shape != ref.counts.shape:
        raise ValueError(f"feature {ref.name}: expected {len(ref.counts)} counts, got {cur.shape}")
    n_ref, n_cur = float(ref.counts.sum()), float(cur.sum())
    k = stats.nonempty_bins(ref.counts, cur)
    pos = stats.bin_centres(ref.edges)
    psi = stats.psi(ref.counts, cur)
    js = stats.js_distance(ref.counts, cur)
    sd = stats.weighted_std(ref.counts, pos) or float(ref.edges[-1] - ref.edges[0]) / len(ref.edges)
    w = stats.wasserstein(ref.counts, cur, pos) / sd
    psi_t = stats.psi_threshold(n_ref, n_cur, k, t)
    js_t = stats.js_threshold(n_ref, n_cur, k, t)
    w_t = stats.wasserstein_threshold(n_ref, n_cur, t)
    enough = n_cur >= t.min_samples and n_ref > 0
    drifted = enough and psi > psi_t and js > js_t
    oor = float((cur[0] + cur[-1]) / n_cur) if n_cur else 0.0
    verdict = "insufficient" if not enough else ("drift" if drifted else "ok")
    return FeatureDrift(ref.name, int(n_ref), int(n_cur), psi, psi_t, js, js_t, w, w_t, oor, drifted, verdict)


def prediction_drift(ref: Reference, cur_counts: Any, t: Thresholds = DEFAULT_THRESHOLDS) -> PredictionDrift | None:
    if ref.predictions is None or not isinstance(cur_counts, list) or len(cur_counts) != len(ref.predictions):
        return None
    cur = np.asarray(cur_counts, dtype=np.float64)
    n_ref, n_cur = float(ref.predictions.sum()), float(cur.sum())
    enough = n_cur >= t.min_samples and n_ref > 0
    psi, js = stats.psi(ref.predictions, cur), stats.js_distance(ref.predictions, cur)
    if ref.classes:
        chi = stats.chi_square(ref.predictions, cur)
        drifted = enough and chi.p_value < t.chi2_p and chi.cramers_v > t.cramers_v
        verdict = "insufficient" if not enough else ("drift" if drifted else "ok")
        return PredictionDrift(int(n_ref), int(n_cur), psi, js, chi.statistic, chi.p_value, chi.cramers_v, drifted, verdict)
    k = stats.nonempty_bins(ref.predictions, cur)
    drifted = enough and psi > stats.psi_threshold(n_ref, n_cur, k, t) and js > stats.js_threshold(n_ref, n_cur, k, t)
    verdict = "insufficient" if not enough else ("drift" if drifted else "ok")
    return PredictionDrift(int(n_ref), int(n_cur), psi, js, None, None, None, drifted, verdict)


def drift_report(
    ref: Reference, summary: dict[str, Any], t: Thresholds = DEFAULT_THRESHOLDS, features: list[str] | None = None
) -> DriftReport:
    """Drift of one merged role summary against ``ref``; ``features`` limits which are tested.

    Features missing from the summary (feature histograms off, shape mismatch) are skipped.
    """
    feats = part(summary, "features")
    wanted = set(features) if features else None
    out = []
    for f in ref.features:
        if wanted is not None and f.name not in wanted:
            continue
        c = feats.get(f.name)
        if isinstance(c, list) and len(c) == len(f.counts):
            out.append(feature_drift(f, c, t))
    judged = [f for f in out if f.verdict != "insufficient"]
    drifted = sum(f.drifted for f in judged)
    share = drifted / len(judged) if judged else 0.0
    return DriftReport(
        features=out,
        predictions=prediction_drift(ref, summary.get("predictions"), t),
        drifted_features=drifted,
        drift_share=share,
        dataset_drift=bool(judged) and share >= t.drift_share,
        reference=ref.source,
        thresholds=asdict(t),
    )
