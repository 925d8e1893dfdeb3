"""The quality gate a dataset passes before training (pure: a dataset and rules in, a verdict out).

Each rule that fails adds one reason saying what was expected and what came;
the gate passes only with no reasons. Checks: schema (every row has the number
of raw inputs the feature spec takes, or model inputs of the size it makes), non-finite values,
valid ranges of raw inputs (the feature spec's own ``check``), label coverage, minimum size, labels inside the
class range, and class balance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from controller.pipeline.datasets import Dataset
from shared.features import FeatureSpec


@dataclass(frozen=True)
class GateRules:
    n_classes: int
    min_labelled: int = 200  # labelled rows at least
    min_label_coverage: float = 0.5  # labelled share of rows at least
    max_nonfinite_share: float = 0.01  # rows with a NaN or infinity at most
    max_out_of_range_share: float = 0.05  # rows the feature spec's check complains about at most
    min_class_share: float = 0.02  # each class's share of the labelled rows at least

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateRules:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"gate rules: unknown key(s) {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str]
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "stats": self.stats}


def fits(ds: Dataset, spec: FeatureSpec) -> np.ndarray:
    """Rows the spec can turn into model inputs: a raw item of its input's size, else model inputs of its output's size."""
    n_raw, n_out = math.prod(spec.input.shape), math.prod(spec.output_shape)
    return np.array(
        [(r.size == n_raw) if r is not None else (x.size == n_out) for r, x in zip(ds.raw, ds.inputs, strict=True)],
        dtype=np.bool_,
    )


def check(ds: Dataset, spec: FeatureSpec, rules: GateRules) -> GateResult:
    reasons: list[str] = []
    n = len(ds)
    ok = fits(ds, spec)
    if not ok.all():
        sizes = sorted(
            {int((r if r is not None else x).size) for r, x, good in zip(ds.raw, ds.inputs, ok, strict=True) if not good}
        )
        reasons.append(
            f"schema: {int((~ok).sum())} of {n} rows fit neither the feature spec's raw input {list(spec.input.shape)} "
            f"nor its output {list(spec.output_shape)} (sizes seen: {sizes[:5]})"
        )
    values = [r if r is not None else x for r, x in zip(ds.raw, ds.inputs, strict=True)]
    nonfinite = np.array([not np.all(np.isfinite(v)) for v in values], dtype=np.bool_)
    share = float(nonfinite.mean()) if n else 0.0
    if share > rules.max_nonfinite_share:
        reasons.append(f"NaN: {nonfinite.sum()} rows ({share:.1%}) hold NaN or infinity; at most {rules.max_nonfinite_share:.1%}")
    judged = [i for i in range(n) if ok[i] and not nonfinite[i] and ds.raw[i] is not None]
    out_of_range = np.zeros(len(judged), dtype=np.bool_)
    if judged:
        raw = np.stack([r for i in judged if (r := ds.raw[i]) is not None]).reshape((-1, *spec.input.shape))
        out_of_range = np.array([bool(spec.check(raw[k : k + 1])) for k in range(len(judged))], dtype=np.bool_)
    oor = float(out_of_range.mean()) if out_of_range.size else 0.0
    if oor > rules.max_out_of_range_share:
        reasons.append(
            f"ranges: {out_of_range.sum()} rows ({oor:.1%}) are outside the feature spec's valid ranges; "
            f"at most {rules.max_out_of_range_share:.1%}"
        )
    labelled = ds.label[ds.label >= 0]
    coverage = len(labelled) / n if n else 0.0
    if coverage < rules.min_label_coverage:
        reasons.append(
            f"label coverage: {len(labelled)} of {n} rows ({coverage:.1%}) are labelled; at least {rules.min_label_coverage:.1%}"
        )
    if len(labelled) < rules.min_labelled:
        reasons.append(f"minimum size: {len(labelled)} labelled rows; at least {rules.min_labelled}")
    foreign = labelled[labelled >= rules.n_classes]
    if foreign.size:
        reasons.append(f"schema: {foreign.size} labels outside 0..{rules.n_classes - 1} (e.g. {int(foreign[0])})")
    counts = (
        np.bincount(labelled[labelled < rules.n_classes], minlength=rules.n_classes)
        if len(labelled)
        else np.zeros(rules.n_classes, np.int64)
    )
    shares = counts / max(int(counts.sum()), 1)
    rare = [i for i, s in enumerate(shares) if s < rules.min_class_share]
    if len(labelled) and rare:
        listed = ", ".join(f"{i}: {shares[i]:.1%}" for i in rare[:5])
        reasons.append(f"class balance: {len(rare)} classes below {rules.min_class_share:.1%} of the labels ({listed})")
    stats = {
        "rows": n,
        "labelled": len(labelled),
        "label_coverage": round(coverage, 4),
        "raw_rows": int(sum(r is not None for r in ds.raw)),
        "nonfinite_share": round(share, 4),
        "out_of_range_share": round(oor, 4),
        "class_counts": counts.astype(int).tolist(),
    }
    return GateResult(not reasons, reasons, stats)
