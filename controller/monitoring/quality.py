"""Data-quality rules on merged windows (pure).

The agent counts, per feature and window, non-finite inputs (NaN, ±inf) and
inputs outside the feature spec's range (summary ``quality``); the feature
histograms show how values spread over the reference bins. A window breaks a
rule when, for some feature:

- ``nonfinite``: NaN/inf values exceed ``max_nonfinite`` of the samples;
- ``out_of_range``: values outside the range exceed ``max_out_of_range``;
- ``stuck``: at least ``stuck_share`` of the values fall in one bin although the
  reference spreads them (its fullest bin holds less than ``spread_share``) —
  a stuck sensor, a camera gone dark.

Windows with broken data (``nonfinite``, ``stuck``: :data:`EXCLUDING`) can be left
out of drift analysis, so one broken sensor does not read as fleet-wide drift.
``out_of_range`` is flagged but kept: values outside the range are the drift
signal itself (a sensor that reads too bright), not a reason to look away.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from controller.monitoring.drift import Reference
from controller.monitoring.summary import count, part


@dataclass(frozen=True, kw_only=True)
class QualityRules:
    max_nonfinite: float = 0.01  # share of samples
    max_out_of_range: float = 0.05  # share of samples
    stuck_share: float = 0.99  # share of samples in one bin ...
    spread_share: float = 0.9  # ... when the reference's fullest bin holds less than this
    min_samples: int = 30  # fewer samples: no verdict


DEFAULT_RULES = QualityRules()
EXCLUDING = frozenset({"nonfinite", "stuck"})  # rules whose windows drift analysis may leave out


@dataclass(frozen=True)
class Flag:
    feature: str
    rule: str  # nonfinite | out_of_range | stuck
    value: float  # the share observed
    limit: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ints(v: Any, n: int) -> list[int] | None:
    return v if isinstance(v, list) and len(v) == n and all(isinstance(x, int) for x in v) else None


def quality_flags(ref: Reference, summary: dict[str, Any], rules: QualityRules = DEFAULT_RULES) -> list[Flag]:
    """Rules a merged window breaks, feature by feature."""
    samples = count(summary, "samples")
    flags: list[Flag] = []
    nf = len(ref.features)
    q = part(summary, "quality")
    nan, inf, oor = _ints(q.get("nan"), nf), _ints(q.get("inf"), nf), _ints(q.get("out_of_range"), nf)
    feats = part(summary, "features")
    for i, f in enumerate(ref.features):
        if samples >= rules.min_samples:
            bad = (nan[i] if nan else 0) + (inf[i] if inf else 0)
            if bad / samples > rules.max_nonfinite:
                flags.append(Flag(f.name, "nonfinite", bad / samples, rules.max_nonfinite))
            if oor and oor[i] / samples > rules.max_out_of_range:
                flags.append(Flag(f.name, "out_of_range", oor[i] / samples, rules.max_out_of_range))
        counts = _ints(feats.get(f.name), len(f.counts))
        if counts is None:
            continue
        n = sum(counts)
        ref_n = float(f.counts.sum())
        if n < rules.min_samples or ref_n <= 0:
            continue
        top = max(counts) / n
        if top >= rules.stuck_share and float(np.max(f.counts)) / ref_n < rules.spread_share:
            flags.append(Flag(f.name, "stuck", top, rules.stuck_share))
    return flags
