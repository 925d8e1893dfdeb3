"""What is installed on disk, and which bundle is active in each role.

Layout under ``data_dir``::

    bundles/<sha256>.tar     verified bundles, content-addressed
    models/<sha256>/<file>   the unpacked model file the runtime loads
    download.part            the download in progress (the candidate slot)
    state.json               per role: active and previous; desired counter
    seq                      high-water mark of the message sequence

``state.json`` is replaced atomically, so after a crash it names either the
old or the new active bundle, never half of each.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.fsutil import atomic_write_bytes, atomic_write_json
from shared import bundle as bundle_fmt
from shared.messages import RunningModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Installed:
    model: str
    version: int
    sha256: str
    runtime: str
    since: float
    reason: str = ""

    def running(self) -> RunningModel:
        return RunningModel(**asdict(self))


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        self.bundles = data_dir / "bundles"
        self.models = data_dir / "models"
        for d in (self.root, self.bundles, self.models):
            d.mkdir(parents=True, exist_ok=True)
        self._state_path = data_dir / "state.json"
        self._lock = threading.Lock()
        self.state = self._load_state()

    # -- state ---------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self._state_path.read_bytes())
            if isinstance(data, dict):
                return data
            log.error("state.json is not an object; starting empty")
        except FileNotFoundError:
            pass
        except ValueError as exc:
            log.error("state.json is corrupt (%s); starting empty", exc)
        return {"counter": 0, "roles": {}}

    def _save(self) -> None:
        atomic_write_json(self._state_path, self.state)

    @property
    def counter(self) -> int:
        return int(self.state.get("counter", 0))

    def set_counter(self, counter: int) -> None:
        with self._lock:
            self.state["counter"] = counter
            self._save()

    def slot(self, role: str, which: str = "active") -> Installed | None:
        entry = self.state.get("roles", {}).get(role, {}).get(which)
        if not entry:
            return None
        try:
            return Installed(**entry)
        except TypeError:
            log.error("state.json entry for %s/%s is malformed: %r", role, which, entry)
            return None

    def activate(self, role: str, inst: Installed) -> None:
        """Make ``inst`` active in ``role``; the old active becomes previous."""
        with self._lock:
            roles = self.state.setdefault("roles", {})
            old = roles.get(role, {}).get("active")
            new = {"active": asdict(inst)}
            if old and old.get("sha256") != inst.sha256:
                new["previous"] = old
            elif roles.get(role, {}).get("previous"):
                new["previous"] = roles[role]["previous"]
            roles[role] = new
            self._save()
        self.collect_garbage()

    # -- files ---------------------------------------------------------------
    @property
    def download_path(self) -> Path:
        return self.root / "download.part"

    def bundle_path(self, sha256: str) -> Path:
        return self.bundles / f"{sha256}.tar"

    def keep_download(self, sha256: str) -> Path:
        """Move a verified download into the content-addressed store."""
        dest = self.bundle_path(sha256)
        os.replace(self.download_path, dest)
        return dest

    def unpack(self, sha256: str, b: bundle_fmt.Bundle) -> Path:
        path = self.models / sha256 / b.manifest.model_file
        if not path.exists():
            atomic_write_bytes(path, b.model)
        return path

    def verify_bundle(self, sha256: str) -> bundle_fmt.Bundle:
        """Re-check a stored bundle's hash before loading it (disk may have changed)."""
        path = self.bundle_path(sha256)
        got = bundle_fmt.sha256_file(path)
        if got != sha256:
            raise bundle_fmt.BundleError(f"stored bundle {sha256[:12]} was altered on disk (sha256 now {got[:12]})")
        return bundle_fmt.read(path)

    def collect_garbage(self) -> None:
        keep = {
            e["sha256"]
            for slots in self.state.get("roles", {}).values()
            for e in slots.values()
            if isinstance(e, dict) and "sha256" in e
        }
        for p in self.bundles.glob("*.tar"):
            if p.stem not in keep:
                p.unlink(missing_ok=True)
        for p in self.models.iterdir():
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)


class SeqCounter:
    """Per-device monotonic message sequence that survives restarts.

    Persists a high-water mark every ``block`` numbers, so a restart skips at
    most ``block`` values and never reuses one.
    """

    def __init__(self, path: Path, block: int = 1000) -> None:
        self._path = path
        self._block = block
        self._lock = threading.Lock()
        try:
            self._next = int(path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            self._next = 0
        self._limit = self._next
        self._reserve()

    def _reserve(self) -> None:
        self._limit = self._next + self._block
        atomic_write_bytes(self._path, str(self._limit).encode())

    def next(self) -> int:
        with self._lock:
            if self._next >= self._limit:
                self._reserve()
            n = self._next
            self._next += 1
            return n
