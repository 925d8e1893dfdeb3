"""Which arm a device runs in an A/B experiment: a stable hash of (experiment, device) (pure).

The device's bucket is the rollouts' stable hash (``controller.rollouts.selection.bucket``)
in the ``experiment`` namespace, a uniform number in [0, 1); the arm is the
one whose cumulative share interval holds it. The same device always gets the
same arm in the same experiment, whatever the order devices are seen in, and a
device that joins the cohort later gets the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.rollouts.selection import bucket as stable_bucket


def bucket(experiment_id: int, device_id: str) -> float:
    return stable_bucket(experiment_id, device_id, namespace="experiment")


def assign_arm(experiment_id: int, device_id: str, shares: Sequence[float]) -> int:
    """Index of the arm for ``device_id`` given allocation ``shares`` (positive; normalised here)."""
    if not shares or any(s <= 0 for s in shares):
        raise ValueError(f"shares must be positive, got {list(shares)}")
    u = bucket(experiment_id, device_id) * sum(shares)
    acc = 0.0
    for i, s in enumerate(shares):
        acc += s
        if u < acc:
            return i
    return len(shares) - 1
