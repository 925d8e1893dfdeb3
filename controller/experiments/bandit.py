"""Thompson-sampling arm weights with a minimum share per arm (pure, seeded).

Each arm's reward rate (e.g. labelled accuracy) gets a Beta(1 + successes,
1 + failures) posterior from the merged per-arm sums. The weight of an arm is
the posterior probability that it is the best arm (estimated with ``draws``
joint samples from a seeded generator, so a weight update is reproducible), then
mixed with a floor: ``w = floor + (1 - k * floor) * P(best)``. The floor keeps
every arm measured (a device never stops serving an arm it may need to
reconsider) and bounds the price of a wrong early lead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DRAWS = 20_000


def thompson_weights(
    successes: Sequence[float], trials: Sequence[float], floor: float, seed: int, draws: int = DRAWS
) -> list[float]:
    """Weights (summing to 1) for arms with ``successes`` out of ``trials`` rewards."""
    k = len(trials)
    if k < 2 or len(successes) != k:
        raise ValueError(f"need at least two arms with one success and one trial count each, got {len(successes)}/{k}")
    if not 0 <= floor * k <= 1:
        raise ValueError(f"floor {floor} times {k} arms must be within [0, 1]")
    s = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if (s < 0).any() or (n < s).any():
        raise ValueError("successes must be within [0, trials]")
    rng = np.random.default_rng(seed)
    samples = rng.beta(1 + s, 1 + n - s, size=(draws, k))
    best = np.bincount(samples.argmax(axis=1), minlength=k) / draws
    w = floor + (1 - k * floor) * best
    return [float(x) for x in w / w.sum()]


def choose(weights: Sequence[float], u: float) -> int:
    """The arm index for a uniform draw ``u`` in [0, 1): the inverse of the cumulative weights."""
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if u < acc:
            return i
    return len(weights) - 1
