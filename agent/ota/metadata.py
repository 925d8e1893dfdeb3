"""Refreshing the image repository's metadata when nothing installs (ADR 0082).

``Refresher`` runs on the updater's one thread, between desired states, so it never
runs beside an install; a desired state that arrives while the refresh's child
process works stops it (``UpdateWorker.preempt``: python-tuf and the listing record
write each file atomically), so an install or a rollback waits for a refresh only for
the moment it takes to kill a process. In process (``[download] isolated = false``)
a refresh cannot be stopped; the fetcher's timeouts bound it. The schedule is pure
(agent/ota/refresh.py). A refresh only reads metadata: whatever it finds (expired
metadata, an unreachable controller), the device serves what it served.

Logged at debug when nothing changed, at info when the listing changed or refreshes
work again, as a warning when one fails; the outcome is in the OTA status
(``metadata``), published when it changes from working to failing or back.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.ota.agreement import verified_at
from agent.ota.refresh import Outcome, RefreshSchedule

if TYPE_CHECKING:
    from agent.ota.updater import Updater

log = logging.getLogger(__name__)


class Refresher:
    def __init__(
        self, updater: Updater, every_s: float, clock: Callable[[], float], rng: Callable[[], float] | None = None
    ) -> None:
        self.u = updater
        self.clock = clock
        # Each agent its own generator: agents of a simulated fleet share a process, not a schedule.
        self.schedule = RefreshSchedule(every_s, rng=rng or random.Random().random)  # noqa: S311 - jitter, not secrets
        self.next_at: float | None = None  # when the next periodic refresh is due; None: not planned (or off)
        self.last: Outcome | None = None  # the last refresh this agent did (periodic, or a refusal's poll)
        self._planned_from: float | None = None  # the listing time the plan was made from

    @property
    def enabled(self) -> bool:
        return self.schedule.enabled and self.u.image_repo_source is not None and self.u.listing is not None

    def plan(self) -> None:
        """Plan the next refresh from the recorded listing, when it is newer than the one planned from
        (an install refreshed it): a working refresh clears any backoff."""
        if not self.enabled:
            return
        assert self.u.listing is not None
        at = verified_at(self.u.listing)
        if self.next_at is not None and (at is None or (self._planned_from is not None and at <= self._planned_from)):
            return
        self._planned_from = at
        self.next_at = self.schedule.after_listing(at, self.clock())
        if self.last is not None and not self.last.ok and at is not None and at > self.last.at:
            self.last = Outcome(at=at, ok=True)  # an install's refresh worked since

    def wait_s(self) -> float | None:
        """Seconds until the next periodic refresh; None: none planned."""
        return None if self.next_at is None else max(0.0, self.next_at - self.clock())

    def due(self) -> bool:
        return self.next_at is not None and self.clock() >= self.next_at

    def refresh(self) -> Outcome | None:
        """Refresh now (the periodic refresh, or a refusal's metadata poll); None when stopped for an install."""
        if self.u.image_repo_source is None or self.u.listing is None:
            return None
        now = self.clock()
        before = _digest(self.u.listing / "targets.json")
        if self.u.worker is not None:
            from agent.ota.worker import Preempted

            try:
                digest, reason = self.u.worker.metadata_digest(waiting=self.u.busy)
            except Preempted:
                log.debug("metadata refresh stopped for an install")
                if self.enabled:
                    self.next_at = now + self.schedule.backoff_s(1)
                return None
        else:
            from agent.ota.download import metadata_digest

            try:
                repo = self.u.steps.image_repo
                assert repo is not None
                digest, reason = metadata_digest(repo)
            except Exception as exc:  # anything unforeseen is a failed refresh (backed off), never a busy loop
                digest, reason = None, f"{type(exc).__name__}: {exc}"
        prev = self.last
        if digest is not None:
            out = Outcome(at=now, ok=True, changed=digest != before)
            if prev is not None and not prev.ok:
                log.info("image repository metadata refreshed again after %d failed attempts", prev.failures)
            elif out.changed:
                log.info("image repository metadata refreshed: the release listing changed")
            else:
                log.debug("image repository metadata refreshed: unchanged")
            self._planned_from = verified_at(self.u.listing)
            self.next_at = self.schedule.after_listing(self._planned_from, now) if self.enabled else None
        else:
            failures = 1 if prev is None or prev.ok else prev.failures + 1
            out = Outcome(at=now, ok=False, reason=reason, failures=failures)
            self.next_at = self.schedule.after_failure(failures, now) if self.enabled else None
            later = "" if self.next_at is None else f"; next try in {self.next_at - now:.0f} s"
            log.warning(
                "image repository metadata not refreshed (failure %d%s); the device keeps serving what it has: %s",
                failures, later, reason,
            )  # fmt: skip
        self.last = out
        if prev is None or (prev.ok, prev.reason) != (out.ok, out.reason):
            self.u.on_change()  # the status says so
        return out

    def status(self) -> dict[str, Any]:
        """The ``metadata`` part of the OTA status."""
        last = self.last
        return {
            "verified_at": None if self.u.listing is None else verified_at(self.u.listing),  # the listing in use
            "refresh_s": self.schedule.every_s if self.enabled else 0.0,
            "next_at": self.next_at,
            "last_at": None if last is None else last.at,
            "ok": None if last is None else last.ok,
            "reason": "" if last is None else last.reason,
            "failures": 0 if last is None else last.failures,
        }


def _digest(path: Any) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
