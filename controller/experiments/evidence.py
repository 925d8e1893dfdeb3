"""What an experiment has observed so far: per-device sums per arm, from ``experimentwindow`` rows.

A/B: a device counts for the arm it was assigned (``experimentdevice``), and only
its windows of that arm's version in ``production`` count (windows from before
its update, or after a rollback, belong to no arm). Bandit: every device serves
every arm; role ``arm-<name>`` is arm ``name``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from controller.core.tables import Experiment, ExperimentDevice, ExperimentWindow
from controller.experiments.decide import Arm, DeviceSums

W = ExperimentWindow


def arm_role(name: str) -> str:
    return f"arm-{name}"


def shares(exp: Experiment) -> list[float]:
    """Expected share of reporting devices per arm: the allocation for A/B; equal for a bandit (every device runs every arm)."""
    return [float(a["share"]) for a in exp.arms] if exp.kind == "ab" else [1.0] * len(exp.arms)


def arms(session: Session, exp: Experiment) -> list[Arm]:
    sums: Any = (func.sum(W.count), func.sum(W.errors), func.sum(W.labels), func.sum(W.correct), func.sum(W.latency_ms_sum))
    by_arm: dict[str, list[DeviceSums]] = defaultdict(list)
    if exp.kind == "ab":
        assigned = dict(
            session.exec(
                select(ExperimentDevice.device_id, ExperimentDevice.arm).where(ExperimentDevice.experiment_id == exp.id)
            ).all()
        )
        version_of = {a["name"]: int(a["version"]) for a in exp.arms}
        q = (
            select(W.device_id, W.version, *sums)
            .where(W.experiment_id == exp.id, W.role == "production")
            .group_by(W.device_id, W.version)
        )
        for device_id, version, n, e, lab, cor, lat in session.exec(q).all():
            arm = assigned.get(device_id)
            if arm is not None and version_of.get(arm) == version:
                by_arm[arm].append(DeviceSums(device_id, int(n), int(e), int(lab), int(cor), float(lat)))
    else:
        names = {arm_role(a["name"]): a["name"] for a in exp.arms}
        q = select(W.device_id, W.role, *sums).where(W.experiment_id == exp.id).group_by(W.device_id, W.role)
        for device_id, role, n, e, lab, cor, lat in session.exec(q).all():
            if role in names:
                by_arm[names[role]].append(DeviceSums(device_id, int(n), int(e), int(lab), int(cor), float(lat)))
    return [
        Arm(a["name"], s, tuple(sorted(by_arm.get(a["name"], []), key=lambda d: d.device_id)))
        for a, s in zip(exp.arms, shares(exp), strict=True)
    ]
