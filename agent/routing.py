"""Bandit routing on the device: which arm serves each production request (seeded, reproducible).

The signed desired state may carry a :class:`shared.messages.Routing`: weights
per ``arm-*`` role. While it is set, :meth:`ArmRouter.choose` draws an arm for
each production request from a generator seeded with (experiment, seed, device),
so the n-th request after the routing arrived always gets the same draw. Only
arms that are loaded take part (their weights renormalised); with none loaded,
production serves as usual. The updater persists the routing with the desired
counter, so after a restart or days offline the device routes by its last weights.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Container
from dataclasses import asdict
from typing import Any

from shared.messages import Routing


class ArmRouter:
    def __init__(self, device_id: str = "") -> None:
        self.device_id = device_id
        self._lock = threading.Lock()
        self._routing: Routing | None = None
        self._rng = random.Random(0)  # noqa: S311 - traffic splitting, not secrets

    def set(self, routing: Routing | None) -> None:
        with self._lock:
            self._routing = routing
            if routing is not None:
                self._rng = random.Random(f"{routing.experiment}:{routing.seed}:{self.device_id}")  # noqa: S311

    @property
    def routing(self) -> Routing | None:
        return self._routing

    def snapshot(self) -> dict[str, Any] | None:
        r = self._routing
        return None if r is None else asdict(r)

    def choose(self, loaded: Container[str]) -> str | None:
        """The arm role for the next production request, or None (no routing, or no arm loaded)."""
        r = self._routing
        if r is None:
            return None
        arms = [(role, w) for role, w in sorted(r.weights.items()) if w > 0 and role in loaded]
        if not arms:
            return None
        with self._lock:
            u = self._rng.random() * sum(w for _, w in arms)
        acc = 0.0
        for role, w in arms:
            acc += w
            if u < acc:
                return role
        return arms[-1][0]
