"""Rollout analysis (pure): checks, matching, and a simulation of whole stages.

The simulation is the acceptance criterion: over seeded runs, a candidate equal
to the baseline passes its stage in at least 95% of runs, and one with a real
regression (error rate 1% -> 3%, devices overdispersed) fails in at least 95%.
"""

from __future__ import annotations

import numpy as np
import pytest

from controller.rollouts.analysis import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    SKIPPED,
    Observation,
    Unit,
    analyse,
    match_baseline,
    rate,
)
from controller.rollouts.plan import Stage, Thresholds
from shared.telemetry import N_LATENCY_BUCKETS, latency_bucket

pytestmark = pytest.mark.unit

TH = Thresholds()
STAGE = Stage(share=0.25, min_duration_s=180, min_devices=5, min_inferences=2000)


def _lat(rng: np.random.Generator, n: int, median_ms: float) -> tuple[int, ...]:
    b = [0] * N_LATENCY_BUCKETS
    for v in rng.lognormal(np.log(median_ms), 0.3, n):
        b[latency_bucket(float(v))] += 1
    return tuple(b)


def _device(rng: np.random.Generator, name: str, n: int, p: float, *, kappa: float = 300, lat_ms: float = 2.0, labels: int = 0,
            acc: float = 0.95, stratum: tuple[str, str] = ("pi4", "eu")) -> Unit:  # fmt: skip
    p_dev = rng.beta(p * kappa, (1 - p) * kappa) if 0 < p < 1 and kappa < 1e8 else p  # devices differ
    errors = int(rng.binomial(n, p_dev))
    correct = int(rng.binomial(labels, acc)) if labels else 0
    preds = tuple(int(x) for x in rng.multinomial(n, [0.1] * 10))
    return Unit(name, stratum, n, errors, labels, correct, _lat(rng, min(n, 200), lat_ms), preds)


def _sum(a: Unit, b: Unit) -> Unit:
    return Unit(
        a.device_id, a.stratum, a.count + b.count, a.errors + b.errors, a.labels + b.labels, a.correct + b.correct,
        tuple(x + y for x, y in zip(a.latency_ms, b.latency_ms, strict=True)),
        tuple(x + y for x, y in zip(a.predictions, b.predictions, strict=True)),
    )  # fmt: skip


def simulate_stage(seed: int, p_base: float, p_cand: float, looks: int = 6, interval_s: float = 60) -> str:
    """One stage analysed every interval as the leader does: fail stops it, pass needs the minimums."""
    rng = np.random.default_rng(seed)
    n_c, n_b = 12, 36
    # each device keeps its own error rate across intervals
    rates_c = rng.beta(p_cand * 300, (1 - p_cand) * 300, n_c)
    rates_b = rng.beta(p_base * 300, (1 - p_base) * 300, n_b)
    cum_c: list[Unit] = []
    cum_b: list[Unit] = []
    for look in range(1, looks + 1):
        new_c = [_device(rng, f"c{i}", int(rng.poisson(60)), float(r), kappa=1e9) for i, r in enumerate(rates_c)]
        new_b = [_device(rng, f"b{i}", int(rng.poisson(60)), float(r), kappa=1e9) for i, r in enumerate(rates_b)]
        cum_c = new_c if not cum_c else [_sum(a, b) for a, b in zip(cum_c, new_c, strict=True)]
        cum_b = new_b if not cum_b else [_sum(a, b) for a, b in zip(cum_b, new_b, strict=True)]
        obs = Observation("canary", look * interval_s, tuple(cum_c), tuple(cum_b), assigned=n_c, baseline_devices=n_b)
        v = analyse(obs, STAGE, TH)
        if v.outcome in (FAIL, PASS):
            return v.outcome
    return INCONCLUSIVE


def test_simulation_equal_candidate_passes_at_least_95_percent() -> None:
    outcomes = [simulate_stage(seed, 0.01, 0.01) for seed in range(200)]
    assert outcomes.count(PASS) / len(outcomes) >= 0.95, {o: outcomes.count(o) for o in set(outcomes)}


def test_simulation_regression_1_to_3_percent_fails_at_least_95_percent() -> None:
    outcomes = [simulate_stage(seed, 0.01, 0.03) for seed in range(200)]
    assert outcomes.count(FAIL) / len(outcomes) >= 0.95, {o: outcomes.count(o) for o in set(outcomes)}


def test_a_handful_of_devices_neither_fails_nor_passes_by_noise() -> None:
    rng = np.random.default_rng(1)
    cand = (Unit("c1", count=40, errors=2, latency_ms=_lat(rng, 40, 2.0)),)
    base = (Unit("b1", count=40, errors=0, latency_ms=_lat(rng, 40, 2.0)), Unit("b2", count=40, errors=1))
    v = analyse(Observation("canary", 3600, cand, base, assigned=1, baseline_devices=2), Stage(share=0.1, min_duration_s=0), TH)
    assert v.outcome == INCONCLUSIVE
    assert any("low traffic" in r for r in v.reasons)
    assert {c.name: c.outcome for c in v.checks}["error_rate"] == SKIPPED


def test_one_device_with_all_the_errors_does_not_make_the_arm_certain() -> None:
    """Cluster-robust variance: 10 devices, one of them broken, is not 10x the evidence of one."""
    units = [Unit(f"d{i}", count=1000, errors=0) for i in range(9)] + [Unit("d9", count=1000, errors=100)]
    r = rate(units, "errors", "count")
    assert r is not None
    binomial_se = (r.p * (1 - r.p) / 10000) ** 0.5
    assert r.var**0.5 > 2.5 * binomial_se


def test_device_rollbacks_fail_at_once_whatever_the_traffic() -> None:
    obs = Observation("canary", 1, (), (), assigned=2, rollbacks=("dev-1",))
    v = analyse(obs, STAGE, TH)
    assert v.outcome == FAIL and "rolled the candidate back" in v.reasons[0]


def test_accuracy_drop_with_labels_fails_and_equal_accuracy_passes() -> None:
    rng = np.random.default_rng(3)
    base = tuple(_device(rng, f"b{i}", 1500, 0.0, labels=1000, acc=0.95) for i in range(6))
    bad = tuple(_device(rng, f"c{i}", 1500, 0.0, labels=1000, acc=0.6) for i in range(6))
    good = tuple(_device(rng, f"g{i}", 1500, 0.0, labels=1000, acc=0.95) for i in range(6))
    stage = Stage(share=0.5, min_duration_s=0, min_devices=3, min_inferences=1000)
    v_bad = analyse(Observation("canary", 60, bad, base, assigned=6, baseline_devices=6), stage, TH)
    checks = {c.name: c for c in v_bad.checks}
    assert v_bad.outcome == FAIL and checks["accuracy_loss"].outcome == FAIL
    assert checks["accuracy_loss"].figures["candidate"] > 0.3  # the numbers compared are in the evidence
    v_good = analyse(Observation("canary", 60, good, base, assigned=6, baseline_devices=6), stage, TH)
    assert v_good.outcome == PASS, v_good.reasons


def test_latency_regression_fails_on_the_p95_ratio() -> None:
    rng = np.random.default_rng(4)
    base = tuple(_device(rng, f"b{i}", 500, 0.0, lat_ms=2.0) for i in range(6))
    slow = tuple(_device(rng, f"c{i}", 500, 0.0, lat_ms=6.0) for i in range(6))
    stage = Stage(share=0.5, min_duration_s=0, min_devices=3, min_inferences=1000)
    v = analyse(Observation("canary", 60, slow, base, assigned=6, baseline_devices=6), stage, TH)
    checks = {c.name: c for c in v.checks}
    assert checks["latency_p95_ratio"].outcome == FAIL and checks["latency_p95_ratio"].figures["ratio"] > 2


def test_baseline_is_matched_by_hardware_class_and_region() -> None:
    """A baseline region with many errors must not make a candidate in a quiet region look good."""
    cand = [Unit("c1", ("pi4", "eu"), 1000, 30)]
    base = [Unit("b1", ("pi4", "eu"), 1000, 5), Unit("b2", ("pi4", "eu"), 1000, 6)]
    base += [Unit(f"x{i}", ("jetson", "us"), 1000, 80) for i in range(8)]
    matched = match_baseline(cand, base)
    assert sorted(u.device_id for u in matched) == ["b1", "b2"]
    assert sum(u.weight for u in matched) == pytest.approx(1.0)
    # no device of the stratum: falls back to the hardware class, then to everyone
    assert {u.device_id for u in match_baseline([Unit("c", ("pi4", "ap"))], base)} == {"b1", "b2"}
    assert len(match_baseline([Unit("c", ("nuc", "ap"))], base)) == 10


def test_shadow_stage_judges_agreement() -> None:
    shadow = tuple(Unit(f"s{i}", count=300, errors=0, agree=280, disagree=20) for i in range(3))
    prod = tuple(Unit(f"s{i}", count=300, errors=0) for i in range(3))
    stage = Stage(kind="shadow", share=0.05, min_duration_s=0, min_devices=1, min_inferences=100)
    assert analyse(Observation("shadow", 60, shadow, prod, assigned=3), stage, TH).outcome == PASS
    poor = tuple(Unit(f"s{i}", count=300, errors=0, agree=150, disagree=150) for i in range(3))
    v = analyse(Observation("shadow", 60, poor, prod, assigned=3), stage, TH)
    assert v.outcome == FAIL and "agrees with production on 50.0%" in v.reasons[0]


def test_the_last_stage_has_no_baseline_and_passes_on_duration_without_rollbacks() -> None:
    stage = Stage(share=1.0, min_duration_s=120)
    assert analyse(Observation("canary", 60, (), (), assigned=5, final=True), stage, TH).outcome == INCONCLUSIVE
    assert analyse(Observation("canary", 120, (), (), assigned=5, final=True), stage, TH).outcome == PASS
