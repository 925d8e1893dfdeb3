"""When to refresh the image repository's metadata while nothing installs (pure: clock and randomness injected).

An install refreshes the TUF metadata; a device that installs nothing for a while
would otherwise hold an ever older listing, so the rollback fast path (ADR 0073:
a listing at most ``vouched_max_age_s`` old) goes dark, and expired or revoked
metadata is noticed only when something is assigned (ADR 0082). So the agent
refreshes every ``every_s`` after the last verified listing (any refresh's, an
install's included), jittered by ±``JITTER`` so a fleet assigned together does not
refresh together. A listing already overdue at start (a device back after a long
time off) is refreshed within the first ``2 * JITTER`` of an interval, spread
uniformly. A device that never refreshed (it installed nothing) waits for its first
install. A failed refresh is tried again after a jittered backoff that doubles from
``min(every_s, BACKOFF_BASE_S)`` up to ``every_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

JITTER = 0.2  # ± this fraction of the interval
BACKOFF_BASE_S = 60.0  # seconds: the first retry after a failed refresh (at most the interval)


@dataclass(frozen=True)
class Outcome:
    """The last periodic refresh, as the status shows it."""

    at: float  # unix seconds of the attempt
    ok: bool
    changed: bool = False  # the verified targets differ from the refresh before
    reason: str = ""  # why it failed
    failures: int = 0  # consecutive failed refreshes


class RefreshSchedule:
    """The next refresh time of one agent (each agent its own: a simulated fleet holds many)."""

    def __init__(self, every_s: float, *, rng: Callable[[], float]) -> None:
        if every_s < 0:
            raise ValueError(f"need every_s >= 0, got {every_s}")
        self.every_s = every_s  # 0: never
        self._rng = rng  # uniform in [0, 1)

    @property
    def enabled(self) -> bool:
        return self.every_s > 0

    def interval_s(self) -> float:
        """One jittered interval: uniform in [every * (1 - JITTER), every * (1 + JITTER)]."""
        return self.every_s * (1 - JITTER + 2 * JITTER * self._rng())

    def after_listing(self, verified_at: float | None, now: float) -> float | None:
        """When to refresh, given when the current listing was verified; None when turned off, or when the device
        never refreshed (it installed nothing: no rollback to keep fast, and its first install refreshes)."""
        if not self.enabled or verified_at is None:
            return None
        if verified_at <= now:
            due = verified_at + self.interval_s()
            if due > now:
                return due
        return now + 2 * JITTER * self.every_s * self._rng()  # overdue (or a clock gone back): soon, spread out

    def backoff_s(self, failures: int) -> float:
        """The delay after ``failures`` consecutive failed refreshes: doubling, capped at the interval, jittered."""
        ceiling = min(self.every_s, min(self.every_s, BACKOFF_BASE_S) * 2.0 ** min(max(failures, 1) - 1, 60))
        return ceiling * (1 - JITTER + 2 * JITTER * self._rng())

    def after_failure(self, failures: int, now: float) -> float | None:
        return None if not self.enabled else now + self.backoff_s(failures)
