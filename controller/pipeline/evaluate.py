"""The int8 candidate against the incumbent, per slice, and the blessing rule.

Both models run through ``agent.runtime`` from their bundles (the code the
devices run), each on inputs made from the raw samples by its own feature spec.
Evaluation sets: ``holdout`` (the dataset's held-out rows, never trained on) and
``fleet`` (the held-out rows captured recently: what the fleet sees now). Each is
sliced into ``all``, one slice per cohort and one per hardware class.

Blessing (pure, :func:`bless`): the candidate is blessed only when no judged slice
is worse than the incumbent, and it is better by at least ``min_gain`` on the
slice that triggered the run (the fleet set's slice of that cohort, else
``all``). Slices with fewer than ``min_slice`` labelled rows are shown but not
judged. "Worse" needs both: lower by more than ``tolerance`` (accuracy points as
a fraction) and lower with confidence. Both models answer the same rows, so the
test is paired: of the rows where exactly one model is right, under "equally
good" each is as likely to be the candidate's as the incumbent's (an exact
one-sided sign test, McNemar's); the slice is worse when the incumbent wins so
many of them that p < ``alpha``. One or two rows of a 70-row slice are noise and
must not refuse a model that is ten points better overall; five of five are not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

from controller.pipeline.datasets import Dataset

Predict = Callable[[np.ndarray], np.ndarray]  # row indices of the dataset -> predicted classes


@dataclass(frozen=True)
class SliceResult:
    set: str  # holdout | fleet
    slice: str  # all | cohort:<name> | hardware:<class>
    n: int
    candidate: float  # accuracy
    incumbent: float | None  # None: no incumbent
    judged: bool
    only_candidate: int = 0  # rows only the candidate got right
    only_incumbent: int = 0  # rows only the incumbent got right

    @property
    def delta(self) -> float | None:
        return None if self.incumbent is None else self.candidate - self.incumbent

    @property
    def p_worse(self) -> float:
        """One-sided exact sign test on the discordant rows: how likely the incumbent wins this many by chance."""
        m = self.only_candidate + self.only_incumbent
        if m == 0:
            return 1.0
        return float(sps.binomtest(self.only_incumbent, m, 0.5, alternative="greater").pvalue)


@dataclass(frozen=True)
class BlessRules:
    tolerance: float = 0.01  # a judged slice may be this much worse (accuracy as a fraction)
    min_gain: float = 0.0  # the triggering slice must improve by more than this
    min_slice: int = 30  # labelled rows a slice needs to be judged
    alpha: float = 0.1  # a slice is worse only when the paired test says so at this level

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    blessed: bool
    reasons: list[str]  # why not (empty when blessed), or what made it
    target: str  # the slice that had to improve, as set/slice

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Evaluation:
    slices: list[SliceResult] = field(default_factory=list)
    verdict: Verdict | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # model sizes, float accuracy, ...

    def to_dict(self) -> dict[str, Any]:
        return {
            "slices": [
                {**asdict(s), "delta": None if s.delta is None else round(s.delta, 6), "p_worse": round(s.p_worse, 6)}
                for s in self.slices
            ],
            "verdict": None if self.verdict is None else self.verdict.to_dict(),
            **self.extra,
        }

    def get(self, set_: str, slice_: str) -> SliceResult | None:
        return next((s for s in self.slices if s.set == set_ and s.slice == slice_), None)


def slice_masks(ds: Dataset, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks over ``rows`` (dataset indices): all, per cohort, per hardware class."""
    out = {"all": np.ones(len(rows), dtype=np.bool_)}
    for cohort in sorted({c for i in rows for c in ds.cohorts[i]}):
        out[f"cohort:{cohort}"] = np.array([cohort in ds.cohorts[i] for i in rows], dtype=np.bool_)
    for hw in sorted({str(ds.hardware_class[i]) for i in rows if ds.hardware_class[i]}):
        out[f"hardware:{hw}"] = ds.hardware_class[rows] == hw
    return out


def evaluate(
    ds: Dataset,
    sets: dict[str, np.ndarray],
    candidate: Predict,
    incumbent: Predict | None,
    rules: BlessRules,
) -> Evaluation:
    """Accuracy per (set, slice) for both models on the labelled rows of each set."""
    ev = Evaluation()
    for name, rows in sets.items():
        rows = rows[ds.label[rows] >= 0]
        if len(rows) == 0:
            continue
        truth = ds.label[rows]
        cand = candidate(rows) == truth
        inc = incumbent(rows) == truth if incumbent is not None else None
        for slice_name, mask in slice_masks(ds, rows).items():
            n = int(mask.sum())
            ev.slices.append(
                SliceResult(
                    set=name,
                    slice=slice_name,
                    n=n,
                    candidate=round(float(cand[mask].mean()), 6),
                    incumbent=None if inc is None else round(float(inc[mask].mean()), 6),
                    judged=n >= rules.min_slice,
                    only_candidate=0 if inc is None else int((cand[mask] & ~inc[mask]).sum()),
                    only_incumbent=0 if inc is None else int((inc[mask] & ~cand[mask]).sum()),
                )
            )
    return ev


def bless(ev: Evaluation, rules: BlessRules, trigger_cohort: str | None) -> Verdict:
    """The blessing rule (module docstring); reasons name each slice that decided."""
    if not ev.slices:
        return Verdict(False, ["no labelled rows to evaluate on"], "")
    target = None
    for set_ in ("fleet", "holdout"):
        target = (trigger_cohort and ev.get(set_, f"cohort:{trigger_cohort}")) or ev.get(set_, "all")
        if target is not None and target.judged:
            break
    assert target is not None
    where = f"{target.set}/{target.slice}"
    if target.incumbent is None:
        return Verdict(True, ["no incumbent: the first model of its name is blessed on its own accuracy"], where)
    reasons, noise = [], []
    for s in ev.slices:
        if s.judged and s.delta is not None and s.delta < -rules.tolerance:
            evidence = (
                f"{s.set}/{s.slice}: {s.candidate:.2%} vs incumbent {s.incumbent:.2%} on {s.n} rows "
                f"({s.only_incumbent} right only by the incumbent, {s.only_candidate} only by the candidate, "
                f"p={s.p_worse:.3f})"
            )
            if s.p_worse < rules.alpha:
                reasons.append(f"{evidence}, worse by more than the tolerance {rules.tolerance:.2%}")
            else:
                noise.append(f"{evidence}: lower, but within noise (p >= {rules.alpha:g})")
    if not target.judged:
        reasons.append(f"{where}: only {target.n} labelled rows; at least {rules.min_slice} to judge")
    elif target.delta is not None and target.delta <= rules.min_gain:
        reasons.append(
            f"{where} (the trigger's slice): {target.candidate:.2%} vs incumbent {target.incumbent:.2%}; "
            f"must improve by more than {rules.min_gain:.2%}"
        )
    if reasons:
        return Verdict(False, reasons, where)
    return Verdict(
        True, [f"{where}: {target.candidate:.2%} vs incumbent {target.incumbent:.2%}; no judged slice worse", *noise], where
    )


def runtime_predictor(bundle: bytes, inputs_of: Callable[[np.ndarray], np.ndarray]) -> Predict:
    """Predicted classes of a bundle's model through ``agent.runtime``, row by row when its batch is fixed."""
    from agent.runtime import load_model
    from shared import bundle as bundle_fmt

    b = bundle_fmt.read(bundle)
    loaded = load_model(b.manifest, b.model, "evaluation")
    batch = b.manifest.inputs[0].shape[0]

    def predict(rows: np.ndarray) -> np.ndarray:
        x = inputs_of(rows)
        if batch is None:
            outs = [next(iter(loaded.predict(x).values()))]
        else:
            outs = [next(iter(loaded.predict(x[i : i + 1]).values())) for i in range(len(x))]
        classes: np.ndarray = np.concatenate(outs).argmax(axis=1)
        return classes

    return predict
