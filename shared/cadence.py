"""Fresh telemetry on request: ``sampling.telemetry_fresh`` in the signed desired state (ADR 0076).

Agents batch their closed telemetry windows by default (``agent.telemetry.cadence``).
While something on the controller needs a device's windows as they close — a running
rollout or experiment the device takes part in — the controller names itself in the
device's desired state: ``"sampling": {"telemetry_fresh": ["rollout:12", "experiment:3"]}``.
The agent publishes every window at once while the list is not empty.

A list of holders rather than a flag, so that a rollout and an experiment on the same
device each add and remove their own name and the device stays fresh until the last one
lets go. Pure functions on the ``sampling`` mapping; both sides use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FRESH = "telemetry_fresh"  # the key in the desired state's ``sampling``
MAX_HOLDERS = 64  # names kept in the list; a device is in few rollouts and experiments at once


def holders(sampling: Mapping[str, Any]) -> tuple[str, ...]:
    """The names asking for fresh telemetry (anything that is not a list of strings counts as none)."""
    value = sampling.get(FRESH)
    if not isinstance(value, list):
        return ()
    return tuple(x for x in value if isinstance(x, str) and x)[:MAX_HOLDERS]


def is_fresh(sampling: Mapping[str, Any]) -> bool:
    """The agent's reading: publish each window as soon as it closes."""
    return bool(holders(sampling))


def with_holder(sampling: Mapping[str, Any], holder: str) -> dict[str, Any] | None:
    """``sampling`` with ``holder`` added, or None when it is there already."""
    now = holders(sampling)
    if holder in now:
        return None
    return {**sampling, FRESH: sorted({*now, holder})}


def without_holder(sampling: Mapping[str, Any], holder: str) -> dict[str, Any] | None:
    """``sampling`` with ``holder`` removed (the key too when none is left), or None when it was not there."""
    now = holders(sampling)
    if holder not in now:
        return None
    rest = {k: v for k, v in sampling.items() if k != FRESH}
    left = [h for h in now if h != holder]
    return {**rest, FRESH: left} if left else rest


def rollout_holder(rollout_id: int) -> str:
    return f"rollout:{rollout_id}"


def experiment_holder(experiment_id: int) -> str:
    return f"experiment:{experiment_id}"
