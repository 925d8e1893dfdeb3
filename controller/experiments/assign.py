"""Which arm a device runs in an A/B experiment: a stable hash of (experiment, device) (pure).

The device's bucket is a uniform number in [0, 1) from sha256; the arm is the
one whose cumulative share interval holds it. The same device always gets the
same arm in the same experiment, whatever the order devices are seen in, and a
device that joins the cohort later gets the same rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def bucket(experiment_id: int, device_id: str) -> float:
    h = hashlib.sha256(f"experiment:{experiment_id}:{device_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


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
