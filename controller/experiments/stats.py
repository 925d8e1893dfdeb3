"""Always-valid inference on the difference between two arms, with the device as the unit (pure).

Each device contributes one pair of sums for an arm: a numerator and a
denominator (correct labels and labels for accuracy, errors and calls for the
error rate, summed latency and calls for mean latency). An arm's estimate is the
ratio of the sums over its devices; its variance is the cluster-robust (delta
method) variance over devices, so inferences of one device, which are not
independent, do not count as independent evidence.

The difference ``d = treatment - control`` is approximately normal with variance
``V = V_t + V_c``. Its always-valid interval is the normal-mixture confidence
sequence (Robbins' mixture; the mixture sequential probability ratio test of
Johari et al., "Always valid inference", and the asymptotic confidence
sequences of Waudby-Smith et al.): with a mixing standard deviation ``tau``
(the size of effect the test is tuned for),

    d_hat +/- sqrt( V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)) )

covers the true difference at every look simultaneously with probability at
least ``1 - alpha``, so it may be read after every window and a decision taken
the moment it excludes zero. The matching always-valid p-value is ``1 / L``
with ``L`` the mixture likelihood ratio of ``d = 0``.

Every function takes numpy arrays whose last axis is the devices, so the
simulation tests run the production code on thousands of experiments at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Estimate:
    """One arm's ratio estimate over its devices."""

    mean: float
    var: float  # variance of ``mean`` across devices
    devices: int  # devices with a non-zero denominator
    denominator: float  # summed denominator (e.g. labels)


def ratio(num: ArrayLike, den: ArrayLike, proportion: bool = False) -> tuple[Array, Array, Array]:
    """(estimate, variance, devices) of sum(num)/sum(den) over the last axis (devices).

    The variance is the cluster-robust one, ``k/(k-1) * sum((num_i - r den_i)^2) / (sum den)^2``
    over the ``k`` devices with data. For a proportion it is floored by the binomial
    variance of a shrunk rate, so a few devices that never erred do not look certain.
    No data gives nan; one device gives an infinite variance.
    """
    n = np.asarray(num, dtype=np.float64)
    d = np.asarray(den, dtype=np.float64)
    has = d > 0
    k = has.sum(axis=-1).astype(np.float64)
    total = d.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(total > 0, n.sum(axis=-1) / total, np.nan)
        resid = np.where(has, n - r[..., None] * d, 0.0)
        var = np.where(k > 1, k / (k - 1) * (resid**2).sum(axis=-1) / total**2, np.inf)
        if proportion:
            shrunk = (n.sum(axis=-1) + 0.5) / (total + 1.0)
            var = np.maximum(var, shrunk * (1 - shrunk) / total)
    return r, np.where(total > 0, var, np.nan), k


def estimate(num: ArrayLike, den: ArrayLike, proportion: bool = False) -> Estimate | None:
    """:func:`ratio` for one arm (1-D arrays); None without data."""
    r, v, k = ratio(num, den, proportion)
    if not np.isfinite(r):
        return None
    return Estimate(float(r), float(v), int(k), float(np.asarray(den, dtype=np.float64).sum()))


def cs_radius(var: ArrayLike, alpha: float, tau: float) -> Array:
    """Half-width of the normal-mixture confidence sequence for an estimate of variance ``var``."""
    v = np.asarray(var, dtype=np.float64)
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = v * (v + t2) / t2 * (2 * np.log(1 / alpha) + np.log((v + t2) / v))
    return np.sqrt(np.where(np.isfinite(v) & (v > 0), r2, np.inf))


def always_valid_p(diff: ArrayLike, var: ArrayLike, tau: float) -> Array:
    """1 / (mixture likelihood ratio of no difference), capped at 1. Below ``alpha`` iff the CS excludes 0."""
    d = np.asarray(diff, dtype=np.float64)
    v = np.asarray(var, dtype=np.float64)
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_lr = 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2 * v * (v + t2))
    ok = np.isfinite(v) & (v > 0) & np.isfinite(d)
    return np.where(ok, np.minimum(1.0, np.exp(-np.where(ok, log_lr, 0.0))), 1.0)


def fixed_horizon(diff: ArrayLike, var: ArrayLike, alpha: float) -> tuple[Array, Array]:
    """(half-width, two-sided p) of the fixed-horizon z-test: valid only for one look at a sample fixed in advance."""
    d = np.asarray(diff, dtype=np.float64)
    v = np.asarray(var, dtype=np.float64)
    se = np.sqrt(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * sps.norm.sf(np.abs(d) / se)
    return sps.norm.ppf(1 - alpha / 2) * se, np.where(np.isfinite(p), p, 1.0)


@dataclass(frozen=True)
class Difference:
    """Treatment minus control with its always-valid interval at one look."""

    diff: float
    var: float
    low: float
    high: float
    p_value: float  # always valid
    fixed_low: float  # fixed-horizon interval, for comparison only
    fixed_high: float


def difference(treatment: Estimate, control: Estimate, alpha: float, tau: float) -> Difference:
    d = treatment.mean - control.mean
    v = treatment.var + control.var
    r = float(cs_radius(v, alpha, tau))
    fr, _ = fixed_horizon(d, v, alpha)
    return Difference(d, v, d - r, d + r, float(always_valid_p(d, v, tau)), d - float(fr), d + float(fr))
