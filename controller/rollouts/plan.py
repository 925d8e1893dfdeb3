"""A rollout's plan: its stages and the thresholds its analysis applies (pure, validated).

Defaults: shadow on 5% of the cohort, then canary on 1%, 5%, 25%, 50% and 100%.
Units are in the names (``_s`` seconds). Stored as JSON in the ``rollout`` row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

SHADOW = "shadow"
CANARY = "canary"


class PlanError(ValueError):
    """A plan that cannot run; the message names the field and what was expected."""


@dataclass(frozen=True, kw_only=True)
class Stage:
    kind: str = CANARY  # shadow: the candidate runs beside production; canary: it is production
    share: float  # fraction of the cohort's compatible devices on the candidate, (0, 1]
    min_duration_s: float = 600.0  # a stage passes no sooner
    max_duration_s: float = 6 * 3600.0  # inconclusive this long after the start: pause and ask a human
    min_devices: int = 1  # candidate devices reporting (and as many matched baseline devices) before a pass
    min_inferences: int = 1000  # inferences on the candidate before a pass
    pause_after: bool = False  # after a pass, pause for an external check until resumed
    sample_rate: float = 1.0  # shadow stage: share of production inferences the shadow model also runs on, (0, 1]

    @property
    def role(self) -> str:
        return "shadow" if self.kind == SHADOW else "production"


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    max_error_increase: float = 0.01  # absolute error-rate increase over the baseline tolerated
    max_error_ratio: float = 1.5  # ... or this multiple of the baseline's error rate, if larger
    max_latency_p95_ratio: float = 1.5  # candidate p95 / baseline p95
    max_accuracy_drop: float = 0.02  # absolute, where labels exist
    min_labels: int = 50  # labelled inferences per arm before accuracy is judged
    min_shadow_agreement: float = 0.9  # shadow stage: top-class agreement with production
    max_shadow_dropped: float = 0.2  # shadow stage: share of sampled comparisons dropped (queue full) before a pass is doubted
    max_prediction_shift: float = 0.2  # Jensen-Shannon distance (base 2) of the prediction histograms
    max_device_rollbacks: int = 0  # candidate devices whose agent rolled the candidate back
    max_offline_increase: float = 0.25  # offline share of candidate devices above the baseline's
    alpha_fail: float = 0.01  # one-sided, per analysis: a stage fails only this rarely by chance
    alpha_pass: float = 0.05  # one-sided: a stage passes only with this confidence of no regression
    fail_min_inferences: int = 100  # per arm before the fixed (per-look) test may fail a stage on errors or shift
    sequential_min_n: int = 20  # per arm before the always-valid test may fail a stage (or the check's minimum, if smaller)
    sequential_tau: float = 0.2  # regression (difference of rates) the always-valid test is tuned for: large ones
    latency_min_samples: int = 200  # per arm before latency is judged


DEFAULT_STAGES: tuple[Stage, ...] = (
    Stage(kind=SHADOW, share=0.05),
    Stage(share=0.01),
    Stage(share=0.05),
    Stage(share=0.25),
    Stage(share=0.50),
    Stage(share=1.0),
)


def _from_dict(cls: type[Any], d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise PlanError(f"{where}: expected an object, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise PlanError(f"{where}: unknown field(s) {', '.join(unknown)}; expected some of {', '.join(known)}")
    try:
        return cls(**d)
    except TypeError as exc:
        raise PlanError(f"{where}: {exc}") from None


def stage_from_dict(d: Any, where: str = "stage") -> Stage:
    s: Stage = _from_dict(Stage, d, where)
    if s.kind not in (SHADOW, CANARY):
        raise PlanError(f"{where}.kind: expected 'shadow' or 'canary', got {s.kind!r}")
    if not 0 < s.share <= 1:
        raise PlanError(f"{where}.share: expected a fraction in (0, 1], got {s.share}")
    if not 0 <= s.min_duration_s <= s.max_duration_s:
        raise PlanError(f"{where}: expected 0 <= min_duration_s <= max_duration_s, got {s.min_duration_s}, {s.max_duration_s}")
    if s.min_devices < 1 or s.min_inferences < 0:
        raise PlanError(f"{where}: expected min_devices >= 1 and min_inferences >= 0")
    if not 0 < s.sample_rate <= 1:
        raise PlanError(f"{where}.sample_rate: expected a fraction in (0, 1], got {s.sample_rate}")
    if s.kind != SHADOW and s.sample_rate != 1.0:
        raise PlanError(f"{where}.sample_rate: only a shadow stage samples (a canary serves every inference)")
    return s


def thresholds_from_dict(d: Any) -> Thresholds:
    t: Thresholds = _from_dict(Thresholds, d or {}, "thresholds")
    for name in ("alpha_fail", "alpha_pass"):
        if not 0 < getattr(t, name) < 0.5:
            raise PlanError(f"thresholds.{name}: expected a probability in (0, 0.5), got {getattr(t, name)}")
    if not 0 < t.sequential_tau <= 1:
        raise PlanError(f"thresholds.sequential_tau: expected a difference of rates in (0, 1], got {t.sequential_tau}")
    if t.sequential_min_n < 1:
        raise PlanError(f"thresholds.sequential_min_n: expected at least 1, got {t.sequential_min_n}")
    return t


def stages_from_list(items: Any) -> tuple[Stage, ...]:
    """Validate a plan's stages: shadow stages first, shares never shrinking, the last on 100% as canary."""
    if not isinstance(items, list) or not items:
        raise PlanError("stages: expected a non-empty list")
    stages = tuple(stage_from_dict(d, f"stages[{i}]") for i, d in enumerate(items))
    seen_canary = False
    for i, s in enumerate(stages):
        if s.kind == SHADOW and seen_canary:
            raise PlanError(f"stages[{i}]: a shadow stage must come before every canary stage")
        seen_canary = seen_canary or s.kind == CANARY
        if i and s.kind == stages[i - 1].kind and s.share < stages[i - 1].share:
            raise PlanError(f"stages[{i}].share: shares never shrink ({s.share} after {stages[i - 1].share})")
    if stages[-1].kind != CANARY or stages[-1].share != 1.0:
        raise PlanError("stages: the last stage must be a canary stage on the whole cohort (share 1.0)")
    return stages


def approval_from(stages: tuple[Stage, ...]) -> int:
    """Index of the first stage that needs an approved version: every stage after the first canary stage."""
    first = next(i for i, s in enumerate(stages) if s.kind == CANARY)
    return first + 1


def to_json(stages: tuple[Stage, ...]) -> list[dict[str, Any]]:
    return [asdict(s) for s in stages]


def thresholds_json(t: Thresholds) -> dict[str, Any]:
    return asdict(t)
