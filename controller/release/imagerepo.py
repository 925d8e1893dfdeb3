"""The image repository: TUF metadata over the model bundles, built with python-tuf.

Roles (see DESIGN "Trust" and docs/adr/0010):

- ``root``: k-of-n root keys (offline); names the keys of every role.
- ``targets``: k-of-n **release keys**; lists each bundle's path, length,
  sha256 and ``custom`` data: model, version, runtime, hardware and the model's
  signed **version floor**. Raising the floor re-signs every entry of the model;
  a revoked version leaves the list (a device refuses what is not listed).
- ``snapshot`` and ``timestamp``: one online key held by the controller.

Files, as ``tuf.ngclient`` fetches them with consistent snapshots::

    <v>.root.json  <v>.targets.json  <v>.snapshot.json  timestamp.json

plus the current copy of each role (``root``, ``targets``, ...), kept in a
:class:`MetaStore`: a directory (:class:`FileMetaStore`, atomic writes; tests and
tools) or the shared database (``controller.release.imageservice``). Signing takes
the signers explicitly, so release keys can live elsewhere; :class:`DevKeys`
keeps them in PEM files for development and tests.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from securesystemslib.signer import CryptoSigner, Signer, SSlibKey
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from shared.bundle import target_path
from shared.fsutil import atomic_write_bytes
from shared.signing import generate_private_key_file, load_private_key_file

ROLES = ("root", "targets", "snapshot", "timestamp")
DEFAULT_EXPIRY = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
_PATH = re.compile(r"^([a-z0-9][a-z0-9._-]{0,127})/(\d+)\.tar$")
_CLIENT_NAME = re.compile(r"^(\d+\.)?(root|targets|snapshot|timestamp)\.json$")


class MetaStore(Protocol):
    """Where metadata lives: client file names (``3.targets.json``) and current copies (``targets``)."""

    def read(self, name: str) -> bytes | None: ...

    def write(self, name: str, data: bytes) -> None: ...


class FileMetaStore:
    """A directory: current copies as ``<role>.json``, client files under ``metadata/``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.metadata_dir = directory / "metadata"

    def _path(self, name: str) -> Path:
        return self.metadata_dir / name if name.endswith(".json") else self.dir / f"{name}.json"

    def read(self, name: str) -> bytes | None:
        p = self._path(name)
        return p.read_bytes() if p.is_file() else None

    def write(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self._path(name), data)


def client_name(name: str) -> bool:
    """True for a name devices may fetch (``<v>.<role>.json`` or ``timestamp.json``)."""
    return bool(_CLIENT_NAME.match(name))


def expiry_from(timestamp_s: float, snapshot_s: float, targets_s: float) -> dict[str, timedelta]:
    return {
        "timestamp": timedelta(seconds=timestamp_s),
        "snapshot": timedelta(seconds=snapshot_s),
        "targets": timedelta(seconds=targets_s),
    }


class ImageRepoError(Exception):
    """The repository cannot do what was asked (missing keys, bad floor, ...)."""


def public_key(signer: Signer) -> SSlibKey:
    key = signer.public_key
    assert isinstance(key, SSlibKey)
    return key


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@dataclass
class DevKeys:
    """Root, release and online keys in PEM files (development and tests only)."""

    root: list[Signer]
    release: list[Signer]
    online: Signer
    root_threshold: int
    release_threshold: int

    @classmethod
    def load_or_create(
        cls, keydir: Path, *, n_root: int = 3, root_threshold: int = 2, n_release: int = 3, release_threshold: int = 2
    ) -> DevKeys:
        def signer(name: str) -> Signer:
            path = keydir / f"{name}.pem"
            key = load_private_key_file(path) if path.exists() else generate_private_key_file(path)
            return CryptoSigner(key)

        return cls(
            root=[signer(f"root-{i}") for i in range(1, n_root + 1)],
            release=[signer(f"release-{i}") for i in range(1, n_release + 1)],
            online=signer("online"),
            root_threshold=root_threshold,
            release_threshold=release_threshold,
        )


class ImageRepository:
    def __init__(self, where: Path | MetaStore, expiry: dict[str, timedelta] | None = None) -> None:
        self.store: MetaStore = FileMetaStore(where) if isinstance(where, Path) else where
        self.expiry = {**DEFAULT_EXPIRY, **(expiry or {})}
        self.md: dict[str, Metadata[Any]] = {}
        for role in ROLES:
            data = self.store.read(role)
            if data is not None:
                self.md[role] = Metadata.from_bytes(data)

    @property
    def metadata_dir(self) -> Path:
        """The client files' directory (file-backed repositories only)."""
        if not isinstance(self.store, FileMetaStore):
            raise ImageRepoError("this image repository is not kept in a directory")
        return self.store.metadata_dir

    # -- creation -----------------------------------------------------------------
    @classmethod
    def create(cls, where: Path | MetaStore, keys: DevKeys, expiry: dict[str, timedelta] | None = None) -> ImageRepository:
        repo = cls(where, expiry)
        if repo.md:
            raise ImageRepoError(f"an image repository already exists in {where}")
        repo.create_root(keys.root, keys.release, keys.online, keys.root_threshold, keys.release_threshold)
        repo.md["targets"] = Metadata(Targets(expires=_utcnow() + repo.expiry["targets"]))
        repo._sign_and_write("targets", keys.release)
        repo.start_online(keys.online)
        return repo

    def create_root(
        self,
        root_signers: Sequence[Signer],
        release: Sequence[Signer | SSlibKey],
        online: Signer | SSlibKey,
        root_threshold: int,
        release_threshold: int,
    ) -> None:
        """Root v1 naming every role's keys, signed by the root keys (``edgefleet-controller init``)."""

        def pub(k: Signer | SSlibKey) -> SSlibKey:
            return k if isinstance(k, SSlibKey) else public_key(k)

        root = Root(expires=_utcnow() + self.expiry["root"], consistent_snapshot=True)
        for s in root_signers:
            root.add_key(public_key(s), "root")
        for k in release:
            root.add_key(pub(k), "targets")
        root.add_key(pub(online), "snapshot")
        root.add_key(pub(online), "timestamp")
        root.roles["root"].threshold = root_threshold
        root.roles["targets"].threshold = release_threshold
        self.md["root"] = Metadata(root)
        self._sign_and_write("root", root_signers)

    def import_metadata(self, role: str, data: bytes) -> None:
        """Take a signed role as it is (root and targets made offline by ``init``)."""
        self.md[role] = Metadata.from_bytes(data)
        self._write(role)

    def start_online(self, online: Signer) -> None:
        """The first snapshot and timestamp, once root and targets exist."""
        snap = Snapshot(expires=_utcnow() + self.expiry["snapshot"])
        snap.meta["targets.json"] = MetaFile(version=self.md["targets"].signed.version)
        self.md["snapshot"] = Metadata(snap)
        self._sign_and_write("snapshot", [online])
        self.md["timestamp"] = Metadata(Timestamp(expires=_utcnow() + self.expiry["timestamp"]))
        self._sign_and_write("timestamp", [online])

    @classmethod
    def open_or_create(cls, directory: Path, keys: DevKeys) -> ImageRepository:
        repo = cls(directory)
        return repo if repo.md else cls.create(directory, keys)

    # -- reading ------------------------------------------------------------------
    def root_bytes(self, version: int | None = None) -> bytes:
        """The root metadata devices pin at provisioning (version 1 by default)."""
        data = self.read_metadata(f"{version or 1}.root.json")
        if data is None:
            raise ImageRepoError(f"no root version {version or 1}")
        return data

    def read_metadata(self, name: str) -> bytes | None:
        """The bytes for a metadata request such as ``3.targets.json`` or ``timestamp.json``."""
        return self.store.read(name) if client_name(name) else None

    def metadata_file(self, name: str) -> Path | None:
        """The file for a metadata request (file-backed repositories)."""
        if not client_name(name):
            return None
        p = self.metadata_dir / name
        return p if p.is_file() else None

    def expires_in(self, role: str, now: datetime | None = None) -> float:
        """Seconds until ``role`` lapses (negative: already expired)."""
        expires: datetime = self.md[role].signed.expires
        return (expires - (now or datetime.now(timezone.utc))).total_seconds()

    @staticmethod
    def targets_in(data: bytes) -> dict[str, TargetFile]:
        """The target files listed in serialized targets metadata."""
        return dict(Metadata[Targets].from_bytes(data).signed.targets)

    @property
    def targets(self) -> dict[str, TargetFile]:
        return dict(self.md["targets"].signed.targets)

    def floor(self, model: str) -> int:
        floors = [
            t.custom.get("floor", 0)
            for t in self.targets.values()
            if isinstance(t.custom, dict) and t.custom.get("model") == model
        ]
        return max(floors, default=0)

    # -- release operations (release keys) -----------------------------------------
    def add_bundle(
        self,
        *,
        model: str,
        version: int,
        sha256: str,
        length: int,
        runtime: str,
        hardware: dict[str, Any],
        signers: Sequence[Signer],
        online: Signer,
    ) -> TargetFile:
        """List a bundle in ``targets`` (signed by ``signers``), then snapshot and timestamp."""
        tf = self.stage_bundle(model=model, version=version, sha256=sha256, length=length, runtime=runtime, hardware=hardware)
        self._release(signers, online)
        return tf

    def stage_bundle(
        self, *, model: str, version: int, sha256: str, length: int, runtime: str, hardware: dict[str, Any]
    ) -> TargetFile:
        """List a bundle in the in-memory ``targets`` without signing (offline release keys sign later)."""
        path = target_path(model, version)
        custom = {"model": model, "version": version, "runtime": runtime, "hardware": hardware, "floor": self.floor(model)}
        tf = TargetFile(length=length, hashes={"sha256": sha256}, path=path, unrecognized_fields={"custom": custom})
        existing = self.targets.get(path)
        if existing is not None and existing.hashes != tf.hashes:
            raise ImageRepoError(f"{path} is already released with sha256 {existing.hashes.get('sha256', '')[:12]}")
        self.md["targets"].signed.targets[path] = tf
        return tf

    def set_floor(self, model: str, floor: int, *, signers: Sequence[Signer], online: Signer) -> None:
        """Raise the signed version floor of ``model``: versions below it are refused by devices."""
        self.stage_floor(model, floor)
        self._release(signers, online)

    def stage_floor(self, model: str, floor: int) -> None:
        """Raise the floor in the in-memory ``targets`` without signing."""
        if floor < self.floor(model):
            raise ImageRepoError(
                f"floor of {model} is {self.floor(model)}; lowering it to {floor} would re-allow revoked versions"
            )
        for path, t in self.targets.items():
            if isinstance(t.custom, dict) and t.custom.get("model") == model:
                t.unrecognized_fields["custom"] = {**t.custom, "floor": floor}
                self.md["targets"].signed.targets[path] = t

    def stage_revoke(self, model: str, version: int, floor: int) -> None:
        """Take a revoked version out of the in-memory ``targets`` (devices refuse what is not listed) and raise
        the floor to ``floor`` (never lower it), without signing."""
        self.md["targets"].signed.targets.pop(target_path(model, version), None)
        if floor > self.floor(model):
            self.stage_floor(model, floor)

    def _release(self, signers: Sequence[Signer], online: Signer) -> None:
        t = self.md["targets"].signed
        t.version += 1
        t.expires = _utcnow() + self.expiry["targets"]
        self._sign_and_write("targets", signers)
        self.snapshot(online)

    def resign_targets(self, signers: Sequence[Signer], online: Signer) -> None:
        """The same targets in a new version with a fresh expiry (online release signing only)."""
        self._release(signers, online)

    def publish_targets(self, md: Metadata[Any], online: Signer) -> None:
        """Make targets signed elsewhere (offline, to its threshold) current, then snapshot and timestamp."""
        self.md["targets"] = md
        self._write("targets")
        self.snapshot(online)

    # -- online operations ---------------------------------------------------------
    def snapshot(self, online: Signer) -> None:
        s = self.md["snapshot"].signed
        s.meta["targets.json"] = MetaFile(version=self.md["targets"].signed.version)
        s.version += 1
        s.expires = _utcnow() + self.expiry["snapshot"]
        self._sign_and_write("snapshot", [online])
        self.timestamp(online)

    def timestamp(self, online: Signer) -> None:
        ts = self.md["timestamp"].signed
        ts.snapshot_meta = MetaFile(version=self.md["snapshot"].signed.version)
        ts.version += 1
        ts.expires = _utcnow() + self.expiry["timestamp"]
        self._sign_and_write("timestamp", [online])

    # -- root key rotation ----------------------------------------------------------
    def rotate_root(
        self,
        *,
        new_root_keys: Sequence[SSlibKey],
        threshold: int,
        old_signers: Sequence[Signer],
        new_signers: Sequence[Signer],
    ) -> None:
        """Replace the root keys; the new root is signed by the old and the new threshold."""
        root = self.md["root"].signed
        for keyid in list(root.roles["root"].keyids):
            root.revoke_key(keyid, "root")
        for k in new_root_keys:
            root.add_key(k, "root")
        root.roles["root"].threshold = threshold
        root.version += 1
        root.expires = _utcnow() + self.expiry["root"]
        md = self.md["root"]
        md.signatures.clear()
        for s in [*old_signers, *new_signers]:
            md.sign(s, append=True)
        self._write("root")

    # -- files -----------------------------------------------------------------------
    def _sign_and_write(self, role: str, signers: Sequence[Signer]) -> None:
        md = self.md[role]
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        self._write(role)

    def _write(self, role: str) -> None:
        md = self.md[role]
        data = md.to_bytes()
        name = "timestamp.json" if role == "timestamp" else f"{md.signed.version}.{role}.json"
        self.store.write(name, data)
        self.store.write(role, data)

    # -- for tests: publish a raw metadata file as-is -------------------------------
    def write_raw(self, name: str, data: bytes) -> None:
        self.store.write(name, data)


def parse_target_path(path: str) -> tuple[str, int] | None:
    m = _PATH.match(path)
    return (m.group(1), int(m.group(2))) if m else None
