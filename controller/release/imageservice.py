"""The controller's image repository, kept in the shared database so every replica serves the same.

- Metadata lives in the ``tufmetadata`` table (:class:`DbMetaStore`); every writer
  takes the TUF writer lock (:func:`writer_lock`: a PostgreSQL advisory transaction
  lock, SQLite's database write lock) before reading the current roles, so releases
  through two replicas produce one chain of valid, increasing versions.
- Keys: the online key (snapshot, timestamp) comes from the shared secrets. Release
  keys either sign here (``online`` release signing: development's one-command
  releases) or stay offline and sign pending changes (``controller.release.offline``).
- :meth:`ImageRepoService.refresh` is the leader's job: it re-signs snapshot and
  timestamp (and, with online release signing, targets) once less than half of
  their lifetime is left, so metadata never lapses on a quiet day. Offline-signed
  targets it cannot re-sign: within ``targets_warn_s`` of their expiry it warns and
  stages a renewal for the release keys (``controller.release.expiry``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Signer
from sqlalchemy import Engine, text
from sqlmodel import Session

from controller.core.config import Settings
from controller.core.secrets import load_ed25519
from controller.core.tables import ModelVersion, TufMetadataRow
from controller.release import offline
from controller.release.expiry import ROLES as EXPIRY_ROLES
from controller.release.expiry import RoleExpiry, targets_warning
from controller.release.imagerepo import ROLES, DevKeys, ImageRepoError, ImageRepository, expiry_from
from controller.release.registry import Conflict, Registry, ReleaseChange
from shared.bundle import target_path

log = logging.getLogger(__name__)

TUF_LOCK_ID = 0x65646774756600  # "edgtuf"
REFRESH_AT = 0.5  # re-sign once less than this fraction of a lifetime is left


class DbMetaStore:
    """TUF metadata rows in the caller's session (see ``TufMetadataRow``)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def read(self, name: str) -> bytes | None:
        row = self.session.get(TufMetadataRow, name)
        return None if row is None else bytes(row.data)

    def write(self, name: str, data: bytes) -> None:
        row = self.session.get(TufMetadataRow, name) or TufMetadataRow(name=name, data=data)
        row.data, row.updated_at = data, time.time()
        self.session.add(row)
        self.session.flush()


def writer_lock(session: Session) -> None:
    """Serialise TUF metadata writers across replicas until this transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": TUF_LOCK_ID})
    else:  # SQLite: a write statement takes the database's write lock for the rest of the transaction
        session.execute(text("DELETE FROM tufmetadata WHERE name = ''"))


class ImageRepoService:
    def __init__(
        self,
        engine: Engine,
        *,
        online: Signer,
        release: DevKeys | None,
        expiry: dict[str, timedelta],
        initial_dir: Path | None = None,
        dev_keys: DevKeys | None = None,
        legacy_dir: Path | None = None,
        targets_warn_s: float = 21 * 86400,
    ) -> None:
        self.engine = engine
        # Offline release keys: warn this long before targets lapse (at most half their lifetime, so a
        # freshly signed renewal is never itself due for renewal).
        self.targets_warn_s = min(targets_warn_s, expiry["targets"].total_seconds() / 2)
        self._warned_at = -1e18  # monotonic time of the last logged warning
        self.online = online
        self.release = release  # None: offline release keys
        self.expiry = expiry
        self.initial_dir = initial_dir
        self.dev_keys = dev_keys
        self.legacy_dir = legacy_dir  # a repository a single controller kept in files before replicas shared it

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine) -> ImageRepoService:
        dev = settings.development
        dev_keys = DevKeys.load_or_create(settings.dev_tuf_keys_dir) if dev else None
        if dev_keys is not None and settings.secrets_dir is None and settings.tuf_online_key is None:
            online: Signer = dev_keys.online
        else:
            key = load_ed25519(
                settings.tuf_online_key_path,
                settings.tuf_online_key,
                what="TUF online key (snapshot, timestamp)",
                env="EDGEFLEET_TUF_ONLINE_KEY",
                create=dev,
                strict=not dev,
            )
            online = CryptoSigner(key)
        if dev_keys is not None:
            dev_keys = dataclasses.replace(dev_keys, online=online)
        release = dev_keys if settings.signs_releases_online else None
        if settings.signs_releases_online and dev_keys is None:
            raise ImageRepoError("online release signing needs development keys; use EDGEFLEET_RELEASE_SIGNING=offline")
        expiry = expiry_from(settings.tuf_timestamp_expiry_s, settings.tuf_snapshot_expiry_s, settings.tuf_targets_expiry_s)
        svc = cls(
            engine,
            online=online,
            release=release,
            expiry=expiry,
            initial_dir=settings.tuf_initial_dir,
            dev_keys=dev_keys,
            legacy_dir=settings.data_dir / "tuf",
            targets_warn_s=settings.tuf_targets_warn_s,
        )
        svc.ensure()
        return svc

    # --- transactions -------------------------------------------------------------

    def _open(self, session: Session) -> ImageRepository:
        writer_lock(session)
        return ImageRepository(DbMetaStore(session), self.expiry)

    def write(self, fn: Callable[[Session, ImageRepository], Any]) -> Any:
        """Run ``fn`` under the writer lock in its own transaction and commit."""
        with Session(self.engine) as session:
            out = fn(session, self._open(session))
            session.commit()
            return out

    def ensure(self) -> None:
        """Seed the database's repository once: from ``init``'s files, or (development) new keys."""

        def seed(session: Session, repo: ImageRepository) -> None:
            if "timestamp" in repo.md:
                return
            if self.legacy_dir is not None and (self.legacy_dir / "timestamp.json").is_file():
                for f in sorted((self.legacy_dir / "metadata").glob("*.json")):
                    repo.store.write(f.name, f.read_bytes())
                for role in ROLES:
                    repo.store.write(role, (self.legacy_dir / f"{role}.json").read_bytes())
                log.warning("image repository: imported %s into the database (devices keep their trust chain)", self.legacy_dir)
                return
            root = self.initial_dir / "1.root.json" if self.initial_dir else None
            targets = self.initial_dir / "1.targets.json" if self.initial_dir else None
            if root is not None and targets is not None and root.is_file() and targets.is_file():
                repo.import_metadata("root", root.read_bytes())
                repo.import_metadata("targets", targets.read_bytes())
                repo.start_online(self.online)
                log.info("image repository: seeded the database from %s", self.initial_dir)
            elif self.dev_keys is not None:
                ImageRepository.create(repo.store, self.dev_keys, self.expiry)
                log.warning("development: created a TUF image repository with development keys")
            else:
                raise ImageRepoError(
                    f"no TUF metadata in the database and no {root}: run `edgefleet-controller init` once "
                    "and give every replica its secrets directory (EDGEFLEET_SECRETS_DIR)"
                )

        self.write(seed)

    # --- reading ------------------------------------------------------------------

    def read(self, name: str) -> bytes | None:
        with Session(self.engine) as session:
            return ImageRepository(DbMetaStore(session), self.expiry).read_metadata(name)

    def root_bytes(self, version: int = 1) -> bytes:
        data = self.read(f"{version}.root.json")
        if data is None:
            raise ImageRepoError(f"no root version {version}")
        return data

    def released(self, session: Session, model: str, version: int) -> bool:
        """True when the published targets list the bundle (devices can install it)."""
        data = DbMetaStore(session).read("targets")
        return data is not None and target_path(model, version) in ImageRepository.targets_in(data)

    # --- registry hook and gate ---------------------------------------------------

    def on_release_change(self, session: Session, change: ReleaseChange) -> None:
        """Registry hook: list a registered bundle / sign a raised floor in the registry's transaction
        (online release signing), or stage it for offline signatures; a refusal refuses the change."""
        repo = self._open(session)
        if change.kind == "registered":
            mv = Registry.get(session, change.name, change.version)

            def apply(r: ImageRepository) -> None:
                r.stage_bundle(
                    model=change.name,
                    version=change.version,
                    sha256=change.sha256,
                    length=change.length,
                    runtime=mv.runtime,
                    hardware=dict(mv.manifest.get("hardware", {})),
                )

            what = f"add {target_path(change.name, change.version)} (sha256 {change.sha256[:12]}, {change.length} bytes)"
        else:

            def apply(r: ImageRepository) -> None:
                r.stage_revoke(change.name, change.version, change.floor)

            what = f"delist {target_path(change.name, change.version)} (revoked; floor of {change.name}: {change.floor})"
        try:
            if self.release is None:
                offline.stage(session, repo, what, apply)
                log.info("release: %s waits for offline release signatures", what)
                return
            apply(repo)
            repo.resign_targets(self.release.release[: self.release.release_threshold], self.online)
        except ImageRepoError as exc:
            raise Conflict(f"image repository refused the change: {exc}") from None

    def assign_gate(self, session: Session, mv: ModelVersion) -> str | None:
        """Registry gate: a version devices cannot verify yet is not assignable."""
        if self.release is not None or self.released(session, mv.name, mv.version):
            return None
        return (
            f"{mv.name} v{mv.version} is waiting for release signatures; run `edgefleet release sign` "
            "with release keys until the threshold is met"
        )

    # --- offline signatures ----------------------------------------------------------

    def pending(self) -> offline.PendingView | None:
        with Session(self.engine) as session:
            return offline.pending(session, ImageRepository(DbMetaStore(session), self.expiry))

    def add_signature(self, version: int, keyid: str, sig: str) -> offline.PendingView:
        return self.write(lambda s, r: offline.add_signature(s, r, version, keyid, sig, self.online))  # type: ignore[no-any-return]

    # --- expiry ------------------------------------------------------------------------

    def expiries(self) -> dict[str, RoleExpiry]:
        """Version and expiry of each published role."""
        with Session(self.engine) as session:
            repo = ImageRepository(DbMetaStore(session), self.expiry)
            out = {}
            for role in EXPIRY_ROLES:
                md = repo.md[role].signed
                out[role] = RoleExpiry(role, md.version, md.expires, repo.expires_in(role))
            return out

    def targets_warning(self, expiries: dict[str, RoleExpiry] | None = None) -> str | None:
        targets = (expiries or self.expiries())["targets"]
        return targets_warning(targets, offline=self.release is None, warn_s=self.targets_warn_s)

    # --- the leader's job ---------------------------------------------------------------

    def refresh(self, now_margin: float = REFRESH_AT) -> list[str]:
        """Re-sign what will lapse within ``now_margin`` of its lifetime; returns the roles re-signed."""

        def run(session: Session, repo: ImageRepository) -> list[str]:
            done: list[str] = []
            if self.release is None and repo.expires_in("targets") < self.targets_warn_s:
                self._renewal_due(session, repo)
            if self.release is not None and repo.expires_in("targets") < self.expiry["targets"].total_seconds() * now_margin:
                repo.resign_targets(self.release.release[: self.release.release_threshold], self.online)
                return ["targets", "snapshot", "timestamp"]
            if repo.expires_in("snapshot") < self.expiry["snapshot"].total_seconds() * now_margin:
                repo.snapshot(self.online)
                done = ["snapshot", "timestamp"]
            elif repo.expires_in("timestamp") < self.expiry["timestamp"].total_seconds() * now_margin:
                repo.timestamp(self.online)
                done = ["timestamp"]
            return done

        done: list[str] = self.write(run)
        if done:
            log.debug("image repository: re-signed %s", ", ".join(done))
        return done

    def _renewal_due(self, session: Session, repo: ImageRepository) -> None:
        """Offline targets near their expiry: make sure a renewal waits for signatures, and say so (hourly)."""
        t = repo.md["targets"].signed
        pending = offline.pending(session, repo)
        left = offline.pending_expires_in(session)
        if pending is None or (left is not None and left < self.targets_warn_s):  # none, or one that lapses as soon
            when = t.expires.isoformat(timespec="seconds")
            pending = offline.stage(session, repo, f"renew targets (version {t.version} expires at {when})", lambda r: None)
        if time.monotonic() - self._warned_at >= 3600:
            self._warned_at = time.monotonic()
            expiry = RoleExpiry("targets", t.version, t.expires, repo.expires_in("targets"))
            log.warning(
                "%s (pending version %d)", targets_warning(expiry, offline=True, warn_s=self.targets_warn_s), pending.version
            )

    def refresh_interval_s(self) -> float:
        """How often the leader looks: a quarter of the shortest online lifetime, within [0.5 s, 5 min]."""
        shortest = min(self.expiry["timestamp"], self.expiry["snapshot"]).total_seconds()
        return max(0.5, min(300.0, shortest / 4))
