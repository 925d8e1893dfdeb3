"""From a desired-state message to a verified, health-checked, committed model.

``Updater`` drives the OTA state machine
(agent/ota/state.py): it persists every record the machine returns before it
acts on it, and does the I/O through seams: the image-repository client
(TUF), the fetcher, the store (slots on disk) and the model host. Every
decision is reported through ``report(kind, severity, message, detail)``; a
rejection at any step leaves the running model untouched. The checks it
applies without I/O live in agent/ota/checks.py; ``make_updater``
(agent/ota/build.py) builds it from the configuration.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.config import HealthConfig
from agent.host import ModelHost
from agent.ota.checks import RejectedError, check_desired
from agent.ota.converge import Converger
from agent.ota.retry import Convergence
from agent.ota.state import (
    AT_REST,
    Activate,
    Assign,
    Event,
    Fail,
    OtaRecord,
    Restarted,
    RolledBack,
    State,
    Target,
    transition,
)
from agent.ota.steps import Steps, detail_of
from agent.ota.store import Store
from shared.messages import Assignment, RunningModel

if TYPE_CHECKING:  # the update stack (python-tuf, urllib3, securesystemslib) loads on the first update
    from agent.ota.fetcher import Fetcher
    from agent.ota.trust import ImageRepoClient

log = logging.getLogger(__name__)
Report = Callable[[str, str, str, dict[str, Any]], None]
Checkpoint = Callable[[str, "int | None"], None]  # (point, target version): after each OTA transition, and mid-download


class Updater:
    def __init__(
        self,
        *,
        device_id: str,
        arch: str,
        trusted: dict[str, Ed25519PublicKey],
        store: Store,
        host: ModelHost,
        fetcher: Fetcher | Callable[[], Fetcher],
        image_repo: ImageRepoClient | Callable[[], ImageRepoClient] | None,
        report: Report,
        on_change: Callable[[], None],
        threads: int = 1,
        health: HealthConfig | None = None,
        download_attempts: int = 3,
        checkpoint: Checkpoint | None = None,
        retry: Convergence | None = None,
        metadata_poll_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.download_attempts = download_attempts
        self.device_id = device_id
        self.arch = arch
        self.trusted = trusted
        self.store = store
        self.host = host
        self.fetcher_source = fetcher  # or a factory, called on the first update (see make_updater)
        self.image_repo_source = image_repo
        self.report = report
        self.on_change = on_change
        self.threads = threads
        self.health = health or HealthConfig()
        self.checkpoint = checkpoint  # an observer of OTA progress (the crash tests pause the agent here)
        self.converger = Converger(self, retry or Convergence(), metadata_poll_s, clock)  # retries, why not converged
        self._queue: queue.Queue[bytes | Callable[[], None] | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name="updater", daemon=True)
        self.steps = Steps(self)

    # -- what runs -----------------------------------------------------------
    def running(self) -> dict[str, RunningModel]:
        """The truth for the retained status: what each role serves right now, and why."""
        out = {}
        for role, model in self.host.roles().items():
            m = model.manifest
            slot = self.store.slot(role)
            reason = slot.reason if slot is not None and slot.sha256 == model.sha256 else ""
            if self.store.ota.state is State.HEALTH_CHECK and self.store.ota.role == role:
                reason = "candidate under health check"
            out[role] = RunningModel(m.name, m.version, model.sha256, m.runtime, model.loaded_at, reason)
        return out

    def ota_status(self) -> dict[str, Any]:
        rec = self.store.ota
        t = rec.target
        return {
            "state": rec.state.value,
            "role": rec.role,
            "target": None if t is None else {"model": t.model, "version": t.version, "sha256": t.sha256},
            "reason": rec.reason,
            **self.converger.status(),
        }

    # -- start-up ------------------------------------------------------------
    def restore(self) -> None:
        """Finish what a crash interrupted, then load each role's active slot (or previous)."""
        rec = self.store.ota
        if rec.state is State.COMMITTED and rec.role and rec.target:
            try:
                self.store.commit(rec.role, rec.target.sha256, time.time())  # idempotent: the commit may have been cut short
            except KeyError:
                pass
        if rec.state not in AT_REST:
            self._step(Restarted())
            if self.store.ota.state is State.ROLLING_BACK and self.store.ota.role:
                # Persist the rolled-back slots before loading anything.
                self.store.roll_back(self.store.ota.role, self.store.ota.previous_sha256, self.store.ota.reason, time.time())
        for role in list(self.store.state.get("roles", {})):
            self._restore_role(role)
        self.host.router.set(self.store.routing)  # the last weights, until a newer desired state arrives

    def _restore_role(self, role: str) -> None:
        for which in ("active", "previous"):
            inst = self.store.slot(role, which)
            if inst is None:
                continue
            try:
                self.host.swap(role, self.steps.load(inst.sha256))
            except RejectedError as exc:
                self.report(
                    "slot.invalid", "error", f"{which} model in {role} unusable: {exc}", {"role": role, "sha256": inst.sha256}
                )
                continue
            if which == "previous":
                reason = f"active slot failed verification at start-up; serving previous v{inst.version}"
                self.store.set_slot(role, "active", replace(inst, since=time.time(), reason=reason))
                self.store.set_slot(role, "previous", None)
            return

    # -- desired-state handling ----------------------------------------------
    def submit(self, payload: bytes) -> None:
        """Called from the MQTT thread; the work happens on the updater thread."""
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.report("desired.dropped", "warning", "desired-state queue full; a newer one will follow", {})

    def reconnected(self) -> None:
        """The broker link is back (called from the MQTT thread): retry transient failures now."""
        try:
            self._queue.put_nowait(self._on_reconnect)
        except queue.Full:
            pass  # the queue already holds work; convergence runs after it

    def _on_reconnect(self) -> None:
        self.converger.reconnected()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            if self.store.ota.state not in AT_REST:
                self._drive()  # resume an update a restart interrupted
        except Exception as exc:
            log.exception("unexpected error resuming the update")
            self.report("ota.error", "error", f"unexpected error: {exc}", {})
        self.converger.restarted()
        while True:
            try:
                item = self._queue.get(timeout=self.converger.wait_s())
            except queue.Empty:
                item = self.converger.converge  # a retry is due, or it is time to look for new release metadata
            if item is None:
                return
            try:
                item() if callable(item) else self.apply(item)
            except Exception as exc:  # the updater thread must survive anything
                log.exception("unexpected error applying desired state")
                self.report("desired.error", "error", f"unexpected error: {exc}", {})

    def apply(self, payload: bytes) -> None:
        digest = hashlib.sha256(payload).hexdigest()
        again = digest == self.store.desired_digest  # the retained copy, re-delivered after a (re)connect or restart
        try:
            desired = check_desired(
                payload,
                device_id=self.device_id,
                trusted=self.trusted,
                last_counter=self.store.counter - 1 if again else self.store.counter,  # the same one again is no replay
                at=time.time(),
            )
        except RejectedError as exc:
            log.warning("rejected desired state: %s", exc)
            self.report("desired.rejected", "warning", str(exc), {})
            return
        if not again:
            self.store.set_counter(desired.counter, digest, desired.routing)
        self.host.router.set(desired.routing)
        self.converger.accepted(desired, again=again)
        self.converger.converge()

    def install(self, role: str, a: Assignment) -> OtaRecord:
        """Run one update to its end (committed, rolled back or rejected) and return the final record."""
        if self.store.ota.state not in AT_REST:
            self._drive()  # finish what an earlier attempt left (its last record could not be written)
        active = self.store.slot(role)
        target = Target(a.model, a.version, a.sha256, a.length, a.url)
        self._step(Assign(role, target, None if active is None else active.sha256))
        self._drive()
        return self.store.ota

    # -- the machine -----------------------------------------------------------
    def _step(self, event: Event) -> OtaRecord:
        rec = transition(self.store.ota, event)
        self.store.save_ota(rec)  # persisted before anything acts on it
        log.info("OTA %s -> %s", type(event).__name__, rec.state.value)
        if self.checkpoint is not None:
            self.checkpoint(rec.state.value, None if rec.target is None else rec.target.version)
        return rec

    def _drive(self) -> None:
        s = self.steps
        handlers = {
            State.DOWNLOADING: s.download,
            State.VERIFYING: s.verify,
            State.STAGED: lambda rec: Activate(),
            State.ACTIVATING: s.activate,
            State.HEALTH_CHECK: s.health_check,
            State.ROLLING_BACK: s.roll_back,
        }
        while (rec := self.store.ota).state not in AT_REST:
            try:
                event = handlers[rec.state](rec)
            except Exception as exc:  # an unexpected failure fails the update, never wedges the machine
                log.exception("unexpected error in OTA state %s", rec.state.value)
                event = (
                    RolledBack() if rec.state is State.ROLLING_BACK else Fail(f"unexpected error: {type(exc).__name__}: {exc}")
                )
            self._step(event)
        self._finish(self.store.ota)

    def _finish(self, rec: OtaRecord) -> None:
        """Report the end of an update and reset the in-memory candidate."""
        self.steps.reset()
        if rec.target is None or rec.role is None:
            return
        detail = {**detail_of(rec), "reason": rec.reason, "history": list(rec.history)}
        t = rec.target
        if rec.state is State.COMMITTED:
            self.store.commit(rec.role, t.sha256, time.time())
            log.info("now serving %s v%s in %s", t.model, t.version, rec.role)
            self.report("ota.committed", "info", f"now serving {t.model} v{t.version} in {rec.role}", detail)
        elif rec.state is State.ROLLED_BACK:
            log.warning("rolled back %s v%s in %s: %s", t.model, t.version, rec.role, rec.reason)
            self.report("ota.rolled_back", "error", f"rolled back {t.model} v{t.version}: {rec.reason}", detail)
        else:
            self.store.download_path.unlink(missing_ok=True)
            self.store.set_slot(rec.role, "candidate", None)
            log.warning("rejected %s v%s for %s: %s", t.model, t.version, rec.role, rec.reason)
            self.report("ota.rejected", "error", rec.reason, detail)
        self.store.collect_garbage()
        self.on_change()
