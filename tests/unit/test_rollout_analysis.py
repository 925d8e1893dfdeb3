"""Rollout analysis (pure): checks, matching, and a simulation of whole stages.

The simulation is the acceptance criterion: over seeded runs, a candidate equal
to the baseline passes its stage in at least 95% of runs, and one with a real
regression (error rate 1% -> 3%, devices overdispersed) fails in at least 95%.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from controller.rollouts.analysis import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    SKIPPED,
    Observation,
    Unit,
    agreement_check,
    always_valid_worse_p,
    analyse,
    compare_rates,
    fails_at_any_look,
    match_baseline,
    pair_rates,
    rate,
    shift_check,
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


# --- failing fast (ADR 0066) ------------------------------------------------------------

FAST_STAGE = Stage(share=0.34, min_duration_s=6, min_devices=2, min_inferences=100)
BENCH_TH = Thresholds(min_labels=30, fail_min_inferences=30, max_accuracy_drop=0.05, latency_min_samples=10**9)
# the class frequencies of the digits models of scripts/bench.py rollout: one epoch of training, and 61
BAD_PREDICTIONS = np.array([164, 368, 120, 199, 183, 140, 169, 178, 2, 274]) / 1797
GOOD_PREDICTIONS = np.array([180, 188, 171, 169, 174, 182, 181, 195, 160, 197]) / 1797


def test_a_strong_regression_fails_on_the_first_look_long_before_the_fixed_minimums() -> None:
    """A third of 30 inferences failing is strong evidence: the always-valid test fails it with no 100-inference minimum."""
    cand = tuple(Unit(f"c{i}", count=10, errors=e) for i, e in enumerate((3, 4, 3)))
    base = tuple(Unit(f"b{i}", count=100, errors=e) for i, e in enumerate((1, 0, 1, 0, 1, 1)))
    v = analyse(Observation("canary", 10, cand, base, assigned=3, baseline_devices=6), FAST_STAGE, TH)
    er = {c.name: c for c in v.checks}["error_rate"]
    assert v.outcome == FAIL and er.outcome == FAIL and er.figures["test"] == "sequential"
    assert er.figures["candidate_n"] < TH.fail_min_inferences and er.figures["always_valid_p"] < TH.alpha_fail
    # one failure in 30 is no evidence of anything: held, not failed
    mild = tuple(Unit(f"c{i}", count=10, errors=e) for i, e in enumerate((1, 0, 0)))
    v = analyse(Observation("canary", 10, mild, base, assigned=3, baseline_devices=6), FAST_STAGE, TH)
    assert v.outcome == INCONCLUSIVE and {c.name: c.outcome for c in v.checks}["error_rate"] == SKIPPED


def test_always_valid_p_is_one_without_evidence_and_falls_with_it() -> None:
    assert always_valid_worse_p(-0.1, 0.001, 0.2) == 1.0
    assert always_valid_worse_p(0.1, 0.0, 0.2) == 1.0
    ps = [always_valid_worse_p(0.1, v, 0.2) for v in (0.01, 0.003, 0.001, 0.0003)]
    assert ps == sorted(ps, reverse=True) and ps[-1] < 1e-4


def _sequential_false_failure(seed: int, kappa: float, looks: int = 60) -> bool:
    """An equal candidate (5% errors) on 3 devices against 3, looked at every 10 inferences per device."""
    rng = np.random.default_rng(seed)
    th = Thresholds(fail_min_inferences=10**9)  # only the sequential test can fail
    rates = rng.beta(0.05 * kappa, 0.95 * kappa, 6)  # devices differ
    sums = np.zeros((6, 2))
    for _ in range(looks):
        n = rng.poisson(10, 6)
        sums[:, 0] += n
        sums[:, 1] += rng.binomial(n, rates)
        units = [Unit(f"d{i}", count=int(a[0]), errors=int(a[1])) for i, a in enumerate(sums)]
        c, b, disp = pair_rates(units[:3], units[3:], "errors", "count")
        if compare_rates("error_rate", c, b, 0.01, th, 10**9, "inferences", disp).outcome == FAIL:
            return True
    return False


def test_the_sequential_test_keeps_its_error_rate_however_often_it_looks() -> None:
    """60 looks at an equal candidate: the always-valid test fails it about as rarely as alpha_fail (0.01) says."""
    homogeneous = sum(_sequential_false_failure(seed, 1e9) for seed in range(300))
    overdispersed = sum(_sequential_false_failure(seed, 300) for seed in range(300))
    assert homogeneous <= 3 and overdispersed <= 6, (homogeneous, overdispersed)


def _bench_stage(seed: int, acc_c: float, pred_c: np.ndarray, looks: int = 6, per_look: int = 16) -> tuple[str, int]:
    """3 candidate devices against 3 baseline devices, labelled traffic, a look every 2 s (as the rollout bench)."""
    rng = np.random.default_rng(seed)
    sums = np.zeros((6, 12))  # per device: count, correct, 10 prediction classes
    for look in range(1, looks + 1):
        for d in range(6):
            cand = d < 3
            n = rng.poisson(per_look * (0.75 if cand and look == 1 else 1.0))  # the first window is partial
            sums[d, 0] += n
            sums[d, 1] += rng.binomial(n, acc_c if cand else 0.9)
            sums[d, 2:] += rng.multinomial(n, pred_c if cand else GOOD_PREDICTIONS)
        units = [
            Unit(f"d{d}", count=int(a[0]), labels=int(a[0]), correct=int(a[1]), predictions=tuple(int(x) for x in a[2:]))
            for d, a in enumerate(sums)
        ]
        obs = Observation("canary", look * 2.0, tuple(units[:3]), tuple(units[3:]), assigned=3, baseline_devices=3)
        v = analyse(obs, FAST_STAGE, BENCH_TH)
        if v.outcome != INCONCLUSIVE:
            return v.outcome, look
    return INCONCLUSIVE, looks


def test_simulation_the_benchs_less_accurate_candidate_fails_within_two_looks() -> None:
    """Accuracy 69% against 90% and the one-epoch model's predictions: failed by the second look in >= 85% of runs."""
    outcomes = [_bench_stage(seed, 0.69, BAD_PREDICTIONS) for seed in range(200)]
    assert all(o == FAIL for o, _ in outcomes)
    assert sum(look <= 2 for _, look in outcomes) / len(outcomes) >= 0.85, outcomes


def test_simulation_the_benchs_good_candidate_is_rarely_failed() -> None:
    outcomes = [_bench_stage(seed, 0.9, GOOD_PREDICTIONS) for seed in range(200)]
    assert sum(o == FAIL for o, _ in outcomes) / len(outcomes) <= 0.05, outcomes


def test_prediction_shift_is_judged_beyond_sampling_noise() -> None:
    """100 predictions from the same 10 classes look shifted by a raw Jensen-Shannon distance; not beyond noise."""
    rng = np.random.default_rng(7)
    raw, beyond, failed = [], [], 0
    for _ in range(100):
        c = (Unit("c", count=100, predictions=tuple(int(x) for x in rng.multinomial(100, GOOD_PREDICTIONS))),)
        b = (Unit("b", count=100, predictions=tuple(int(x) for x in rng.multinomial(100, GOOD_PREDICTIONS))),)
        check = shift_check(c, b, TH)
        failed += check.outcome == FAIL  # only when chance makes it both beyond the limit and significant (alpha 0.01)
        raw.append(check.figures["js_distance"])
        beyond.append(check.figures["js_beyond_noise"])
    assert np.median(raw) > 0.15 and np.median(beyond) < 0.05 and failed <= 3
    from scipy.spatial.distance import jensenshannon

    truth = float(jensenshannon(BAD_PREDICTIONS, GOOD_PREDICTIONS, base=2))
    checks = [
        shift_check(
            (Unit("c", count=150, predictions=tuple(int(x) for x in rng.multinomial(150, BAD_PREDICTIONS))),),
            (Unit("b", count=150, predictions=tuple(int(x) for x in rng.multinomial(150, GOOD_PREDICTIONS))),),
            TH,
        )
        for _ in range(100)
    ]
    est = np.median([c.figures["js_beyond_noise"] for c in checks])
    assert abs(est - truth) < 0.03, (truth, est)  # about the true distance; the noise-free part of it
    skewed = np.array([0.3, 0.25, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.1, 0.05])  # distance ~0.33 from the good model's
    outcomes = [
        shift_check(
            (Unit("c", count=150, predictions=tuple(int(x) for x in rng.multinomial(150, skewed))),),
            (Unit("b", count=150, predictions=tuple(int(x) for x in rng.multinomial(150, GOOD_PREDICTIONS))),),
            TH,
        ).outcome
        for _ in range(100)
    ]
    assert outcomes.count(FAIL) >= 90


def test_shadow_agreement_reports_its_confusion_matrix_and_doubts_a_pass_when_comparisons_were_dropped() -> None:
    cm = ((90, 10), (0, 100))
    shadow = tuple(Unit(f"s{i}", count=200, agree=190, disagree=10, dropped=5, sampled_out=200, confusion=cm) for i in range(3))
    odd = Unit("s9", count=10, agree=10, confusion=((1, 0, 0), (0, 1, 0), (0, 0, 8)))  # another model's size: left out
    check = agreement_check((*shadow, odd), TH, sample_rate=0.5)
    assert check.outcome == PASS, check.reason
    f = check.figures
    assert f["confusion"] == [[270, 30], [0, 300]] and f["per_class"][0] == {"class": 0, "production": 300, "agreement": 0.9}
    assert (f["dropped"], f["sampled_out"], f["sample_rate"]) == (15, 600, 0.5)
    busy = tuple(replace(u, dropped=150) for u in shadow)  # the queue overflowed: agreement covers the quiet part only
    check = agreement_check(busy, TH, sample_rate=0.5)
    assert check.outcome == INCONCLUSIVE and "dropped" in check.reason and check.figures["dropped_share"] > TH.max_shadow_dropped
    bad = tuple(replace(u, agree=100, disagree=100, dropped=150) for u in shadow)  # dropped comparisons never save a failure
    assert agreement_check(bad, TH).outcome == FAIL


def test_only_rollbacks_and_the_sequential_test_fail_between_analyses() -> None:
    rollback = analyse(Observation("canary", 1, (), (), assigned=2, rollbacks=("dev-1",)), STAGE, TH)
    assert fails_at_any_look(rollback)
    cand = tuple(Unit(f"c{i}", count=10, errors=e) for i, e in enumerate((3, 4, 3)))
    base = tuple(Unit(f"b{i}", count=100, errors=e) for i, e in enumerate((1, 0, 1, 0, 1, 1)))
    strong = analyse(Observation("canary", 10, cand, base, assigned=3, baseline_devices=6), FAST_STAGE, TH)
    assert fails_at_any_look(strong)
    # a moderate regression failed by the per-look test waits for the interval's analysis
    cand = tuple(Unit(f"c{i}", count=320, errors=e) for i, e in enumerate((7, 8, 7, 8, 7, 8)))  # 2.3% against 1%
    base = tuple(Unit(f"b{i}", count=320, errors=e) for i, e in enumerate((3, 3, 3, 3, 3, 4)))
    fixed = analyse(Observation("canary", 10, cand, base, assigned=6, baseline_devices=6), FAST_STAGE, TH)
    er = {c.name: c for c in fixed.checks}["error_rate"]
    assert er.outcome == FAIL and "test" not in er.figures and er.figures["always_valid_p"] > TH.alpha_fail
    assert not fails_at_any_look(fixed)
