"""The sample-ratio-mismatch check (pure): do devices report per arm in the proportions assigned?

A chi-square goodness-of-fit test of the devices seen reporting in each arm
against the allocation shares. A very small p-value (below ``SRM_ALPHA``)
means the assignment or the reporting is broken — an arm's model crashes and
its devices roll back, or go quiet — and any comparison between the arms is
then biased, so a mismatch blocks every decision until it is explained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as sps

SRM_ALPHA = 0.001  # the usual threshold: the check runs at every look, so it must rarely fire by chance


@dataclass(frozen=True)
class SrmCheck:
    observed: tuple[int, ...]  # devices reporting per arm
    expected: tuple[float, ...]  # devices expected per arm from the shares
    chi2: float
    p_value: float
    mismatch: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "observed": list(self.observed),
            "expected": [round(e, 2) for e in self.expected],
            "chi2": round(self.chi2, 4),
            "p_value": self.p_value,
            "mismatch": self.mismatch,
            "threshold": SRM_ALPHA,
        }


def srm_check(observed: Sequence[int], shares: Sequence[float], alpha: float = SRM_ALPHA) -> SrmCheck:
    """Chi-square test of ``observed`` device counts against ``shares`` (normalised); no devices: no mismatch."""
    if len(observed) != len(shares) or len(observed) < 2:
        raise ValueError(f"need one count per arm and at least two arms, got {len(observed)} counts, {len(shares)} shares")
    if any(s <= 0 for s in shares):
        raise ValueError("shares must be positive")
    total = sum(observed)
    norm = sum(shares)
    expected = tuple(total * s / norm for s in shares)
    if total == 0:
        return SrmCheck(tuple(observed), expected, 0.0, 1.0, False)
    chi2, p = sps.chisquare(list(observed), list(expected))
    return SrmCheck(tuple(int(o) for o in observed), expected, float(chi2), float(p), bool(p < alpha))
