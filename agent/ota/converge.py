"""Converging to the desired state: install what is due, retry what failed, say why not converged.

``Converger`` holds the last accepted desired state and the retry policy
(agent/ota/retry.py); the ``Updater`` calls ``converge()`` after a desired
state arrives, after a reconnect and whenever a retry or a metadata poll is
due (``wait_s()``), on its one thread. The install itself is the updater's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agent.ota.retry import Convergence
from agent.ota.state import OtaRecord, State
from shared.messages import Assignment, Desired

if TYPE_CHECKING:
    from agent.ota.updater import Updater

log = logging.getLogger(__name__)


class Converger:
    def __init__(self, updater: Updater, retry: Convergence, metadata_poll_s: float, clock: Callable[[], float]) -> None:
        self.u = updater
        self.retry = retry
        self.metadata_poll_s = metadata_poll_s  # how often a standing refusal looks for new release metadata
        self.clock = clock
        self.desired: Desired | None = None  # the last desired state accepted
        self._polled_at: float | None = None  # the last metadata poll (or the refusal's own refresh) while one stands

    def restarted(self) -> None:
        """After start-up (and any resumed update): a rollback on record is a refusal, not retried in a loop
        (the candidate may be what crashed the agent) until the assignment or the release metadata changes."""
        rec = self.u.store.ota
        if rec.state is State.ROLLED_BACK and rec.role and rec.target:
            self.retry.failed(rec.role, rec.target.sha256, rec.target.version, rec.reason, permanent=True, now=self.clock())
            self._polled_at = self.clock()

    def accepted(self, desired: Desired, *, again: bool) -> None:
        """A desired state passed the checks; ``again``: the same one re-delivered (reconnect, restart)."""
        if again:
            self.retry.reconnected(self.clock())
        else:
            self.retry.changed()  # a new desired state: refusals are decided afresh
        self.desired = desired

    def reconnected(self) -> None:
        self.retry.reconnected(self.clock())
        self.converge()

    def wait_s(self) -> float | None:
        """Seconds until the next retry or metadata poll; None: nothing to wait for."""
        due = [t for t in (self.retry.next_due(),) if t is not None]
        if any(f.permanent for f in self.retry.pending()):
            due.append((self._polled_at or 0.0) + self.metadata_poll_s)
        return None if not due else max(0.05, min(due) - self.clock())

    def status(self) -> dict[str, Any]:
        """The ``converged`` and ``pending`` parts of the reported OTA status."""
        d = self.desired
        return {
            "converged": d is None or all(self._running_assigned(role) for role in d.assignments),
            "pending": [
                {
                    "role": f.role,
                    "version": f.version,
                    "sha256": f.sha256,
                    "reason": f.reason,
                    "failures": f.failures,
                    "retry_at": f.retry_at,  # None: refused until the assignment or the release metadata changes
                }
                for f in self.retry.pending()
                if not self._running_assigned(f.role)
            ],
        }

    def _running_assigned(self, role: str) -> bool:
        d = self.desired
        a = None if d is None else d.assignments.get(role)
        slot = self.u.store.slot(role)
        return a is not None and slot is not None and slot.sha256 == a.sha256

    def converge(self) -> None:
        """Install every assignment that is not running yet and is due; report why the agent has not converged."""
        d = self.desired
        if d is None:
            return
        self.retry.forget_others({role: a.sha256 for role, a in d.assignments.items()})
        self.u.unload_others(set(d.assignments))
        self._poll_metadata()
        for role, a in d.assignments.items():
            if self._running_assigned(role):
                self.retry.succeeded(role)
                continue
            if not self.retry.due(role, a.sha256, self.clock()):
                continue
            rec = self._attempt(role, a)
            if rec.state is State.COMMITTED:
                self.retry.succeeded(role)
                continue
            self._failed(role, a, rec.reason)

    def _attempt(self, role: str, a: Assignment) -> OtaRecord:
        try:
            return self.u.install(role, a)
        except OSError as exc:  # the record itself could not be written (e.g. the disk is full)
            self.u.steps.transient = True
            return replace(self.u.store.ota, state=State.IDLE, reason=f"cannot write the update record: {exc}")

    def _failed(self, role: str, a: Assignment, reason: str) -> None:
        now = self.clock()
        f = self.retry.failed(role, a.sha256, a.version, reason, permanent=not self.u.steps.transient, now=now)
        if f.permanent and self._polled_at is None:
            self._polled_at = now  # the install refreshed the metadata just now
        detail = {"role": role, "model": a.model, "version": a.version, "failures": f.failures, "retry_at": f.retry_at}
        if f.permanent:
            msg = f"not retrying {a.model} v{a.version} until the assignment or the release metadata changes: {f.reason}"
            self.u.report("ota.not_converged", "error", msg, {**detail, "reason": f.reason})
        else:
            msg = f"will retry {a.model} v{a.version} in {(f.retry_at or now) - now:.0f} s (failure {f.failures}): {f.reason}"
            self.u.report("ota.retry_scheduled", "warning", msg, {**detail, "reason": f.reason})
        self.u.on_change()

    def metadata_changed(self) -> None:
        """A refresh found new release metadata: refusals are decided again, transient failures are due now."""
        if self.retry.pending():
            log.info("release metadata changed: failed and refused assignments are tried again")
            self.retry.changed()

    def _poll_metadata(self) -> None:
        """While a refusal stands, look now and then for new release metadata; new metadata re-decides refusals."""
        if not any(f.permanent for f in self.retry.pending()):
            self._polled_at = None
            return
        now = self.clock()
        if (self._polled_at is not None and now - self._polled_at < self.metadata_poll_s) or self.u.image_repo_source is None:
            return
        self._polled_at = now
        out = self.u.refresher.refresh()
        if out is not None and out.changed:
            self.metadata_changed()
