"""The experiment statistics, checked by seeded simulation through the production code.

Stated design (``firmware_sim.experiment_sim.Design``): 250 devices per arm, a look
after each of 30 windows, 20 labelled predictions per device per window, control
accuracy 0.85, device-to-device spread 0.05, alpha 0.05, mixing sd 0.02.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from controller.experiments.stats import always_valid_p, cs_radius, difference, estimate, fixed_horizon, ratio
from firmware_sim.experiment_sim import Design, simulate_bandit, simulate_peeking, simulate_srm

pytestmark = pytest.mark.unit
ALPHA = 0.05


def test_aa_false_positive_rate_stays_below_alpha_under_continuous_peeking() -> None:
    r = simulate_peeking(Design(effect=0.0), sims=2000, seed=11)
    rate = r.always_valid_rejections / r.sims
    assert rate <= ALPHA + 0.01, rate
    # The problem is real on the same data: peeking at a fixed-horizon test, or counting
    # inferences instead of devices as the unit, rejects far more often than alpha.
    assert r.peeked_fixed_rejections / r.sims > 0.10
    assert r.naive_unit_rejections / r.sims > 0.30


def test_a_two_point_accuracy_gain_is_detected_with_80_percent_power_within_15000_device_windows() -> None:
    design = Design(effect=0.02)
    assert design.device_windows == 15_000
    r = simulate_peeking(design, sims=600, seed=12)
    assert r.always_valid_rejections / r.sims >= 0.80
    assert (r.final_diff > 0).mean() > 0.99  # and in the right direction


def test_srm_is_caught_when_one_arm_loses_ten_percent_of_its_devices() -> None:
    r = simulate_srm(devices=10_000, loss=0.10, sims=1000, seed=13)
    assert r.detected_with_loss / r.sims >= 0.90
    assert r.flagged_without_loss / r.sims <= 0.01


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bandit_regret_is_lower_than_a_fixed_split_and_no_arm_drops_below_its_floor(seed: int) -> None:
    b = simulate_bandit(rates=(0.80, 0.85), floor=0.05, seed=seed)
    assert b.regret / b.uniform_regret < 0.6
    assert b.min_weight >= 0.05 - 1e-9
    assert b.final_weights[1] > 0.5


def test_fixed_horizon_case_matches_scipy_welch_test_on_the_same_devices() -> None:
    """Equal labels per device: the ratio estimate is the mean of device rates, its variance Welch's s^2/k."""
    r = simulate_peeking(Design(effect=0.01, windows=10, devices_per_arm=300), sims=5, seed=14)
    for i in range(r.sims):
        num, den = r.last_num[i], r.last_den[i]
        # Equal denominators are needed for the equivalence: devices that reported from the first window.
        full0, full1 = den[0] == den[0].max(), den[1] == den[1].max()
        a, b = num[0][full0] / den[0][full0], num[1][full1] / den[1][full1]
        ta = estimate(num[0][full0], den[0][full0])
        tb = estimate(num[1][full1], den[1][full1])
        assert ta is not None and tb is not None
        d = difference(tb, ta, ALPHA, 0.02)
        welch = sps.ttest_ind(b, a, equal_var=False)
        se = (b.mean() - a.mean()) / welch.statistic
        assert d.diff == pytest.approx(b.mean() - a.mean(), rel=1e-9)
        assert d.var == pytest.approx(se**2, rel=1e-9)
        _, p = fixed_horizon(d.diff, d.var, ALPHA)
        assert float(p) == pytest.approx(welch.pvalue, abs=0.003)  # normal vs t with hundreds of df
        ci = welch.confidence_interval(0.95)
        assert d.fixed_low == pytest.approx(ci.low, abs=2e-4)
        assert d.fixed_high == pytest.approx(ci.high, abs=2e-4)


def test_the_always_valid_interval_is_wider_than_the_fixed_one_and_agrees_with_its_p_value() -> None:
    rng = np.random.default_rng(5)
    diffs = rng.normal(0, 0.02, 500)
    vars_ = 10 ** rng.uniform(-7, -3, 500)
    radius = cs_radius(vars_, ALPHA, 0.02)
    half, _ = fixed_horizon(diffs, vars_, ALPHA)
    assert (radius > half).all()
    p = always_valid_p(diffs, vars_, 0.02)
    assert ((np.abs(diffs) > radius) == (p < ALPHA)).all()


def test_ratio_uses_devices_as_units_and_handles_missing_data() -> None:
    r, v, k = ratio([8, 0, 9], [10, 0, 10])
    assert (float(r), int(k)) == (pytest.approx(17 / 20), 2)
    assert float(v) == pytest.approx(2 / 1 * ((8 - 0.85 * 10) ** 2 + (9 - 0.85 * 10) ** 2) / 400)
    assert estimate([], []) is None
    _r1, v1, k1 = ratio([5], [10])
    assert int(k1) == 1 and np.isinf(v1)
    # a proportion with no errors at all is not certain: the binomial floor applies
    _, v0, _ = ratio([10, 10, 10], [10, 10, 10], proportion=True)
    assert float(v0) > 0
