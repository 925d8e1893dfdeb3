"""When to try an assignment again after an update failed (pure: clock and randomness injected).

A *transient* failure (controller unreachable, download cut, disk full, image
repository metadata not downloadable) is retried with capped exponential
backoff and full jitter, so a fleet that failed together does not retry
together. A *permanent* refusal (bad signature or hash, below the version
floor, wrong hardware, a failed health check) is not retried until something
changes: a new desired state, or new image-repository metadata. Reconnecting
to the broker makes every transient failure due at once (the network is back).
``pending()`` is what the agent reports while it has not converged.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Failure:
    role: str
    sha256: str
    version: int
    reason: str
    permanent: bool
    failures: int  # consecutive failures of this assignment
    retry_at: float | None  # unix seconds; None when permanent


class Convergence:
    """Failed assignments per role and when each is due again."""

    def __init__(
        self,
        base_s: float = 5.0,
        cap_s: float = 3600.0,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got {base_s}, {cap_s}")
        self.base_s, self.cap_s = base_s, cap_s
        self._rng = rng
        self._failed: dict[str, Failure] = {}  # by role

    def delay_s(self, failures: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(failures-1))], at least a tenth of base."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(failures - 1, 60))
        return max(self.base_s / 10, ceiling * self._rng())

    def failed(self, role: str, sha256: str, version: int, reason: str, *, permanent: bool, now: float) -> Failure:
        prev = self._failed.get(role)
        n = prev.failures + 1 if prev is not None and prev.sha256 == sha256 else 1
        retry_at = None if permanent else now + self.delay_s(n)
        f = Failure(role, sha256, version, reason, permanent, n, retry_at)
        self._failed[role] = f
        return f

    def succeeded(self, role: str) -> None:
        self._failed.pop(role, None)

    def due(self, role: str, sha256: str, now: float) -> bool:
        f = self._failed.get(role)
        if f is None or f.sha256 != sha256:
            return True  # never tried, or a different assignment now
        return not f.permanent and f.retry_at is not None and now >= f.retry_at

    def reconnected(self, now: float) -> None:
        """The link is back: every transient failure is due now (its failure count stays)."""
        for role, f in self._failed.items():
            if not f.permanent:
                self._failed[role] = Failure(f.role, f.sha256, f.version, f.reason, False, f.failures, now)

    def changed(self) -> None:
        """A new desired state or new metadata: permanent refusals may be decided differently now."""
        self._failed = {r: f for r, f in self._failed.items() if not f.permanent}
        for role, f in self._failed.items():
            self._failed[role] = Failure(f.role, f.sha256, f.version, f.reason, False, f.failures, 0.0)

    def forget_others(self, assigned: dict[str, str]) -> None:
        """Drop records of roles no longer assigned, or assigned something else (role -> sha256)."""
        self._failed = {r: f for r, f in self._failed.items() if assigned.get(r) == f.sha256}

    def next_due(self) -> float | None:
        """The earliest retry time, or None when nothing waits for one."""
        times = [f.retry_at for f in self._failed.values() if not f.permanent and f.retry_at is not None]
        return min(times) if times else None

    def pending(self) -> list[Failure]:
        return sorted(self._failed.values(), key=lambda f: f.role)
