"""Which devices of the cohort run the candidate (pure).

A device's bucket is a stable hash of (rollout, device) in [0, 1); a stage of
share s wants ceil(s * n) of the n compatible devices on the candidate (at
least the stage's minimum), taken in bucket order. Devices already on the
candidate stay there, so a device keeps its arm as the share grows, and a
device that joins the cohort later is ranked by the same rule.
Devices whose hardware the bundle does not support are skipped and counted.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


def bucket(rollout_id: int, device_id: str, namespace: str = "rollout") -> float:
    """The device's stable place in [0, 1) for one rollout (or, with ``namespace="experiment"``, one experiment)."""
    h = hashlib.sha256(f"{namespace}:{rollout_id}:{device_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def supports(manifest_hardware: dict[str, Any], arch: str) -> bool:
    """The bundle's ``hardware.arch`` list allows this device (an empty list allows all; unknown arch only then)."""
    archs = manifest_hardware.get("arch") or []
    return not archs or arch in archs


@dataclass(frozen=True)
class Candidate:
    device_id: str
    arch: str


@dataclass(frozen=True)
class Selection:
    chosen: tuple[str, ...]  # devices to put on the candidate now (not already on it)
    skipped: tuple[str, ...]  # incompatible hardware
    target: int  # how many devices the stage wants on the candidate


def select(
    rollout_id: int,
    devices: Sequence[Candidate],
    on_candidate: Iterable[str],
    share: float,
    min_devices: int,
    hardware: dict[str, Any],
    keep_baseline: int,
) -> Selection:
    """Devices to add for a stage of ``share`` (``keep_baseline`` devices stay on the baseline when share < 1)."""
    already = set(on_candidate)
    compatible = [d for d in devices if supports(hardware, d.arch)]
    skipped = tuple(sorted(d.device_id for d in devices if not supports(hardware, d.arch)))
    ranked = sorted(compatible, key=lambda d: (bucket(rollout_id, d.device_id), d.device_id))
    if share >= 1.0:
        target = len(ranked)
    else:
        by_share = math.ceil(share * len(ranked) - 1e-9)
        target = min(max(by_share, min_devices), max(len(ranked) - keep_baseline, 0))
    chosen: list[str] = []
    count = sum(1 for d in ranked if d.device_id in already)
    for d in ranked:
        if count >= target:
            break
        if d.device_id not in already:
            chosen.append(d.device_id)
            count += 1
    return Selection(tuple(chosen), skipped, target)
