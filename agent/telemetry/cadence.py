"""When closed telemetry windows leave the device (pure rules; ADR 0076).

Windows are ``window_s`` (60 s) whatever the cadence, so the controller stores and
merges exactly the same windows; only the moment they are published changes:

- **batched** (the default): closed windows wait on disk and go together, up to
  ``windows_per_publish`` (10) in one message, once that many wait or the oldest
  has waited ``batch_wait_s`` (default ``windows_per_publish × window_s``): one
  message every 10 minutes instead of 10, so the per-message TCP, TLS, MQTT and
  ack overhead is paid once and later windows are delta-coded (ADR 0063);
- **fresh**: every window goes as soon as it closes, while the signed desired
  state asks for it (``shared.cadence``: the device takes part in a running
  rollout or experiment, whose analysis reads its windows every interval);
- **urgent**: a window in which something :func:`notable` happened goes at once,
  with every window waiting before it; a clean stop sends everything waiting.

Several windows waiting at once (after an outage) go in full messages of
``windows_per_publish`` in every cadence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

QUALITY = ("nan", "inf", "out_of_range")  # bad inputs per feature (``shared.telemetry``)
# agent counters worth a look now
NOTABLE_COUNTERS = ("desired_rejected", "messages_malformed", "windows_dropped", "events_dropped")


def notable(roles: Mapping[str, Mapping[str, Any]], counters: Mapping[str, int], *, model_changed: bool = False) -> str:
    """Why a just-closed window should not wait for company ("": it may wait).

    Failed inferences, bad inputs, refused desired states or malformed messages, windows
    lost to a full queue, or a role that changed model (a new model, or a rollback)."""
    for role, s in roles.items():
        if s.get("errors"):
            return f"{role}: {s['errors']} failed inferences"
        quality = s.get("quality") or {}
        for kind in QUALITY:
            if any(quality.get(kind) or ()):
                return f"{role}: {kind} inputs"
    for name in NOTABLE_COUNTERS:
        if counters.get(name):
            return f"{name}: {counters[name]}"
    return "a role changed model" if model_changed else ""


def due(waiting: int, oldest_wait_s: float, *, full: int, max_wait_s: float, fresh: bool, urgent: bool) -> bool:
    """Whether ``waiting`` windows (at most ``full``, the oldest waiting ``oldest_wait_s``) go now."""
    if waiting <= 0:
        return False
    return fresh or urgent or waiting >= full or oldest_wait_s >= max_wait_s
