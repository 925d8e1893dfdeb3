"""Judge a stage: candidate devices against matched baseline devices, from merged telemetry (pure).

The unit of analysis is the device: each :class:`Unit` holds one device's sums
over the stage's windows. Rates are ratio estimates over devices with a
cluster-robust variance (devices differ; inferences of one device are not
independent), floored by the binomial variance so a handful of quiet devices
cannot look certain. Baseline devices are matched to candidate devices by
(hardware class, region), falling back to hardware class, then to the cohort,
and weighted so the baseline has the candidate's mix (:func:`match_baseline`).

Each check says ``pass``, ``fail``, ``inconclusive`` or ``skipped`` (too little
data of that kind, e.g. no labels). The verdict fails if any check fails,
passes only if every check that ran passes *and* the stage's minimums (duration,
devices, inferences) are met, and is otherwise inconclusive — which never
promotes. Failure needs confidence ``1 - alpha_fail`` that the candidate is
worse *and* a point estimate beyond the tolerated margin; a pass needs
confidence ``1 - alpha_pass`` that the candidate is within the margin.

Rates fail on either of two tests (ADR 0066). The **sequential** one is an
always-valid one-sided test (a normal mixture over regressions of size about
``sequential_tau``, read through Ville's inequality): its error bound holds
however often the leader looks, so it needs no minimum sample beyond
``sequential_min_n`` and fails a stage on the first look where the evidence is
strong (a candidate that errs on a third of its first 30 inferences). The
**fixed** one (a z-test per look, after ``min_labels`` / ``fail_min_inferences``)
catches moderate regressions once enough data has come in. Prediction shift is
judged on the Jensen-Shannon distance *beyond what sampling noise alone gives*
(the plug-in divergence less its bias, ``dof / (8 N ln 2)`` bits), so few
predictions neither fake a shift nor need a loose limit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from statistics import NormalDist
from typing import Any

from controller.rollouts.plan import SHADOW, Stage, Thresholds
from shared.telemetry import LATENCY_EDGES_MS

PASS, FAIL, INCONCLUSIVE, SKIPPED = "pass", "fail", "inconclusive", "skipped"
_N = NormalDist()


@dataclass(frozen=True)
class Unit:
    """One device's sums over the analysed windows (see ``shared.telemetry`` for the fields)."""

    device_id: str
    stratum: tuple[str, str] = ("", "")  # (hardware class, region)
    count: int = 0
    errors: int = 0
    labels: int = 0
    correct: int = 0
    latency_ms: tuple[float, ...] = ()
    predictions: tuple[float, ...] = ()
    agree: int = 0
    disagree: int = 0
    weight: float = 1.0
    dropped: int = 0  # shadow: comparisons lost because the device's shadow queue was full
    sampled_out: int = 0  # shadow: production inferences the sample rate left uncompared
    confusion: tuple[tuple[int, ...], ...] = ()  # shadow: [production class][shadow class] counts


@dataclass(frozen=True)
class Observation:
    """What the engine saw for one stage."""

    kind: str  # shadow | canary
    elapsed_s: float  # since the stage started
    canary: tuple[Unit, ...]  # candidate devices reporting the candidate
    baseline: tuple[Unit, ...]  # baseline devices (unweighted; matched here) or, in shadow, the same devices' production
    assigned: int = 0  # devices put on the candidate in this rollout
    offline: int = 0  # ... of which went offline after they got it
    offline_before: int = 0  # ... of which were offline already (counted apart; they get it when they return)
    baseline_devices: int = 0  # baseline devices in the cohort
    baseline_offline: int = 0  # ... of which went offline during the stage
    rollbacks: tuple[str, ...] = ()  # devices whose agent rolled the candidate back (health check failed)
    final: bool = False  # the whole cohort is on the candidate: nothing left to compare with
    sample_rate: float = 1.0  # shadow stage: the share of production inferences the shadow model was asked to see


@dataclass(frozen=True)
class Check:
    name: str
    outcome: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    outcome: str
    reasons: tuple[str, ...]
    checks: tuple[Check, ...]

    def evidence(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "reasons": list(self.reasons), "checks": [asdict(c) for c in self.checks]}


# --- matching -------------------------------------------------------------------


def match_baseline(canary: Sequence[Unit], baseline: Sequence[Unit]) -> tuple[Unit, ...]:
    """Weight baseline devices so each candidate device is matched by its stratum's baseline devices.

    A candidate device's weight of 1 is shared by the baseline devices of its
    (hardware class, region); if there are none, of its hardware class; if none,
    of the whole baseline. Baseline devices matching no candidate device get weight 0.
    """
    if not baseline:
        return ()
    by_full: dict[tuple[str, str], list[int]] = defaultdict(list)
    by_hw: dict[str, list[int]] = defaultdict(list)
    for i, b in enumerate(baseline):
        by_full[b.stratum].append(i)
        by_hw[b.stratum[0]].append(i)
    weights = [0.0] * len(baseline)
    everyone = list(range(len(baseline)))
    for c in canary:
        group = by_full.get(c.stratum) or by_hw.get(c.stratum[0]) or everyone
        for i in group:
            weights[i] += 1.0 / len(group)
    return tuple(replace(b, weight=w) for b, w in zip(baseline, weights, strict=True) if w > 0)


# --- statistics -------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    p: float  # weighted ratio estimate
    var: float  # its variance (cluster-robust, floored by binomial; see pair_rates for the one compared)
    n: int  # raw denominator (inferences or labels)
    devices: int


def rate(units: Sequence[Unit], num: str, den: str) -> Rate | None:
    """Ratio estimate sum(w*num)/sum(w*den) over devices with its variance; None without data."""
    us = [u for u in units if getattr(u, den) > 0 and u.weight > 0]
    n_w = sum(u.weight * getattr(u, den) for u in us)
    if not us or n_w <= 0:
        return None
    e_w = sum(u.weight * getattr(u, num) for u in us)
    p = e_w / n_w
    k = len(us)
    cluster = 0.0
    if k > 1:
        cluster = k / (k - 1) * sum((u.weight * (getattr(u, num) - p * getattr(u, den))) ** 2 for u in us) / n_w**2
    n_raw = sum(getattr(u, den) for u in us)
    e_raw = sum(getattr(u, num) for u in us)
    shrunk = (e_raw + 0.5) / (n_raw + 1.0)  # never 0 or 1: zero observed errors is not zero variance
    binom = shrunk * (1 - shrunk) * sum(u.weight**2 * getattr(u, den) for u in us) / n_w**2
    return Rate(p, max(cluster, binom), n_raw, k)


RELIABLE_CLUSTERS = 10  # devices in an arm from which its own cluster-robust variance is trusted as a floor


def pair_rates(cand: Sequence[Unit], base: Sequence[Unit], num: str, den: str) -> tuple[Rate | None, Rate | None, float]:
    """Both arms' rates, their variances sharing one dispersion factor estimated from every device of both arms.

    With a few devices per arm, an arm's own cluster-robust variance rests on one to a few
    degrees of freedom and is mostly noise (a max with the binomial floor then inflates it on
    average). How much devices spread beyond binomial noise is a property of the fleet, so it
    is estimated once, from all devices: Pearson's dispersion
    ``sum_i (x_i - p_arm n_i)^2 / (n_i p_arm (1 - p_arm)) / (K - 2)`` over the ``K`` devices
    with data (quasi-binomial), and each arm's binomial variance is multiplied by
    ``max(1, dispersion)``. An arm with ``RELIABLE_CLUSTERS`` devices or more keeps its own
    cluster-robust variance as a floor (a candidate that breaks on some devices only).
    Returns (candidate, baseline, dispersion); a single device per arm has no dispersion
    estimate and keeps :func:`rate`'s variance.
    """
    rc, rb = rate(cand, num, den), rate(base, num, den)
    if rc is None or rb is None:
        return rc, rb, 1.0
    pearson, k = 0.0, 0
    for units, r in ((cand, rc), (base, rb)):
        p = min(max(r.p, 0.5 / (r.n + 1.0)), 1 - 0.5 / (r.n + 1.0))
        for u in units:
            n_i = getattr(u, den)
            if n_i > 0 and u.weight > 0:
                pearson += (getattr(u, num) - p * n_i) ** 2 / (n_i * p * (1 - p))
                k += 1
    if k <= 2:
        return rc, rb, 1.0
    dispersion = pearson / (k - 2)

    def quasi(units: Sequence[Unit], r: Rate) -> Rate:
        us = [u for u in units if getattr(u, den) > 0 and u.weight > 0]
        n_w = sum(u.weight * getattr(u, den) for u in us)
        shrunk = (sum(getattr(u, num) for u in us) + 0.5) / (r.n + 1.0)
        binom = shrunk * (1 - shrunk) * sum(u.weight**2 * getattr(u, den) for u in us) / n_w**2
        var = binom * max(1.0, dispersion)
        return replace(r, var=max(var, r.var) if r.devices >= RELIABLE_CLUSTERS else var)

    return quasi(cand, rc), quasi(base, rb), dispersion


def always_valid_worse_p(diff: float, var: float, tau: float) -> float:
    """Always-valid p-value of "no worse" (``diff <= 0``) against "worse", from one look at ``diff`` of variance ``var``.

    ``1 / L`` with ``L`` the likelihood ratio of a half-normal mixture (scale ``tau``) over
    regressions ``delta > 0`` against ``delta = 0``::

        L = 2 sqrt(V / (V + tau^2)) exp(diff^2 tau^2 / (2 V (V + tau^2))) Phi(diff tau / sqrt(V (V + tau^2)))

    ``L`` is a nonnegative supermartingale while the candidate is no worse, so by Ville's
    inequality ``P(p <= alpha at any look) <= alpha``: the leader may look as often as it likes.
    """
    if not (var > 0 and math.isfinite(var) and math.isfinite(diff)):
        return 1.0
    t2 = tau * tau
    log_l = (
        math.log(2.0)
        + 0.5 * math.log(var / (var + t2))
        + diff * diff * t2 / (2 * var * (var + t2))
        + math.log(max(_N.cdf(diff * tau / math.sqrt(var * (var + t2))), 1e-300))
    )
    return 1.0 if log_l <= 0 else math.exp(-log_l)


def compare_rates(
    name: str, cand: Rate | None, base: Rate | None, margin: float, th: Thresholds, min_n: int, what: str, dispersion: float = 1.0
) -> Check:
    """One-sided tests on ``cand.p - base.p`` (higher is worse) against a tolerated ``margin``.

    Fails on the sequential (always-valid) test from ``sequential_min_n`` per arm, or on the
    fixed test from ``min_n`` per arm; passes only on the fixed bound from ``min_n``."""
    seq_min = min(th.sequential_min_n, min_n)
    if cand is None or base is None or cand.n < seq_min or base.n < seq_min:
        got = f"{cand.n if cand else 0} candidate / {base.n if base else 0} baseline"
        return Check(name, SKIPPED, f"too few {what} to judge ({got}; need {min_n} each)")
    diff = cand.p - base.p
    se = math.sqrt(cand.var + base.var)
    p_seq = always_valid_worse_p(diff, cand.var + base.var, th.sequential_tau)
    z_fail, z_pass = _N.inv_cdf(1 - th.alpha_fail), _N.inv_cdf(1 - th.alpha_pass)
    figures = {
        "candidate": round(cand.p, 6),
        "baseline": round(base.p, 6),
        "difference": round(diff, 6),
        "std_error": round(se, 6),
        "margin": round(margin, 6),
        "candidate_n": cand.n,
        "baseline_n": base.n,
        "candidate_devices": cand.devices,
        "baseline_devices": base.devices,
        "upper_bound": round(diff + z_pass * se, 6),
        "lower_bound": round(diff - z_fail * se, 6),
        "always_valid_p": float(f"{p_seq:.4g}"),
        "dispersion": round(dispersion, 3),
    }
    if diff > margin and p_seq <= th.alpha_fail:
        why = (
            f"{name} {cand.p:.4f} vs baseline {base.p:.4f}: worse beyond the margin {margin:.4f} (sequential test, p={p_seq:.2g})"
        )
        return Check(name, FAIL, why, {**figures, "test": "sequential"})
    if cand.n < min_n or base.n < min_n:
        got = f"{cand.n} candidate / {base.n} baseline"
        return Check(name, SKIPPED, f"too few {what} to judge ({got}; need {min_n} each)", figures)
    if diff > margin and diff - z_fail * se > 0:
        return Check(name, FAIL, f"{name} {cand.p:.4f} vs baseline {base.p:.4f}: worse beyond the margin {margin:.4f}", figures)
    if diff + z_pass * se < margin:
        return Check(name, PASS, f"{name} {cand.p:.4f} vs baseline {base.p:.4f}: within the margin", figures)
    return Check(
        name, INCONCLUSIVE, f"{name} {cand.p:.4f} vs baseline {base.p:.4f}: not yet sure it is within {margin:.4f}", figures
    )


def _buckets(units: Sequence[Unit], attr: str) -> list[float]:
    rows = [getattr(u, attr) for u in units if getattr(u, attr) and u.weight > 0]
    if not rows:
        return []
    n = max(len(r) for r in rows)
    out = [0.0] * n
    for u in units:
        vals = getattr(u, attr)
        if len(vals) == n:
            for i, v in enumerate(vals):
                out[i] += u.weight * v
    return out


def _quantile(buckets: Sequence[float], q: float) -> float:
    total = sum(buckets)
    rank, seen = q * total, 0.0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank and n:
            return LATENCY_EDGES_MS[i] if i < len(LATENCY_EDGES_MS) else math.inf
    return math.inf


def latency_check(canary: Sequence[Unit], baseline: Sequence[Unit], th: Thresholds) -> Check:
    """p95 ratio; failure needs the ratio of confidence bounds (order statistics) to exceed the limit."""
    c, b = _buckets(canary, "latency_ms"), _buckets(baseline, "latency_ms")
    nc, nb = sum(u.count for u in canary), sum(u.count for u in baseline)
    if not c or not b or nc < th.latency_min_samples or nb < th.latency_min_samples:
        return Check("latency_p95_ratio", SKIPPED, f"too few timed inferences ({nc} / {nb}; need {th.latency_min_samples} each)")
    z = _N.inv_cdf(1 - th.alpha_fail)
    q = 0.95
    c_lo = _quantile(c, max(0.0, q - z * math.sqrt(q * (1 - q) / nc)))
    b_hi = _quantile(b, min(1.0, q + z * math.sqrt(q * (1 - q) / nb)))
    c95, b95 = _quantile(c, q), _quantile(b, q)
    ratio, cautious = c95 / b95, c_lo / b_hi
    figures = {"candidate_p95_ms": c95, "baseline_p95_ms": b95, "ratio": round(ratio, 4), "cautious_ratio": round(cautious, 4)}
    figures["limit"] = th.max_latency_p95_ratio
    if cautious > th.max_latency_p95_ratio:
        return Check("latency_p95_ratio", FAIL, f"p95 {c95:.2f} ms vs baseline {b95:.2f} ms (x{ratio:.2f})", figures)
    if ratio <= th.max_latency_p95_ratio:
        return Check("latency_p95_ratio", PASS, f"p95 {c95:.2f} ms vs baseline {b95:.2f} ms (x{ratio:.2f})", figures)
    return Check("latency_p95_ratio", INCONCLUSIVE, f"p95 ratio x{ratio:.2f} above the limit, not yet significant", figures)


def shift_check(canary: Sequence[Unit], baseline: Sequence[Unit], th: Thresholds) -> Check:
    """Prediction-distribution shift: Jensen-Shannon distance beyond sampling noise, significant by a chi-square test.

    The divergence measured between two histograms of ``n_c`` and ``n_b`` counts is too
    large by about ``dof / (8 N ln 2)`` bits (``N = n_c n_b / (n_c + n_b)``, ``dof`` = classes
    - 1): with no shift at all, ``8 N ln(2) JSD`` is about chi-square with ``dof`` degrees of
    freedom. That bias is taken away; the square root of what is left (a distance, base 2)
    is held against ``max_prediction_shift``, and the raw distance is reported beside it."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chi2_contingency

    c, b = _buckets(canary, "predictions"), _buckets(baseline, "predictions")
    if not c or len(c) != len(b) or sum(c) < th.fail_min_inferences or sum(b) < th.fail_min_inferences:
        return Check("prediction_shift", SKIPPED, "too few predictions to compare distributions")
    cols = [i for i in range(len(c)) if c[i] + b[i] > 0]
    if len(cols) < 2:
        return Check("prediction_shift", PASS, "a single predicted class in both arms", {"js_distance": 0.0})
    b_raw = sum(u.count for u in baseline)  # baseline counts scaled back to raw numbers for the test
    scale = b_raw / sum(b) if sum(b) else 1.0
    table = [[c[i] for i in cols], [b[i] * scale for i in cols]]
    chi2, p_value, dof, _ = chi2_contingency(table, correction=False)
    n_c, n_b = sum(table[0]), sum(table[1])
    n_h = n_c * n_b / (n_c + n_b)
    js = float(jensenshannon([c[i] for i in cols], [b[i] for i in cols], base=2))
    excess = math.sqrt(max(0.0, js * js - dof / (8 * n_h * math.log(2))))
    figures = {"js_distance": round(js, 4), "js_beyond_noise": round(excess, 4), "chi2": round(float(chi2), 3)}
    figures |= {"dof": int(dof), "p_value": float(p_value), "limit": th.max_prediction_shift}
    if excess > th.max_prediction_shift and p_value < th.alpha_fail:
        why = f"predictions shifted (Jensen-Shannon distance {excess:.3f} beyond noise, {js:.3f} raw; p={float(p_value):.2g})"
        return Check("prediction_shift", FAIL, why, figures)
    return Check("prediction_shift", PASS, f"Jensen-Shannon distance {excess:.3f} beyond noise ({js:.3f} raw)", figures)


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return centre - half, centre + half


def confusion_of(units: Sequence[Unit]) -> list[list[int]]:
    """The shadow comparisons' confusion matrix summed over devices (those of the most common size)."""
    sizes = [len(u.confusion) for u in units if u.confusion]
    if not sizes:
        return []
    k = max(set(sizes), key=sizes.count)
    out = [[0] * k for _ in range(k)]
    for u in units:
        if len(u.confusion) == k:
            for i, row in enumerate(u.confusion):
                for j, v in enumerate(row):
                    out[i][j] += v
    return out


def agreement_check(shadow: Sequence[Unit], th: Thresholds, sample_rate: float = 1.0) -> Check:
    """Shadow agreement with production (Wilson bounds), with what it rests on: the confusion matrix,
    per-class agreement, and the comparisons sampled out or dropped. A pass needs at most
    ``max_shadow_dropped`` of the sampled comparisons dropped: when the shadow queue overflows,
    bursts go uncompared and agreement describes only the quiet part of the traffic."""
    agree, disagree = sum(u.agree for u in shadow), sum(u.disagree for u in shadow)
    dropped, sampled_out = sum(u.dropped for u in shadow), sum(u.sampled_out for u in shadow)
    n = agree + disagree
    offered = n + dropped
    cm = confusion_of(shadow)
    per_class = [
        {"class": i, "production": sum(row), "agreement": round(row[i] / sum(row), 4)} for i, row in enumerate(cm) if sum(row)
    ]
    figures: dict[str, Any] = {"compared": n, "dropped": dropped, "sampled_out": sampled_out, "sample_rate": sample_rate}
    figures |= {"dropped_share": round(dropped / offered, 4) if offered else 0.0}
    figures |= {"observed_rate": round(n / (offered + sampled_out), 4) if offered + sampled_out else None}
    figures |= {"confusion": cm, "per_class": per_class, "minimum": th.min_shadow_agreement}
    if n < th.fail_min_inferences:
        return Check("shadow_agreement", INCONCLUSIVE, f"{n} shadow comparisons; need {th.fail_min_inferences}", figures)
    lo, _ = wilson(agree, n, _N.inv_cdf(1 - th.alpha_pass))
    _, hi = wilson(agree, n, _N.inv_cdf(1 - th.alpha_fail))
    figures |= {"agreement": round(agree / n, 4), "lower_bound": round(lo, 4), "upper_bound": round(hi, 4)}
    said = f"shadow agrees with production on {agree / n:.1%} of {n}"
    if dropped:
        said += f" ({dropped} comparisons dropped, queue full)"
    if hi < th.min_shadow_agreement:
        return Check("shadow_agreement", FAIL, said, figures)
    if offered and dropped / offered > th.max_shadow_dropped:
        why = (
            f"{dropped / offered:.0%} of the sampled shadow comparisons were dropped (the shadow queue was full): "
            f"agreement {agree / n:.1%} covers only part of the traffic; lower the stage's sample_rate"
        )
        return Check("shadow_agreement", INCONCLUSIVE, why, figures)
    if lo >= th.min_shadow_agreement:
        return Check("shadow_agreement", PASS, said, figures)
    return Check("shadow_agreement", INCONCLUSIVE, f"agreement {agree / n:.1%} of {n}: not yet sure it is >= minimum", figures)


def device_checks(obs: Observation, th: Thresholds) -> list[Check]:
    """Absolute checks on candidate devices: rollbacks by their agents, devices gone offline."""
    out = []
    n_rb = len(obs.rollbacks)
    figures: dict[str, Any] = {"devices": sorted(obs.rollbacks), "limit": th.max_device_rollbacks}
    if n_rb > th.max_device_rollbacks:
        out.append(
            Check("device_rollbacks", FAIL, f"{n_rb} device(s) rolled the candidate back (on-device health check)", figures)
        )
    else:
        out.append(Check("device_rollbacks", PASS, f"{n_rb} device rollbacks", figures))
    c_off = obs.offline / obs.assigned if obs.assigned else 0.0
    b_off = obs.baseline_offline / obs.baseline_devices if obs.baseline_devices else 0.0
    figures = {"candidate_offline": obs.offline, "candidate_devices": obs.assigned, "baseline_offline": obs.baseline_offline}
    figures |= {"baseline_devices": obs.baseline_devices, "offline_before_assignment": obs.offline_before}
    if obs.offline >= 2 and c_off - b_off > th.max_offline_increase:
        out.append(Check("offline_rate", FAIL, f"{c_off:.0%} of candidate devices offline vs {b_off:.0%} of baseline", figures))
    else:
        out.append(Check("offline_rate", PASS, f"{c_off:.0%} of candidate devices offline vs {b_off:.0%}", figures))
    return out


def minimums(obs: Observation, stage: Stage) -> list[str]:
    """Why the stage cannot pass yet, whatever the checks say (empty once every minimum is met)."""
    why = []
    if obs.elapsed_s < stage.min_duration_s:
        why.append(f"stage has run {obs.elapsed_s:.0f} s of its minimum {stage.min_duration_s:.0f} s")
    if obs.final:
        return why
    if len(obs.canary) < stage.min_devices:
        why.append(
            f"{len(obs.canary)} candidate device(s) reporting ({obs.assigned} assigned, "
            f"{obs.offline + obs.offline_before} offline); "
            f"need {stage.min_devices}"
        )
    if len(obs.baseline) < stage.min_devices:
        why.append(f"{len(obs.baseline)} matched baseline device(s) reporting; need {stage.min_devices}")
    n = sum(u.count for u in obs.canary)
    if n < stage.min_inferences:
        why.append(f"low traffic: {n} inferences on the candidate of the {stage.min_inferences} needed")
    return why


def analyse(obs: Observation, stage: Stage, th: Thresholds) -> Verdict:
    """The stage's verdict from what was observed (see the module docstring)."""
    checks = device_checks(obs, th)
    if not obs.final:
        base = obs.baseline if obs.kind == SHADOW else match_baseline(obs.canary, obs.baseline)
        err_c, err_b, disp = pair_rates(obs.canary, base, "errors", "count")
        margin = max(th.max_error_increase, (th.max_error_ratio - 1) * (err_b.p if err_b else 0.0))
        checks.append(compare_rates("error_rate", err_c, err_b, margin, th, th.fail_min_inferences, "inferences", disp))
        checks.append(latency_check(obs.canary, base, th))
        if obs.kind == SHADOW:
            checks.append(agreement_check(obs.canary, th, obs.sample_rate))
        else:
            wrong_c, wrong_b, disp = pair_rates(_wrong(obs.canary), _wrong(base), "errors", "labels")
            acc = compare_rates("accuracy_loss", wrong_c, wrong_b, th.max_accuracy_drop, th, th.min_labels, "labels", disp)
            checks.append(acc)
            checks.append(shift_check(obs.canary, base, th))
    failed = [c for c in checks if c.outcome == FAIL]
    if failed:
        return Verdict(FAIL, tuple(c.reason for c in failed), tuple(checks))
    held = minimums(obs, stage) + [c.reason for c in checks if c.outcome == INCONCLUSIVE]
    if held:
        return Verdict(INCONCLUSIVE, tuple(held), tuple(checks))
    return Verdict(PASS, ("every check passed and the stage's minimums are met",), tuple(checks))


def fails_at_any_look(verdict: Verdict) -> bool:
    """The verdict fails on a check that may be read at any moment: an agent rolled the candidate
    back, or an always-valid (sequential) test. The leader's quick looks between analyses act on these only."""
    return verdict.outcome == FAIL and any(
        c.outcome == FAIL and (c.name == "device_rollbacks" or c.figures.get("test") == "sequential") for c in verdict.checks
    )


def _wrong(units: Sequence[Unit]) -> list[Unit]:
    """Units whose ``errors`` are wrong labelled predictions (accuracy as an error rate over labels)."""
    return [replace(u, errors=u.labels - u.correct) for u in units]
