"""From a desired-state message to a verified, loaded, health-checked model.

``check_desired`` is pure policy (signature, device, counter, expiry);
``Updater`` does the I/O through its seams (fetcher, store, model host) and
reports every decision through ``report(kind, severity, message, detail)``.
A rejection at any step leaves the running model untouched.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.fetcher import DownloadError, Fetcher
from agent.host import ModelHost
from agent.runtime import ModelLoadError, golden_check, load_model
from agent.store import Installed, Store
from shared import bundle as bundle_fmt
from shared.errors import ProtocolError, SchemaError
from shared.messages import Assignment, Desired, decode_desired_envelope
from shared.schema import Reader
from shared.signing import verify_document

log = logging.getLogger(__name__)
Report = Callable[[str, str, str, dict[str, Any]], None]


class RejectedError(Exception):
    """A desired state or bundle was refused; the message is the reason."""


def check_desired(
    payload: bytes, *, device_id: str, trusted: dict[str, Ed25519PublicKey], last_counter: int, at: float
) -> Desired:
    """Verify and parse a desired-state payload; raise RejectedError with the reason."""
    try:
        signed = verify_document(decode_desired_envelope(payload), trusted)
        desired = Desired.read(Reader(signed, "desired"))
    except ProtocolError as exc:
        raise RejectedError(str(exc)) from None
    if desired.device_id != device_id:
        raise RejectedError(f"desired state is for device {desired.device_id!r}, this is {device_id!r}")
    if desired.counter <= last_counter:
        raise RejectedError(f"replayed or old desired state: counter {desired.counter}, expected > {last_counter}")
    if desired.expires_at <= at:
        raise RejectedError(f"desired state expired at {desired.expires_at:.0f} (now {at:.0f})")
    return desired


class Updater:
    def __init__(
        self,
        *,
        device_id: str,
        arch: str,
        trusted: dict[str, Ed25519PublicKey],
        store: Store,
        host: ModelHost,
        fetcher: Fetcher,
        report: Report,
        on_change: Callable[[], None],
        threads: int = 1,
    ) -> None:
        self.device_id = device_id
        self.arch = arch
        self.trusted = trusted
        self.store = store
        self.host = host
        self.fetcher = fetcher
        self.report = report
        self.on_change = on_change
        self.threads = threads
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name="updater", daemon=True)

    # -- start-up ------------------------------------------------------------
    def restore(self) -> None:
        """Load the active model of each role, falling back to previous if it fails."""
        for role in list(self.store.state.get("roles", {})):
            for which in ("active", "previous"):
                inst = self.store.slot(role, which)
                if inst is None:
                    continue
                try:
                    self._load(inst.sha256, role)
                except (RejectedError, bundle_fmt.BundleError, ModelLoadError, OSError) as exc:
                    self.report(
                        "slot.invalid", "error", f"{which} model in {role} unusable: {exc}", {"role": role, "sha256": inst.sha256}
                    )
                    continue
                if which == "previous":
                    self.store.activate(
                        role, replace(inst, since=time.time(), reason="active slot failed verification at start-up")
                    )
                break

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
        while (payload := self._queue.get()) is not None:
            try:
                self.apply(payload)
            except Exception as exc:  # the updater thread must survive anything
                log.exception("unexpected error applying desired state")
                self.report("desired.error", "error", f"unexpected error: {exc}", {})

    def apply(self, payload: bytes) -> None:
        try:
            desired = check_desired(
                payload, device_id=self.device_id, trusted=self.trusted, last_counter=self.store.counter, at=time.time()
            )
        except RejectedError as exc:
            log.warning("rejected desired state: %s", exc)
            self.report("desired.rejected", "warning", str(exc), {})
            return
        self.store.set_counter(desired.counter)
        for role, a in desired.assignments.items():
            active = self.store.slot(role)
            if active is not None and active.sha256 == a.sha256:
                continue
            try:
                self.install(role, a)
            except RejectedError as exc:
                log.warning("rejected %s v%s for %s: %s", a.model, a.version, role, exc)
                self.report(
                    "ota.rejected", "error", str(exc), {"role": role, "model": a.model, "version": a.version, "sha256": a.sha256}
                )

    def install(self, role: str, a: Assignment) -> None:
        detail = {"role": role, "model": a.model, "version": a.version, "sha256": a.sha256}
        self.report("ota.downloading", "info", f"downloading {a.model} v{a.version} ({a.length} bytes)", detail)
        try:
            self.fetcher.fetch(a.url, self.store.download_path, length=a.length, sha256=a.sha256)
        except DownloadError as exc:
            self.store.download_path.unlink(missing_ok=True)
            raise RejectedError(f"download failed: {exc}") from None
        self.store.keep_download(a.sha256)
        model = self._load(a.sha256, role, expect=a)
        self.host.swap(role, model)
        m = model.manifest
        self.store.activate(role, Installed(m.name, m.version, a.sha256, m.runtime, time.time()))
        log.info("now serving %s v%s in %s", m.name, m.version, role)
        self.report("ota.committed", "info", f"now serving {m.name} v{m.version} in {role}", detail)
        self.on_change()

    def _load(self, sha256: str, role: str, expect: Assignment | None = None) -> Any:
        try:
            b = self.store.verify_bundle(sha256)
        except (bundle_fmt.BundleError, SchemaError, OSError) as exc:
            raise RejectedError(f"bundle invalid: {exc}") from None
        m = b.manifest
        if expect is not None and (m.name, m.version) != (expect.model, expect.version):
            raise RejectedError(f"bundle is {m.name} v{m.version}, the assignment says {expect.model} v{expect.version}")
        if not m.supports(self.arch):
            raise RejectedError(f"bundle supports {m.hardware.get('arch')}, this device is {self.arch}")
        path = self.store.unpack(sha256, b)
        try:
            model = load_model(m, path, sha256, threads=self.threads)
            golden_check(model)
        except ModelLoadError as exc:
            raise RejectedError(f"health check failed: {exc}") from None
        if expect is None:
            self.host.swap(role, model)
        return model
