"""The image repository: TUF metadata over the model bundles, built with python-tuf.

Roles (see DESIGN "Trust" and docs/adr/0010):

- ``root``: k-of-n root keys (offline); names the keys of every role.
- ``targets``: k-of-n **release keys**; lists each bundle's path, length,
  sha256 and ``custom`` data: model, version, runtime, hardware and the model's
  signed **version floor**. Raising the floor re-signs every entry of the model.
- ``snapshot`` and ``timestamp``: one online key held by the controller.

Files, as ``tuf.ngclient`` fetches them with consistent snapshots::

    metadata/<v>.root.json  metadata/<v>.targets.json  metadata/<v>.snapshot.json  metadata/timestamp.json

Every write is atomic (temp file, fsync, rename). Signing takes the signers
explicitly, so release keys can live elsewhere; :class:`DevKeys` keeps them in
PEM files for development and tests.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Signer, SSlibKey
from sqlmodel import Session
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from controller.release.registry import Conflict, Registry, ReleaseChange
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
    def __init__(self, directory: Path, expiry: dict[str, timedelta] | None = None) -> None:
        self.dir = directory
        self.metadata_dir = directory / "metadata"
        self.expiry = {**DEFAULT_EXPIRY, **(expiry or {})}
        self.md: dict[str, Metadata[Any]] = {}
        for role in ROLES:
            p = directory / f"{role}.json"
            if p.exists():
                self.md[role] = Metadata.from_bytes(p.read_bytes())

    # -- creation -----------------------------------------------------------------
    @classmethod
    def create(cls, directory: Path, keys: DevKeys, expiry: dict[str, timedelta] | None = None) -> ImageRepository:
        repo = cls(directory, expiry)
        if repo.md:
            raise ImageRepoError(f"an image repository already exists in {directory}")
        repo.metadata_dir.mkdir(parents=True, exist_ok=True)
        root = Root(expires=_utcnow() + repo.expiry["root"], consistent_snapshot=True)
        for s in keys.root:
            root.add_key(public_key(s), "root")
        for s in keys.release:
            root.add_key(public_key(s), "targets")
        root.add_key(public_key(keys.online), "snapshot")
        root.add_key(public_key(keys.online), "timestamp")
        root.roles["root"].threshold = keys.root_threshold
        root.roles["targets"].threshold = keys.release_threshold
        repo.md["root"] = Metadata(root)
        repo._sign_and_write("root", keys.root)
        repo.md["targets"] = Metadata(Targets(expires=_utcnow() + repo.expiry["targets"]))
        repo._sign_and_write("targets", keys.release)
        repo.md["snapshot"] = Metadata(Snapshot(expires=_utcnow() + repo.expiry["snapshot"]))
        repo._sign_and_write("snapshot", [keys.online])
        repo.md["timestamp"] = Metadata(Timestamp(expires=_utcnow() + repo.expiry["timestamp"]))
        repo._sign_and_write("timestamp", [keys.online])
        return repo

    @classmethod
    def open_or_create(cls, directory: Path, keys: DevKeys) -> ImageRepository:
        repo = cls(directory)
        return repo if repo.md else cls.create(directory, keys)

    # -- reading ------------------------------------------------------------------
    def root_bytes(self, version: int | None = None) -> bytes:
        """The root metadata devices pin at provisioning (version 1 by default)."""
        return (self.metadata_dir / f"{version or 1}.root.json").read_bytes()

    def metadata_file(self, name: str) -> Path | None:
        """The file for a metadata request such as ``3.targets.json`` or ``timestamp.json``."""
        if not re.fullmatch(r"(\d+\.)?(root|targets|snapshot|timestamp)\.json", name):
            return None
        p = self.metadata_dir / name
        return p if p.is_file() else None

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
        path = target_path(model, version)
        custom = {"model": model, "version": version, "runtime": runtime, "hardware": hardware, "floor": self.floor(model)}
        tf = TargetFile(length=length, hashes={"sha256": sha256}, path=path, unrecognized_fields={"custom": custom})
        existing = self.targets.get(path)
        if existing is not None and existing.hashes != tf.hashes:
            raise ImageRepoError(f"{path} is already released with sha256 {existing.hashes.get('sha256', '')[:12]}")
        self.md["targets"].signed.targets[path] = tf
        self._release(signers, online)
        return tf

    def set_floor(self, model: str, floor: int, *, signers: Sequence[Signer], online: Signer) -> None:
        """Raise the signed version floor of ``model``: versions below it are refused by devices."""
        if floor < self.floor(model):
            raise ImageRepoError(
                f"floor of {model} is {self.floor(model)}; lowering it to {floor} would re-allow revoked versions"
            )
        for path, t in self.targets.items():
            if isinstance(t.custom, dict) and t.custom.get("model") == model:
                t.unrecognized_fields["custom"] = {**t.custom, "floor": floor}
                self.md["targets"].signed.targets[path] = t
        self._release(signers, online)

    def _release(self, signers: Sequence[Signer], online: Signer) -> None:
        t = self.md["targets"].signed
        t.version += 1
        t.expires = _utcnow() + self.expiry["targets"]
        self._sign_and_write("targets", signers)
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
        atomic_write_bytes(self.metadata_dir / name, data)
        atomic_write_bytes(self.dir / f"{role}.json", data)

    # -- for tests: publish a raw metadata file as-is -------------------------------
    def write_raw(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.metadata_dir / name, data)


def parse_target_path(path: str) -> tuple[str, int] | None:
    m = _PATH.match(path)
    return (m.group(1), int(m.group(2))) if m else None


class ImageRepoService:
    """The controller's handle on its image repository (development: keys on local disk).

    In production the release keys stay offline; the repository is then
    extended by ``ImageRepository.add_bundle`` with signers the release
    managers provide, and the controller only refreshes snapshot and timestamp.
    """

    def __init__(self, repo: ImageRepository, keys: DevKeys) -> None:
        self.repo = repo
        self.keys = keys

    @classmethod
    def open(cls, data_dir: Path) -> ImageRepoService:
        keys = DevKeys.load_or_create(data_dir / "keys" / "tuf")
        return cls(ImageRepository.open_or_create(data_dir / "tuf", keys), keys)

    def release_bundle(
        self, *, model: str, version: int, sha256: str, length: int, runtime: str, hardware: dict[str, Any]
    ) -> None:
        signers = self.keys.release[: self.keys.release_threshold]
        self.repo.add_bundle(
            model=model,
            version=version,
            sha256=sha256,
            length=length,
            runtime=runtime,
            hardware=hardware,
            signers=signers,
            online=self.keys.online,
        )

    def raise_floor(self, model: str, floor: int) -> None:
        signers = self.keys.release[: self.keys.release_threshold]
        self.repo.set_floor(model, floor, signers=signers, online=self.keys.online)

    def on_release_change(self, session: Session, change: ReleaseChange) -> None:
        """Registry hook (``Registry.hooks``): list each registered bundle in the signed
        targets and sign each raised floor, inside the registry's transaction; a refusal
        here refuses the registry change."""
        try:
            if change.kind == "registered":
                mv = Registry.get(session, change.name, change.version)
                self.release_bundle(
                    model=change.name,
                    version=change.version,
                    sha256=change.sha256,
                    length=change.length,
                    runtime=mv.runtime,
                    hardware=dict(mv.manifest.get("hardware", {})),
                )
            elif change.kind == "revoked":
                self.raise_floor(change.name, change.floor)
        except ImageRepoError as exc:
            raise Conflict(f"image repository refused the change: {exc}") from None
