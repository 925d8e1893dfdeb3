"""Drift statistics on histograms (pure, numpy + scipy.stats distributions only).

Every function takes two count vectors over the same bins: ``ref`` (the
reference: the bundle manifest's counts, or an earlier period) and ``cur``
(merged device windows). Feature histograms from devices have two more bins
than the manifest's reference (below ``edges[0]``, above ``edges[-1]``; see
``shared.telemetry``); callers pad the reference with zeros so both line up.

Statistics and their documented default thresholds (:class:`Thresholds`):

====================  ==========================================  ===============
statistic             definition on proportions p (ref), q (cur)  default
====================  ==========================================  ===============
PSI                   Σ (q - p) ln(q / p)  (= KL(q‖p) + KL(p‖q))   0.1
Jensen–Shannon dist.  √JSD base 2 (``scipy...jensenshannon``)     0.1
Wasserstein (normed)  W1 between the binned distributions, each   0.1
                      bin at its centre, divided by the
                      reference's standard deviation
χ² (classes)          homogeneity test on the 2×k table           p < 0.001 and
                      (``scipy.stats.chi2_contingency``)          Cramér's V > 0.1
====================  ==========================================  ===============

Proportions are floored at ``EPS`` (1e-4, as Evidently does) before PSI, so a
bin empty on one side does not make it infinite.

Sample-size correction: with few samples, PSI and JS are large by chance alone
(a fixed PSI 0.1 alarms on a window of 50 inputs). Under "no drift" PSI is
approximately ``(1/n + 1/m) · χ²(k - 1)`` and JSD (nats) approximately an
eighth of that, for n current and m reference samples over k non-empty bins.
The threshold used is the larger of the default and that noise level at
``Thresholds.alpha`` (1 - quantile); the normed Wasserstein uses the
Kolmogorov–Smirnov scaling ``c(alpha) · √(1/n + 1/m)``. A statistic "drifts"
only above its effective threshold, so small samples need a larger change and
large samples are held to the default effect size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

EPS = 1e-4  # floor on bin proportions for PSI


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    psi: float = 0.1  # population stability index (unitless)
    js: float = 0.1  # Jensen–Shannon distance, base 2 (0..1)
    wasserstein: float = 0.1  # Wasserstein-1 in units of the reference's standard deviation
    chi2_p: float = 0.001  # χ² p-value below which classes differ ...
    cramers_v: float = 0.1  # ... and the effect (Cramér's V) above which it matters
    alpha: float = 0.001  # chance of a false drift flag per statistic from sampling noise alone
    drift_share: float = 0.5  # dataset drift: at least this share of features drifted
    min_samples: int = 30  # fewer current samples: no verdict ("insufficient")


DEFAULT_THRESHOLDS = Thresholds()


def _as_counts(x: object) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("expected a 1-D vector of non-negative counts")
    return a


def proportions(counts: np.ndarray, eps: float = 0.0) -> np.ndarray:
    total = counts.sum()
    p = counts / total if total > 0 else np.zeros_like(counts)
    return np.maximum(p, eps) if eps else p


def psi(ref: object, cur: object) -> float:
    """Population stability index of ``cur`` against ``ref`` (proportions floored at EPS)."""
    p, q = proportions(_as_counts(ref), EPS), proportions(_as_counts(cur), EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(ref: object, cur: object) -> float:
    """Jensen–Shannon distance, base 2 (0 same, 1 disjoint)."""
    p, q = proportions(_as_counts(ref)), proportions(_as_counts(cur))
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum()
    return float(math.sqrt(max((kl_p + kl_q) / 2, 0.0)))


def bin_centres(edges: object) -> np.ndarray:
    """Positions of the ``len(edges) + 1`` bins of a device histogram: inner bins at their
    middle; the below/above bins half a bin-width outside the first/last edge."""
    e = np.asarray(edges, dtype=np.float64)
    mid = (e[:-1] + e[1:]) / 2
    lo = e[0] - (e[1] - e[0]) / 2
    hi = e[-1] + (e[-1] - e[-2]) / 2
    return np.concatenate([[lo], mid, [hi]])


def wasserstein(ref: object, cur: object, positions: object) -> float:
    """Wasserstein-1 distance between two histograms whose bins sit at ``positions`` (sorted)."""
    p, q = proportions(_as_counts(ref)), proportions(_as_counts(cur))
    x = np.asarray(positions, dtype=np.float64)
    if p.shape != x.shape or q.shape != x.shape:
        raise ValueError(f"expected {x.shape[0]} counts per histogram, got {p.shape[0]} and {q.shape[0]}")
    cdf_gap = np.abs(np.cumsum(p) - np.cumsum(q))[:-1]
    return float(np.sum(cdf_gap * np.diff(x)))


def weighted_std(counts: object, positions: object) -> float:
    p = proportions(_as_counts(counts))
    x = np.asarray(positions, dtype=np.float64)
    mean = float(np.sum(p * x))
    return float(math.sqrt(max(np.sum(p * (x - mean) ** 2), 0.0)))


@dataclass(frozen=True)
class ChiSquare:
    statistic: float
    dof: int
    p_value: float
    cramers_v: float


def chi_square(ref: object, cur: object) -> ChiSquare:
    """χ² test of homogeneity on the 2×k table of counts (bins empty on both sides dropped)."""
    r, c = _as_counts(ref), _as_counts(cur)
    keep = (r + c) > 0
    r, c = r[keep], c[keep]
    n_r, n_c = r.sum(), c.sum()
    k = int(keep.sum())
    if k < 2 or n_r == 0 or n_c == 0:
        return ChiSquare(0.0, max(k - 1, 0), 1.0, 0.0)
    total = n_r + n_c
    col = r + c
    exp_r, exp_c = col * n_r / total, col * n_c / total
    stat = float(np.sum((r - exp_r) ** 2 / exp_r) + np.sum((c - exp_c) ** 2 / exp_c))
    dof = k - 1
    return ChiSquare(stat, dof, float(sps.chi2.sf(stat, dof)), float(math.sqrt(stat / total)))


def nonempty_bins(ref: object, cur: object) -> int:
    return int(np.count_nonzero((_as_counts(ref) + _as_counts(cur)) > 0))


def psi_threshold(n_ref: float, n_cur: float, k: int, t: Thresholds = DEFAULT_THRESHOLDS) -> float:
    """The PSI above which drift is flagged: the default or, with few samples, the noise level."""
    if k < 2 or n_ref <= 0 or n_cur <= 0:
        return t.psi
    noise = float(sps.chi2.ppf(1 - t.alpha, k - 1)) * (1 / n_cur + 1 / n_ref)
    return max(t.psi, noise)


def js_threshold(n_ref: float, n_cur: float, k: int, t: Thresholds = DEFAULT_THRESHOLDS) -> float:
    """The JS distance (base 2) above which drift is flagged (default or noise level)."""
    if k < 2 or n_ref <= 0 or n_cur <= 0:
        return t.js
    jsd_nats = float(sps.chi2.ppf(1 - t.alpha, k - 1)) * (1 / n_cur + 1 / n_ref) / 8
    return max(t.js, math.sqrt(jsd_nats / math.log(2)))


def wasserstein_threshold(n_ref: float, n_cur: float, t: Thresholds = DEFAULT_THRESHOLDS) -> float:
    """The normed Wasserstein distance above which drift is flagged (default or KS-style noise level)."""
    if n_ref <= 0 or n_cur <= 0:
        return t.wasserstein
    c_alpha = math.sqrt(-math.log(t.alpha / 2) / 2)
    return max(t.wasserstein, c_alpha * math.sqrt(1 / n_cur + 1 / n_ref))
