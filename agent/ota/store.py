"""What is installed on disk: A/B slots per role, the OTA record, the bundles.

Layout under ``data_dir``::

    bundles/<sha256>.tar     verified bundles, content-addressed (the slots point here)
    download-<sha256>.part   the candidate being downloaded (kept across restarts: resumed with Range, same target only)
    state.json               per role the slots ``active``, ``previous``, ``candidate``; the desired counter,
                             routing and batch-feature values
    ota.json                 the OTA state machine's record (agent/ota/state.py)
    tuf/                     verified TUF metadata (tuf.ngclient's cache)
    seq                      high-water mark of the message sequence
    stream                   the id of that sequence (ADR 0080): made anew whenever ``seq`` is

Both JSON files are replaced atomically (temp file, fsync, rename, fsync dir),
so after a crash each names the old or the new value, never half of each.
Models are loaded from the verified bundle bytes, never from a separate
unpacked file that could change behind the check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agent.ota.state import AT_REST, OtaRecord
from shared import bundle as bundle_fmt
from shared.errors import ProtocolError
from shared.features import BatchFeatureValue
from shared.fsutil import atomic_write_bytes, atomic_write_json, fsync_dir
from shared.messages import Routing, RunningModel

log = logging.getLogger(__name__)
SLOTS = ("active", "previous", "candidate")


class Store:
    # pragma: no mutate start  (`make mutation` mutates verify_bundle only: the store's safety check)
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        self.bundles = data_dir / "bundles"
        for d in (self.root, self.bundles):
            d.mkdir(parents=True, exist_ok=True)
        self._state_path = data_dir / "state.json"
        self._ota_path = data_dir / "ota.json"
        self._lock = threading.Lock()
        self.state = self._load_state()
        self.ota = self._load_ota()

    def reload(self) -> None:
        """Forget what is only in memory: a write failed (disk full), so only the files are true."""
        with self._lock:
            self.state = self._load_state()
            self.ota = self._load_ota()

    # -- state ---------------------------------------------------------------
    def _load_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.error("%s is corrupt (%s); ignoring it", path.name, exc)
            return None

    def _load_state(self) -> dict[str, Any]:
        data = self._load_json(self._state_path)
        if isinstance(data, dict):
            return data
        return {"counter": 0, "roles": {}}

    def _load_ota(self) -> OtaRecord:
        data = self._load_json(self._ota_path)
        if data is None:
            return OtaRecord()
        try:
            return OtaRecord.from_dict(data)
        except ValueError as exc:
            log.error("ota.json unusable (%s); starting at rest", exc)
            return OtaRecord()

    def save_ota(self, rec: OtaRecord) -> None:
        with self._lock:
            atomic_write_json(self._ota_path, rec.to_dict())
            self.ota = rec

    def _save(self) -> None:
        atomic_write_json(self._state_path, self.state)

    @property
    def counter(self) -> int:
        return int(self.state.get("counter", 0))

    @property
    def desired_digest(self) -> str:
        return str(self.state.get("desired_digest", ""))

    def set_counter(
        self, counter: int, digest: str = "", routing: Routing | None = None, features: Sequence[BatchFeatureValue] = ()
    ) -> None:
        """Accept a desired state: its counter, digest, bandit routing (None: none) and batch-feature
        values, in one atomic write."""
        with self._lock:
            self.state["counter"] = counter
            self.state["desired_digest"] = digest
            self.state["routing"] = None if routing is None else asdict(routing)
            self.state["features"] = [f.to_wire() for f in features]
            self._save()

    @property
    def batch_features(self) -> list[BatchFeatureValue]:
        """The batch-feature values of the last accepted desired state (the device is their online store)."""
        out = []
        for i, f in enumerate(self.state.get("features") or []):
            try:
                out.append(BatchFeatureValue.from_wire(f, f"state.features[{i}]"))
            except ProtocolError as exc:
                log.error("state.json: batch feature value dropped: %s", exc)
        return out

    @property
    def routing(self) -> Routing | None:
        """The routing of the last accepted desired state (kept across restarts and offline days)."""
        r = self.state.get("routing")
        return None if not r else Routing(int(r["experiment"]), int(r["seed"]), {k: float(v) for k, v in r["weights"].items()})

    def slot(self, role: str, which: str = "active") -> RunningModel | None:
        entry = self.state.get("roles", {}).get(role, {}).get(which)
        if not entry:
            return None
        try:
            return RunningModel(**entry)
        except TypeError:
            log.error("state.json entry for %s/%s is malformed: %r", role, which, entry)
            return None

    def set_slot(self, role: str, which: str, inst: RunningModel | None) -> None:
        with self._lock:
            slots = self.state.setdefault("roles", {}).setdefault(role, {})
            if inst is None:
                slots.pop(which, None)
            else:
                slots[which] = asdict(inst)
            self._save()

    def commit(self, role: str, sha256: str, since: float) -> None:
        """Candidate ``sha256`` becomes active; the old active becomes previous. Idempotent."""
        with self._lock:
            slots = self.state.setdefault("roles", {}).setdefault(role, {})
            cand, active = slots.get("candidate"), slots.get("active")
            if active and active.get("sha256") == sha256:
                slots.pop("candidate", None)
            elif cand and cand.get("sha256") == sha256:
                if active:
                    slots["previous"] = active
                slots["active"] = {**cand, "since": since, "reason": ""}
                slots.pop("candidate", None)
            else:
                raise KeyError(f"no candidate {sha256[:12]} in role {role} to commit")
            self._save()
        self.collect_garbage()

    def roll_back(self, role: str, previous_sha256: str | None, reason: str, since: float) -> RunningModel | None:
        """Make the slot holding ``previous_sha256`` active again and drop the candidate. Idempotent."""
        with self._lock:
            slots = self.state.setdefault("roles", {}).setdefault(role, {})
            slots.pop("candidate", None)
            active, prev = slots.get("active"), slots.get("previous")
            if previous_sha256 is None:
                slots.pop("active", None)  # nothing ran before this update
            elif active and active.get("sha256") != previous_sha256 and prev and prev.get("sha256") == previous_sha256:
                slots["active"], slots["previous"] = prev, active
            if slots.get("active"):
                slots["active"] = {**slots["active"], "reason": reason, "since": since}
            self._save()
        return self.slot(role)

    def drop_role(self, role: str) -> None:
        """Forget every slot of ``role`` (the desired state no longer names it); its bundles go with the next collection."""
        with self._lock:
            self.state.get("roles", {}).pop(role, None)
            self._save()
        self.collect_garbage()

    # -- files ---------------------------------------------------------------
    def download_path(self, sha256: str) -> Path:
        """Where ``sha256``'s bundle is downloaded: a partial file is only ever resumed for the same bytes."""
        return self.root / f"download-{sha256}.part"

    def partial_downloads(self) -> list[Path]:
        return sorted(self.root.glob("download*.part"))  # download.part: the name before 0.2

    def clear_downloads(self, keep: str | None = None) -> None:
        """Remove partial downloads, except ``keep``'s (the target being downloaded now)."""
        for p in self.partial_downloads():
            if keep is None or p != self.download_path(keep):
                p.unlink(missing_ok=True)

    def bundle_path(self, sha256: str) -> Path:
        return self.bundles / f"{sha256}.tar"

    def keep_download(self, sha256: str) -> Path:
        """Move a verified download into the content-addressed store."""
        dest = self.bundle_path(sha256)
        os.replace(self.download_path(sha256), dest)
        fsync_dir(self.bundles)
        fsync_dir(self.root)
        return dest

    # pragma: no mutate end
    def verify_bundle(self, sha256: str) -> bundle_fmt.Bundle:
        """Re-check a stored bundle's hash before loading it (disk may have changed)."""
        path = self.bundle_path(sha256)
        if not path.exists():
            raise bundle_fmt.BundleError(f"stored bundle {sha256[:12]} is missing")
        data = path.read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise bundle_fmt.BundleError(f"stored bundle {sha256[:12]} was altered on disk (sha256 now {got[:12]})")
        return bundle_fmt.read(data)

    # pragma: no mutate start
    def referenced(self) -> set[str]:
        keep = {
            e["sha256"]
            for slots in self.state.get("roles", {}).values()
            for e in slots.values()
            if isinstance(e, dict) and "sha256" in e
        }
        if self.ota.target is not None and self.ota.state not in AT_REST:
            keep.add(self.ota.target.sha256)  # an update in flight keeps its bundle
        return keep

    def collect_garbage(self) -> None:
        keep = self.referenced()
        for p in self.bundles.glob("*.tar"):
            if p.stem not in keep:
                p.unlink(missing_ok=True)


class SeqCounter:
    """Per-device monotonic message sequence that survives restarts, and the id of that sequence.

    Persists a high-water mark every ``block`` numbers, so a restart skips at
    most ``block`` values and never reuses one. A counter that starts again from 0
    (its file is gone or unreadable: a wiped data directory) gets a new random
    ``stream`` id, kept in ``stream`` beside it: the controller dedupes by
    (device, stream, seq), so the new seqs are never taken for the old ones (ADR 0080).
    """

    def __init__(self, path: Path, block: int = 1000) -> None:
        self._path = path
        self._block = block
        self._lock = threading.Lock()
        try:
            self._next = int(path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            self._next = 0
        # a counter written here is at least ``block``: 0 (or an empty file) is a counter that starts again
        self.stream = self._load_stream(path.with_name("stream"), counted=self._next > 0)
        self._limit = self._next
        self._reserve()

    @staticmethod
    def _load_stream(path: Path, counted: bool) -> str:
        """The stream id kept at ``path``; a new one (written before the counter is) unless the counter went on."""
        if counted:
            try:
                stream = path.read_text().strip()
                if len(stream) == 32 and all(c in "0123456789abcdef" for c in stream):
                    return stream
            except (OSError, ValueError):  # none (an agent from before ADR 0080), or not text: its next seqs start a new one
                pass
        stream = os.urandom(16).hex()
        atomic_write_bytes(path, stream.encode())
        return stream

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


# pragma: no mutate end
