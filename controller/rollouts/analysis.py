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
    var: float  # its variance (cluster-robust, floored by binomial)
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


def compare_rates(name: str, cand: Rate | None, base: Rate | None, margin: float, th: Thresholds, min_n: int, what: str) -> Check:
    """One-sided tests on ``cand.p - base.p`` (higher is worse) against a tolerated ``margin``."""
    if cand is None or base is None or cand.n < min_n or base.n < min_n:
        got = f"{cand.n if cand else 0} candidate / {base.n if base else 0} baseline"
        return Check(name, SKIPPED, f"too few {what} to judge ({got}; need {min_n} each)")
    diff = cand.p - base.p
    se = math.sqrt(cand.var + base.var)
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
    }
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
    """Prediction-distribution shift: Jensen-Shannon distance, significant by a chi-square test."""
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
    p_value = float(chi2_contingency(table)[1])
    js = float(jensenshannon([c[i] for i in cols], [b[i] for i in cols], base=2))
    figures = {"js_distance": round(js, 4), "p_value": p_value, "limit": th.max_prediction_shift}
    if js > th.max_prediction_shift and p_value < th.alpha_fail:
        return Check("prediction_shift", FAIL, f"predictions shifted (Jensen-Shannon distance {js:.3f})", figures)
    return Check("prediction_shift", PASS, f"Jensen-Shannon distance {js:.3f}", figures)


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return centre - half, centre + half


def agreement_check(shadow: Sequence[Unit], th: Thresholds) -> Check:
    agree, disagree = sum(u.agree for u in shadow), sum(u.disagree for u in shadow)
    n = agree + disagree
    if n < th.fail_min_inferences:
        return Check("shadow_agreement", INCONCLUSIVE, f"{n} shadow comparisons; need {th.fail_min_inferences}")
    lo, _ = wilson(agree, n, _N.inv_cdf(1 - th.alpha_pass))
    _, hi = wilson(agree, n, _N.inv_cdf(1 - th.alpha_fail))
    figures = {"agreement": round(agree / n, 4), "compared": n, "lower_bound": round(lo, 4), "upper_bound": round(hi, 4)}
    figures["minimum"] = th.min_shadow_agreement
    if hi < th.min_shadow_agreement:
        return Check("shadow_agreement", FAIL, f"shadow agrees with production on {agree / n:.1%} of {n}", figures)
    if lo >= th.min_shadow_agreement:
        return Check("shadow_agreement", PASS, f"shadow agrees with production on {agree / n:.1%} of {n}", figures)
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
        err_c, err_b = rate(obs.canary, "errors", "count"), rate(base, "errors", "count")
        margin = max(th.max_error_increase, (th.max_error_ratio - 1) * (err_b.p if err_b else 0.0))
        checks.append(compare_rates("error_rate", err_c, err_b, margin, th, th.fail_min_inferences, "inferences"))
        checks.append(latency_check(obs.canary, base, th))
        if obs.kind == SHADOW:
            checks.append(agreement_check(obs.canary, th))
        else:
            wrong_c = _wrong(obs.canary)
            wrong_b = _wrong(base)
            acc = compare_rates(
                "accuracy_loss", rate(wrong_c, "errors", "labels"), rate(wrong_b, "errors", "labels"),
                th.max_accuracy_drop, th, th.min_labels, "labels",
            )  # fmt: skip
            checks.append(acc)
            checks.append(shift_check(obs.canary, base, th))
    failed = [c for c in checks if c.outcome == FAIL]
    if failed:
        return Verdict(FAIL, tuple(c.reason for c in failed), tuple(checks))
    held = minimums(obs, stage) + [c.reason for c in checks if c.outcome == INCONCLUSIVE]
    if held:
        return Verdict(INCONCLUSIVE, tuple(held), tuple(checks))
    return Verdict(PASS, ("every check passed and the stage's minimums are met",), tuple(checks))


def _wrong(units: Sequence[Unit]) -> list[Unit]:
    """Units whose ``errors`` are wrong labelled predictions (accuracy as an error rate over labels)."""
    return [replace(u, errors=u.labels - u.correct) for u in units]
