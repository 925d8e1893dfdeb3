"""Simulated experiments on a fleet, for the statistics tests and the benchmark (seeded, vectorised).

Devices differ: each has its own true accuracy (the arm's rate plus a device
effect), reports a fixed number of labelled predictions per window and starts
reporting at a random window (devices come online over time). Thousands of
experiments run at once through the production statistics
(``controller.experiments.stats``), with a look after every window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from controller.experiments.bandit import thompson_weights
from controller.experiments.stats import always_valid_p, cs_radius, fixed_horizon, ratio


@dataclass(frozen=True)
class Design:
    devices_per_arm: int = 250
    windows: int = 30  # looks: one after every window
    labels_per_window: int = 20  # labelled predictions per device per window
    base: float = 0.85  # control accuracy
    effect: float = 0.0  # treatment minus control
    device_sd: float = 0.05  # spread of true accuracy between devices
    alpha: float = 0.05
    tau: float = 0.02  # mixing sd of the confidence sequence
    min_devices: int = 5

    @property
    def device_windows(self) -> int:
        return 2 * self.devices_per_arm * self.windows


@dataclass(frozen=True)
class PeekResult:
    sims: int
    always_valid_rejections: int  # experiments where the confidence sequence excluded 0 at some look
    peeked_fixed_rejections: int  # ... where the fixed-horizon z-test rejected at some look (invalid)
    naive_unit_rejections: int  # ... where a per-inference (binomial) variance rejected at some look (invalid)
    final_fixed_p: np.ndarray  # fixed-horizon p-values at the last look (per experiment)
    final_diff: np.ndarray
    final_var: np.ndarray
    last_num: np.ndarray  # (sims, 2, devices) final per-device sums, for comparison with scipy
    last_den: np.ndarray
    first_rejection_window: np.ndarray  # window index of the first always-valid rejection, -1 if none


def simulate_peeking(design: Design, sims: int, seed: int) -> PeekResult:
    """Run ``sims`` two-arm experiments, looking after every window."""
    d = design
    rng = np.random.default_rng(seed)
    n = d.devices_per_arm
    rates = np.stack([np.full(n, d.base), np.full(n, d.base + d.effect)])  # (2, n)
    p = np.clip(rates[None] + rng.normal(0.0, d.device_sd, size=(sims, 2, n)), 0.01, 0.99)
    start = rng.integers(0, max(1, d.windows // 3), size=(sims, 2, n))
    num = np.zeros((sims, 2, n))
    den = np.zeros((sims, 2, n))
    av = np.zeros(sims, dtype=bool)
    fixed = np.zeros(sims, dtype=bool)
    naive = np.zeros(sims, dtype=bool)
    first = np.full(sims, -1)
    z = sps.norm.ppf(1 - d.alpha / 2)
    diff = var = np.zeros(sims)
    for w in range(d.windows):
        on = start <= w
        num += np.where(on, rng.binomial(d.labels_per_window, p), 0)
        den += np.where(on, d.labels_per_window, 0)
        r, v, k = ratio(num, den, proportion=True)  # (sims, 2)
        ready = (k >= d.min_devices).all(axis=1)
        diff = r[:, 1] - r[:, 0]
        var = v[:, 0] + v[:, 1]
        hit = ready & (np.abs(diff) > cs_radius(var, d.alpha, d.tau))
        first = np.where(hit & ~av, w, first)
        av |= hit
        half, _ = fixed_horizon(diff, var, d.alpha)
        fixed |= ready & (np.abs(diff) > half)
        tot = den.sum(axis=2)
        binom = (r * (1 - r) / np.where(tot > 0, tot, np.nan)).sum(axis=1)
        naive |= ready & (np.abs(diff) > z * np.sqrt(binom))
    _, final_p = fixed_horizon(diff, var, d.alpha)
    return PeekResult(sims, int(av.sum()), int(fixed.sum()), int(naive.sum()), final_p, diff, var, num, den, first)


def always_valid_p_values(result: PeekResult, tau: float) -> np.ndarray:
    return always_valid_p(result.final_diff, result.final_var, tau)


@dataclass(frozen=True)
class SrmResult:
    sims: int
    detected_with_loss: int  # SRM flagged when one arm lost ``loss`` of its devices
    flagged_without_loss: int  # SRM flagged with nothing lost (false alarms)


def simulate_srm(devices: int, loss: float, sims: int, seed: int, alpha: float = 0.001) -> SrmResult:
    """Devices hashed 50/50 into two arms; then arm B loses ``loss`` of its devices (they stop reporting)."""
    rng = np.random.default_rng(seed)
    in_b = rng.binomial(devices, 0.5, size=sims)
    in_a = devices - in_b
    lost_b = in_b - rng.binomial(in_b, loss)

    def flagged(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        tot = a + b
        exp = tot / 2
        chi2 = (a - exp) ** 2 / exp + (b - exp) ** 2 / exp
        return np.asarray(sps.chi2.sf(chi2, 1) < alpha)

    return SrmResult(sims, int(flagged(in_a, lost_b).sum()), int(flagged(in_a, in_b).sum()))


@dataclass(frozen=True)
class BanditResult:
    regret: float  # expected reward lost against always serving the best arm
    uniform_regret: float  # ... by a fixed 50/50 split on the same requests
    min_weight: float  # the smallest weight any arm had at any update
    final_weights: tuple[float, ...]


def simulate_bandit(
    rates: tuple[float, ...] = (0.80, 0.85),
    windows: int = 60,
    requests_per_window: int = 2000,
    label_fraction: float = 0.1,
    floor: float = 0.05,
    seed: int = 0,
) -> BanditResult:
    """Thompson weights updated once per window from labelled rewards (as the leader job does)."""
    rng = np.random.default_rng(seed)
    k = len(rates)
    best = max(rates)
    weights = [1.0 / k] * k
    succ = np.zeros(k)
    trials = np.zeros(k)
    regret = 0.0
    min_w = 1.0
    for w in range(windows):
        served = rng.multinomial(requests_per_window, weights)
        regret += float(sum(served[i] * (best - rates[i]) for i in range(k)))
        labelled = rng.binomial(served, label_fraction)
        succ += rng.binomial(labelled, rates)
        trials += labelled
        weights = thompson_weights(succ.tolist(), trials.tolist(), floor, seed=seed * 100_003 + w)
        min_w = min(min_w, *weights)
    uniform = windows * requests_per_window * sum(best - r for r in rates) / k
    return BanditResult(regret, uniform, min_w, tuple(weights))
