"""The I/O of each OTA state: download, verify, activate, health-check, roll back.

``Steps`` does the work for one state and returns the event for the machine
(agent/ota/state.py); the ``Updater`` persists it and moves on. Failures come back
as ``Fail(reason)`` events, never as exceptions; the running model is untouched
until the health check switches the pointer.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from agent.ota.agreement import vouched
from agent.ota.checks import RejectedError, latency_p50_ms
from agent.ota.state import Activated, Downloaded, Event, Fail, HealthPassed, OtaRecord, RolledBack, Verified
from agent.runtime import LoadedModel, ModelLoadError, golden_check, load_model
from shared import bundle as bundle_fmt
from shared.errors import SchemaError
from shared.messages import Assignment, RunningModel

if TYPE_CHECKING:  # the update stack (python-tuf, urllib3, securesystemslib) loads on the first update
    from agent.ota.fetcher import Fetcher
    from agent.ota.trust import ImageRepoClient
    from agent.ota.updater import Updater

log = logging.getLogger(__name__)


def detail_of(rec: OtaRecord) -> dict[str, Any]:
    t = rec.target
    assert t is not None
    return {"role": rec.role, "model": t.model, "version": t.version, "sha256": t.sha256, "state": rec.state.value}


class Steps:
    def __init__(self, updater: Updater) -> None:
        self.u = updater  # settings, store, host and report of the updater that drives these steps
        self._candidate: LoadedModel | None = None  # loaded beside the running model
        self._displaced: LoadedModel | None = None  # what the candidate replaced, for an instant swap back
        self.transient = False  # the last failure is worth retrying (network, disk full), not a refusal

    @property
    def fetcher(self) -> Fetcher:
        if callable(self.u.fetcher_source):
            self.u.fetcher_source = self.u.fetcher_source()
        return self.u.fetcher_source

    @property
    def image_repo(self) -> ImageRepoClient | None:
        if callable(self.u.image_repo_source):
            self.u.image_repo_source = self.u.image_repo_source()
        return self.u.image_repo_source

    def reset(self) -> None:
        """Forget the in-memory candidate once an update has ended."""
        self._candidate = None
        self._displaced = None

    def download(self, rec: OtaRecord) -> Event:
        t = rec.target
        assert t is not None and rec.role is not None
        a = Assignment(t.model, t.version, t.sha256, t.length, t.url)
        self.transient = False
        if self.u.image_repo_source is None:
            return Fail("no image repository configured: cannot verify the release signature")
        stored = self.u.store.bundle_path(t.sha256).exists()  # e.g. the model this role ran before: a rollback
        if stored and self.u.listing is not None:
            ok, how = vouched(self.u.listing, a, arch=self.u.arch, now=time.time(), max_age=self.u.vouched_max_age)
            if ok:  # the rollback fast path (ADR 0073): no download, no refresh; VERIFYING re-hashes the bundle
                self.u.report("ota.stored", "info", f"{t.model} v{t.version} is on this device, {how}", detail_of(rec))
                return Downloaded()
            log.info("%s v%s is on this device; asking the image repository (%s)", t.model, t.version, how)

        def on_trusted() -> None:
            what = "on this device already, no download" if stored else f"downloading {t.model} v{t.version} ({t.length} bytes)"
            self.u.report("ota.downloading", "info", what, detail_of(rec))

        progress = None
        if self.u.checkpoint is not None:
            checkpoint, half = self.u.checkpoint, t.length // 2

            def progress(got: int, total: int) -> None:
                if got >= half:
                    checkpoint("DOWNLOADING.half", t.version)

        # One partial download per target: a prefix left by another target (the assignment changed mid-download)
        # is never resumed into this one; it would only ever fail the hash check.
        self.u.store.clear_downloads(keep=t.sha256)
        dest, attempts = self.u.store.download_path(t.sha256), self.u.download_attempts
        if self.u.worker is not None:  # python-tuf, HTTP and signature checks in a short-lived process
            reason, self.transient = self.u.worker.fetch_target(
                a, arch=self.u.arch, dest=dest, attempts=attempts, on_trusted=on_trusted, progress=progress, stored=stored
            )
        else:
            from agent.ota.download import fetch_target

            repo = self.image_repo
            assert repo is not None
            reason, self.transient = fetch_target(
                repo,
                self.fetcher,
                a,
                arch=self.u.arch,
                dest=dest,
                attempts=attempts,
                on_trusted=on_trusted,
                progress=progress,
                stored=stored,
            )
        return Fail(reason) if reason is not None else Downloaded()

    def verify(self, rec: OtaRecord) -> Event:
        t = rec.target
        assert t is not None and rec.role is not None
        self.transient = False
        if not self.u.store.bundle_path(t.sha256).exists():
            p = self.u.store.download_path(t.sha256)
            if not p.exists() or p.stat().st_size != t.length or bundle_fmt.sha256_file(p) != t.sha256:
                p.unlink(missing_ok=True)
                return Fail("downloaded bundle does not match the signed length and sha256")
            self.u.store.keep_download(t.sha256)
        try:
            b = self.u.store.verify_bundle(t.sha256)
        except OSError as exc:  # e.g. the disk filled while the bundle moved into place
            self.transient = True
            return Fail(f"bundle not stored: {exc}")
        except (bundle_fmt.BundleError, SchemaError) as exc:
            return Fail(f"bundle invalid: {exc}")
        m = b.manifest
        if (m.name, m.version) != (t.model, t.version):
            return Fail(f"bundle is {m.name} v{m.version}, the assignment says {t.model} v{t.version}")
        if not m.supports(self.u.arch):
            return Fail(f"wrong hardware: bundle supports {m.hardware.get('arch')}, this device is {self.u.arch}")
        self.u.store.set_slot(rec.role, "candidate", RunningModel(m.name, m.version, t.sha256, m.runtime, time.time()))
        return Verified()

    def activate(self, rec: OtaRecord) -> Event:
        """Load the candidate beside the running model (nothing switches yet)."""
        t = rec.target
        assert t is not None
        try:
            self._candidate = self.load(t.sha256)
        except RejectedError as exc:
            return Fail(str(exc))
        return Activated()

    def health_check(self, rec: OtaRecord) -> Event:
        """Golden vectors and latency budget beside the old model, then live inferences after the switch."""
        assert rec.role is not None
        cand = self._candidate
        if cand is None:
            return Fail("candidate was not loaded")
        try:
            golden_check(cand)
            p50 = latency_p50_ms(cand, self.u.health.latency_runs, cpu_clock=self.u.threads == 1)
        except (ModelLoadError, ValueError) as exc:
            return Fail(f"health check failed: {exc}")
        budget = cand.manifest.latency_budget_ms
        if budget and p50 > budget:
            return Fail(f"health check failed: latency p50 {p50:.3f} ms exceeds the budget of {budget:.3f} ms")
        probe = self.u.host.probe(rec.role, cand)
        self._displaced = self.u.host.swap(rec.role, cand)
        self.u.on_change()  # the status says the candidate serves while it is checked
        deadline = time.monotonic() + self.u.health.live_window
        while probe.errors == 0 and probe.ok < self.u.health.live_inferences and time.monotonic() < deadline:
            time.sleep(0.02)
        self.u.host.unprobe(rec.role)
        if probe.errors:
            return Fail(
                f"health check failed: {probe.errors} of {probe.errors + probe.ok} live inferences failed ({probe.first_error})"
            )
        return HealthPassed()

    def roll_back(self, rec: OtaRecord) -> Event:
        assert rec.role is not None
        role = rec.role
        restored = self.u.store.roll_back(role, rec.previous_sha256, f"rolled back: {rec.reason}", time.time())
        if self._displaced is not None and restored is not None and self._displaced.sha256 == restored.sha256:
            self.u.host.swap(role, self._displaced)
        elif restored is not None:
            current = self.u.host.roles().get(role)
            if current is None or current.sha256 != restored.sha256:
                try:
                    self.u.host.swap(role, self.load(restored.sha256))
                except RejectedError as exc:
                    self.u.report("slot.invalid", "error", f"previous model in {role} unusable: {exc}", {"role": role})
        else:
            self.u.host.remove(role)
        return RolledBack()

    def load(self, sha256: str) -> LoadedModel:
        """Re-verify a stored bundle against its signed hash and load it; raise RejectedError."""
        try:
            b = self.u.store.verify_bundle(sha256)
        except (bundle_fmt.BundleError, SchemaError, OSError) as exc:
            raise RejectedError(f"bundle invalid: {exc}") from None
        if not b.manifest.supports(self.u.arch):
            raise RejectedError(
                f"wrong hardware: bundle supports {b.manifest.hardware.get('arch')}, this device is {self.u.arch}"
            )
        try:
            if self.u.models is not None:
                return self.u.models.get(
                    sha256, self.u.threads, lambda: load_model(b.manifest, b.model, sha256, threads=self.u.threads)
                )
            return load_model(b.manifest, b.model, sha256, threads=self.u.threads)
        except ModelLoadError as exc:
            raise RejectedError(f"cannot load: {exc}") from None
