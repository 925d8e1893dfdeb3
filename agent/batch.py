"""The device as the online store: batch-feature values delivered in the signed desired state.

The desired state carries, per batch feature, the values for this device (its own, its
cohorts', the fleet's) with their validity times; :meth:`BatchFeatures.current` gives the
values in force now by ``shared.features.value_at``'s rules. The answer is cached until the
next instant a value starts or ends, so a raw-input inference pays a clock read and a compare.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from shared.features import BatchFeatureValue, next_change, values_at

__all__ = ["BatchFeatures"]
_EMPTY: Mapping[str, float] = MappingProxyType({})


class BatchFeatures:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._history: tuple[BatchFeatureValue, ...] = ()
        self._cache: tuple[float, float, Mapping[str, float]] = (math.inf, -math.inf, _EMPTY)  # (from, until, values)

    def set(self, history: Sequence[BatchFeatureValue]) -> None:
        """Replace the delivered values (a new desired state, or the persisted one at start-up)."""
        self._history = tuple(history)
        self._cache = (math.inf, -math.inf, _EMPTY)

    @property
    def history(self) -> tuple[BatchFeatureValue, ...]:
        return self._history

    def current(self) -> Mapping[str, float]:
        """Batch feature name -> value in force now: a read-only mapping, the same object until a
        value starts or ends (so ``FeatureSpec`` reuses what it resolved from it)."""
        now = self._clock()
        start, until, values = self._cache  # one read: a concurrent refresh replaces the whole tuple
        if start <= now < until:
            return values
        if not self._history:
            return _EMPTY
        at = datetime.fromtimestamp(now, timezone.utc)
        values = MappingProxyType(values_at(self._history, at))
        nxt = next_change(self._history, at)
        self._cache = (now, math.inf if nxt is None else nxt.timestamp(), values)
        return values

    def snapshot(self) -> dict[str, Any]:
        """For ``edgefleet-agent status``: the values in force and how many are on hand."""
        return {"in_force": dict(self.current()), "values": len(self._history)}
