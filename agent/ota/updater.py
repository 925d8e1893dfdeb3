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
from agent.ota.checks import RejectedError, check_desired, latency_p50_ms
from agent.ota.state import (
    AT_REST,
    Activate,
    Activated,
    Assign,
    Downloaded,
    Event,
    Fail,
    HealthPassed,
    OtaRecord,
    Restarted,
    RolledBack,
    State,
    Target,
    Verified,
    transition,
)
from agent.ota.store import Store
from agent.runtime import LoadedModel, ModelLoadError, golden_check, load_model
from shared import bundle as bundle_fmt
from shared.errors import SchemaError
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
    ) -> None:
        self.download_attempts = download_attempts
        self.device_id = device_id
        self.arch = arch
        self.trusted = trusted
        self.store = store
        self.host = host
        self._fetcher = fetcher  # or a factory, called on the first update (see make_updater)
        self._image_repo = image_repo
        self.report = report
        self.on_change = on_change
        self.threads = threads
        self.health = health or HealthConfig()
        self.checkpoint = checkpoint  # an observer of OTA progress (the crash tests pause the agent here)
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name="updater", daemon=True)
        self._candidate: LoadedModel | None = None  # loaded beside the running model
        self._displaced: LoadedModel | None = None  # what the candidate replaced, for an instant swap back

    @property
    def fetcher(self) -> Fetcher:
        if callable(self._fetcher):
            self._fetcher = self._fetcher()
        return self._fetcher

    @property
    def image_repo(self) -> ImageRepoClient | None:
        if callable(self._image_repo):
            self._image_repo = self._image_repo()
        return self._image_repo

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

    def _restore_role(self, role: str) -> None:
        for which in ("active", "previous"):
            inst = self.store.slot(role, which)
            if inst is None:
                continue
            try:
                self.host.swap(role, self._load(inst.sha256))
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
        while (payload := self._queue.get()) is not None:
            try:
                self.apply(payload)
            except Exception as exc:  # the updater thread must survive anything
                log.exception("unexpected error applying desired state")
                self.report("desired.error", "error", f"unexpected error: {exc}", {})

    def apply(self, payload: bytes) -> None:
        digest = hashlib.sha256(payload).hexdigest()
        if digest == self.store.desired_digest:
            log.debug("desired state already applied (retained copy re-delivered)")
            return
        try:
            desired = check_desired(
                payload, device_id=self.device_id, trusted=self.trusted, last_counter=self.store.counter, at=time.time()
            )
        except RejectedError as exc:
            log.warning("rejected desired state: %s", exc)
            self.report("desired.rejected", "warning", str(exc), {})
            return
        self.store.set_counter(desired.counter, digest)
        for role, a in desired.assignments.items():
            active = self.store.slot(role)
            if active is not None and active.sha256 == a.sha256:
                continue
            self.install(role, a)

    def install(self, role: str, a: Assignment) -> OtaRecord:
        """Run one update to its end (committed, rolled back or rejected) and return the final record."""
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
        handlers = {
            State.DOWNLOADING: self._download,
            State.VERIFYING: self._verify,
            State.STAGED: lambda rec: Activate(),
            State.ACTIVATING: self._activate,
            State.HEALTH_CHECK: self._health_check,
            State.ROLLING_BACK: self._roll_back,
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

    def _detail(self, rec: OtaRecord) -> dict[str, Any]:
        t = rec.target
        assert t is not None
        return {"role": rec.role, "model": t.model, "version": t.version, "sha256": t.sha256, "state": rec.state.value}

    def _download(self, rec: OtaRecord) -> Event:
        t = rec.target
        assert t is not None and rec.role is not None
        a = Assignment(t.model, t.version, t.sha256, t.length, t.url)
        from agent.ota.fetcher import DiskFullError, DownloadError, HashError, LengthError, SlowRetrievalError
        from agent.ota.trust import TrustError

        if self.image_repo is None:
            return Fail("no image repository configured: cannot verify the release signature")
        try:
            self.image_repo.target_for(a, arch=self.arch)
        except TrustError as exc:
            return Fail(str(exc))
        self.report("ota.downloading", "info", f"downloading {t.model} v{t.version} ({t.length} bytes)", self._detail(rec))
        progress = None
        if self.checkpoint is not None:
            checkpoint, half = self.checkpoint, t.length // 2

            def progress(got: int, total: int) -> None:
                if got >= half:
                    checkpoint("DOWNLOADING.half", t.version)

        for attempt in range(1, self.download_attempts + 1):
            try:
                self.fetcher.download(t.url, self.store.download_path, length=t.length, sha256=t.sha256, progress=progress)
                return Downloaded()
            except (LengthError, HashError, DiskFullError, SlowRetrievalError) as exc:
                return Fail(f"download failed: {type(exc).__name__}: {exc}")
            except DownloadError as exc:  # transient: resume from what is on disk
                if attempt == self.download_attempts:
                    return Fail(f"download failed after {attempt} attempts: {type(exc).__name__}: {exc}")
                log.warning("download attempt %d failed (%s); resuming", attempt, exc)
                time.sleep(min(2.0**attempt, 30.0))
        raise AssertionError("unreachable")

    def _verify(self, rec: OtaRecord) -> Event:
        t = rec.target
        assert t is not None and rec.role is not None
        if not self.store.bundle_path(t.sha256).exists():
            p = self.store.download_path
            if not p.exists() or p.stat().st_size != t.length or bundle_fmt.sha256_file(p) != t.sha256:
                p.unlink(missing_ok=True)
                return Fail("downloaded bundle does not match the signed length and sha256")
            self.store.keep_download(t.sha256)
        try:
            b = self.store.verify_bundle(t.sha256)
        except (bundle_fmt.BundleError, SchemaError, OSError) as exc:
            return Fail(f"bundle invalid: {exc}")
        m = b.manifest
        if (m.name, m.version) != (t.model, t.version):
            return Fail(f"bundle is {m.name} v{m.version}, the assignment says {t.model} v{t.version}")
        if not m.supports(self.arch):
            return Fail(f"wrong hardware: bundle supports {m.hardware.get('arch')}, this device is {self.arch}")
        self.store.set_slot(rec.role, "candidate", RunningModel(m.name, m.version, t.sha256, m.runtime, time.time()))
        return Verified()

    def _activate(self, rec: OtaRecord) -> Event:
        """Load the candidate beside the running model (nothing switches yet)."""
        t = rec.target
        assert t is not None
        try:
            self._candidate = self._load(t.sha256)
        except RejectedError as exc:
            return Fail(str(exc))
        return Activated()

    def _health_check(self, rec: OtaRecord) -> Event:
        """Golden vectors and latency budget beside the old model, then live inferences after the switch."""
        assert rec.role is not None
        cand = self._candidate
        if cand is None:
            return Fail("candidate was not loaded")
        try:
            golden_check(cand)
            p50 = latency_p50_ms(cand, self.health.latency_runs, cpu_clock=self.threads == 1)
        except (ModelLoadError, ValueError) as exc:
            return Fail(f"health check failed: {exc}")
        budget = cand.manifest.latency_budget_ms
        if budget and p50 > budget:
            return Fail(f"health check failed: latency p50 {p50:.3f} ms exceeds the budget of {budget:.3f} ms")
        probe = self.host.probe(rec.role, cand)
        self._displaced = self.host.swap(rec.role, cand)
        self.on_change()  # the status says the candidate serves while it is checked
        deadline = time.monotonic() + self.health.live_window
        while probe.errors == 0 and probe.ok < self.health.live_inferences and time.monotonic() < deadline:
            time.sleep(0.02)
        self.host.unprobe(rec.role)
        if probe.errors:
            return Fail(
                f"health check failed: {probe.errors} of {probe.errors + probe.ok} live inferences failed ({probe.first_error})"
            )
        return HealthPassed()

    def _roll_back(self, rec: OtaRecord) -> Event:
        assert rec.role is not None
        role = rec.role
        restored = self.store.roll_back(role, rec.previous_sha256, f"rolled back: {rec.reason}", time.time())
        if self._displaced is not None and restored is not None and self._displaced.sha256 == restored.sha256:
            self.host.swap(role, self._displaced)
        elif restored is not None:
            current = self.host.roles().get(role)
            if current is None or current.sha256 != restored.sha256:
                try:
                    self.host.swap(role, self._load(restored.sha256))
                except RejectedError as exc:
                    self.report("slot.invalid", "error", f"previous model in {role} unusable: {exc}", {"role": role})
        else:
            self.host.remove(role)
        return RolledBack()

    def _finish(self, rec: OtaRecord) -> None:
        """Report the end of an update and reset the in-memory candidate."""
        self._candidate = None
        self._displaced = None
        if rec.target is None or rec.role is None:
            return
        detail = {**self._detail(rec), "reason": rec.reason, "history": list(rec.history)}
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

    def _load(self, sha256: str) -> LoadedModel:
        """Re-verify a stored bundle against its signed hash and load it; raise RejectedError."""
        try:
            b = self.store.verify_bundle(sha256)
        except (bundle_fmt.BundleError, SchemaError, OSError) as exc:
            raise RejectedError(f"bundle invalid: {exc}") from None
        if not b.manifest.supports(self.arch):
            raise RejectedError(f"wrong hardware: bundle supports {b.manifest.hardware.get('arch')}, this device is {self.arch}")
        try:
            return load_model(b.manifest, b.model, sha256, threads=self.threads)
        except ModelLoadError as exc:
            raise RejectedError(f"cannot load: {exc}") from None
