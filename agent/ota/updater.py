"""From a desired-state message to a verified, health-checked, committed model.

``Updater`` drives the OTA state machine
(agent/ota/state.py): it persists every record the machine returns before it
acts on it, and does the I/O through seams: the image-repository client
(TUF), the fetcher, the store (slots on disk) and the model host. Every
decision is reported through ``report(kind, severity, message, detail)``; a
rejection at any step leaves the running model untouched. The checks it
applies without I/O live in agent/ota/checks.py; ``make_updater``
(agent/ota/build.py) builds it from the configuration.

A record or slot file that cannot be written (the disk is full) is handled
as a crash the process survived (``_interrupted``): only what is on disk is
true, the role serves what a restart would serve (its last committed model),
and the persisted record is resumed as after a restart on the next attempt,
which the convergence retries with backoff until the disk has room.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import HealthConfig
from agent.host import ModelHost
from agent.ota.checks import RejectedError, Verify, check_desired
from agent.ota.converge import Converger
from agent.ota.metadata import Refresher
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
    from agent.ota.worker import UpdateWorker
    from agent.runtime.cache import ModelCache

log = logging.getLogger(__name__)
Report = Callable[[str, str, str, dict[str, Any]], None]
__all__ = ["Checkpoint", "Report", "Updater", "Verify"]
Checkpoint = Callable[[str, "int | None"], None]  # (point, target version): after each OTA transition, and mid-download


class Updater:
    def __init__(
        self,
        *,
        device_id: str,
        arch: str,
        trusted: Verify,
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
        models: ModelCache | None = None,
        worker: UpdateWorker | None = None,
        listing: Path | None = None,
        vouched_max_age: float = 0.0,
        refresh_s: float = 0.0,
        rng: Callable[[], float] | None = None,
    ) -> None:
        self.download_attempts = download_attempts
        self.device_id = device_id
        self.arch = arch
        self.trusted = trusted  # director keys (key id -> key), or a function that verifies an envelope
        self.worker = worker  # the update stack in a child process (agent.ota.worker), or None: in this one
        self.store = store
        self.host = host
        self.fetcher_source = fetcher  # or a factory, called on the first update (see make_updater)
        self.image_repo_source = image_repo
        self.report = report
        self.on_change = on_change
        self.threads = threads
        self.models = models  # loaded models shared with the process's other agents (a simulated fleet), or None
        # The image repository's last verified listing (agent/ota/agreement.py), and how recent it must be for a
        # bundle already on the device to install again without a refresh (0: always refresh).
        self.listing = listing
        self.vouched_max_age = vouched_max_age  # seconds
        self.health = health or HealthConfig()
        self.checkpoint = checkpoint  # an observer of OTA progress (the crash tests pause the agent here)
        self.converger = Converger(self, retry or Convergence(), metadata_poll_s, clock)  # retries, why not converged
        self.refresher = Refresher(self, refresh_s, clock, rng)  # the metadata refreshed when nothing installs (ADR 0082)
        self._queue: queue.Queue[bytes | Callable[[], None] | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name="updater", daemon=True)
        self.steps = Steps(self)
        self._resume_cause: str | None = None  # set: the persisted record is resumed as after a restart

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
            "reason": self._resume_cause or rec.reason,
            **self.converger.status(),
            "metadata": self.refresher.status(),
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
            try:
                self._step(Restarted())
                if self.store.ota.state is State.ROLLING_BACK and self.store.ota.role:
                    # Persist the rolled-back slots before loading anything.
                    self.store.roll_back(self.store.ota.role, self.store.ota.previous_sha256, self.store.ota.reason, time.time())
            except OSError as exc:  # the disk is full: serve the committed models, resume when it has room
                log.error("cannot write the update record at start-up (%s); serving the committed models", exc)
                self.store.reload()
                self._resume_cause = self._resume_cause or f"the update record could not be written ({_why(exc)})"
        for role in list(self.store.state.get("roles", {})):
            self._restore_role(role)
        self.host.router.set(self.store.routing)  # the last weights, until a newer desired state arrives
        self.host.batch.set(self.store.batch_features)  # likewise the batch-feature values

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
                try:
                    self.store.set_slot(role, "active", replace(inst, since=time.time(), reason=reason))
                    self.store.set_slot(role, "previous", None)
                except OSError as exc:  # serving it is what matters; the slots are fixed at the next start
                    log.error("cannot record that %s serves its previous model: %s", role, exc)
                    self.store.reload()
            return

    # -- desired-state handling ----------------------------------------------
    def submit(self, payload: bytes) -> None:
        """Called from the MQTT thread; the work happens on the updater thread (a metadata refresh there stops)."""
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.report("desired.dropped", "warning", "desired-state queue full; a newer one will follow", {})
        if self.worker is not None:
            self.worker.preempt()

    def busy(self) -> bool:
        """Work (a desired state, a reconnect, the stop) waits for the updater thread."""
        return not self._queue.empty()

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
        if self.worker is not None:
            self.worker.preempt()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            if self.store.ota.state not in AT_REST:
                self._resume()  # an update a restart interrupted
        except Exception as exc:
            log.exception("unexpected error resuming the update")
            self.report("ota.error", "error", f"unexpected error: {exc}", {})
        self.converger.restarted()
        while True:
            try:
                self.refresher.plan()  # from the listing an install may just have refreshed
                waits = [w for w in (self.converger.wait_s(), self.refresher.wait_s()) if w is not None]
                item = self._queue.get(timeout=min(waits) if waits else None)
            except queue.Empty:
                item = self._due  # a retry or a refresh is due, or it is time to look for new release metadata
            if item is None:
                return
            try:
                item() if callable(item) else self.apply(item)
            except Exception as exc:  # the updater thread must survive anything
                log.exception("unexpected error applying desired state")
                self.report("desired.error", "error", f"unexpected error: {exc}", {})

    def _due(self) -> None:
        if self.refresher.due() and self._queue.empty():  # a desired state waiting goes first
            out = self.refresher.refresh()
            if out is not None and out.changed:
                self.converger.metadata_changed()
        self.converger.converge()

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
            try:
                self.store.set_counter(desired.counter, digest, desired.routing, desired.features)
            except OSError as exc:  # a full disk: act on it from memory; the next state write saves it
                log.warning("desired state %d accepted but not saved: %s", desired.counter, exc)
                self.report("desired.unsaved", "warning", f"accepted but not saved ({_why(exc)}); acting on it", {})
        self.host.router.set(desired.routing)
        self.host.batch.set(desired.features)
        self.host.sampling = dict(desired.sampling)
        self.converger.accepted(desired, again=again)
        self.converger.converge()

    def install(self, role: str, a: Assignment) -> OtaRecord:
        """Run one update to its end (committed, rolled back or rejected) and return the final record."""
        if self.store.ota.state not in AT_REST:
            self._resume()  # finish what an earlier attempt left (its last record could not be written)
            done = self.store.slot(role)
            if done is not None and done.sha256 == a.sha256:
                return self.store.ota  # that was this very update
        active = self.store.slot(role)
        target = Target(a.model, a.version, a.sha256, a.length, a.url)
        self._step(Assign(role, target, None if active is None else active.sha256))
        self._drive()
        return self.store.ota

    def unload_others(self, keep: set[str]) -> None:
        """Roles the desired state no longer names stop: unloaded, their slots and bundles dropped, each reported."""
        if self.store.ota.state not in AT_REST:
            return  # never under an update in flight; the next convergence does it
        gone = sorted((set(self.store.state.get("roles", {})) | set(self.host.roles())) - keep)
        for role in gone:
            loaded = self.host.remove(role)
            slot = self.store.slot(role)
            self.store.drop_role(role)
            model, version = (
                (slot.model, slot.version) if slot else (loaded.manifest.name, loaded.manifest.version) if loaded else ("", 0)
            )
            log.info("unloaded %s v%s from role %s: the desired state no longer names it", model, version, role)
            detail = {"role": role, "model": model, "version": version}
            self.report("role.unloaded", "info", f"unloaded {model} v{version} from role {role}: no longer assigned", detail)
        if gone:
            self.on_change()

    # -- the machine -----------------------------------------------------------
    def _step(self, event: Event) -> OtaRecord:
        rec = transition(self.store.ota, event)
        try:
            self.store.save_ota(rec)  # persisted before anything acts on it
        except OSError as exc:
            self._interrupted(exc)
            raise
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
            except OSError as exc:  # a slot file could not be written: as if the process had crashed here
                self._interrupted(exc)
                raise
            except Exception as exc:  # an unexpected failure fails the update, never wedges the machine
                log.exception("unexpected error in OTA state %s", rec.state.value)
                event = (
                    RolledBack() if rec.state is State.ROLLING_BACK else Fail(f"unexpected error: {type(exc).__name__}: {exc}")
                )
            self._step(event)
        self._finish(self.store.ota)

    def _resume(self) -> None:
        """Drive the persisted record to rest; after an interruption, first as a restart would."""
        if self._resume_cause is not None:
            self._step(Restarted(cause=self._resume_cause))
            self._resume_cause = None
            if self.store.ota.state is not State.ROLLING_BACK:
                self.on_change()
        self._drive()

    def _interrupted(self, exc: OSError) -> None:
        """A write failed mid-update: keep only what is on disk and serve what a restart would serve."""
        log.error("OTA: cannot write to the data directory (%s); serving the last committed model", exc)
        self.store.reload()
        self.steps.reset()
        rec = self.store.ota
        if rec.state in AT_REST:
            return
        self._resume_cause = f"the update record could not be written ({_why(exc)})"
        if rec.role is not None:
            self._serve_committed(rec.role)
        self.on_change()

    def _serve_committed(self, role: str) -> None:
        """Put the role's committed (active) model back in front if the candidate serves."""
        active = self.store.slot(role)
        current = self.host.roles().get(role)
        if active is None:
            if current is not None and self.store.ota.previous_sha256 is None:
                self.host.remove(role)
            return
        if current is not None and current.sha256 == active.sha256:
            return
        try:
            self.host.swap(role, self.steps.load(active.sha256))
        except RejectedError as exc:
            self.report("slot.invalid", "error", f"active model in {role} unusable: {exc}", {"role": role})

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
            self.store.clear_downloads()
            self.store.set_slot(rec.role, "candidate", None)
            log.warning("rejected %s v%s for %s: %s", t.model, t.version, rec.role, rec.reason)
            self.report("ota.rejected", "error", rec.reason, detail)
        self.store.collect_garbage()
        self.on_change()


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
