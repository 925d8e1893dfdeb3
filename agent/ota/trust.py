"""The image-repository side of the trust check (Uptane-style: two signers must agree).

``ImageRepoClient.target_for`` refreshes TUF metadata with ``tuf.ngclient``
(through the agent's own fetcher, so metadata downloads obey the same length
and speed limits) and returns the signed :class:`TargetInfo` for an assigned
bundle. The policy is pure and lives apart, free of python-tuf
(agent/ota/agreement.py: ``check_agreement``): the director's assignment and the
release-signed target must agree on hash, length and version, the version must be
at or above the signed floor, and the hardware must match. Each refresh also
records the verified listing there (``agreement.remember``) for the rollback fast path.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tuf.api.exceptions import DownloadError, ExpiredMetadataError, RepositoryError
from tuf.api.metadata import Metadata
from tuf.ngclient import Updater, UpdaterConfig

from agent.ota.agreement import TargetInfo, TrustError, TrustUnavailable, check_agreement, remember, target_info
from agent.ota.fetcher import Fetcher
from shared.bundle import target_path
from shared.messages import Assignment

__all__ = ["ImageRepoClient", "MetadataLimits", "TargetInfo", "TrustError", "TrustUnavailable", "check_agreement"]
log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MetadataLimits:
    root: int = 512 * 1024  # bytes
    timestamp: int = 16 * 1024  # bytes
    snapshot: int = 1024 * 1024  # bytes
    targets: int = 4 * 1024 * 1024  # bytes


class ImageRepoClient:
    # pragma: no mutate start
    def __init__(
        self,
        *,
        metadata_dir: Path,
        metadata_url: str,
        bootstrap_root: bytes,
        fetcher: Fetcher,
        limits: MetadataLimits | None = None,
    ) -> None:
        self.metadata_dir = metadata_dir
        self.metadata_url = metadata_url
        self._bootstrap = bootstrap_root
        self.fetcher = fetcher
        lim = limits or MetadataLimits()
        self.config = UpdaterConfig(
            root_max_length=lim.root,
            timestamp_max_length=lim.timestamp,
            snapshot_max_length=lim.snapshot,
            targets_max_length=lim.targets,
            max_root_rotations=32,
        )
        metadata_dir.mkdir(parents=True, exist_ok=True)

    # pragma: no mutate end
    def _updater(self) -> Updater:  # pragma: no mutate block
        cached = self.metadata_dir / "root.json"
        # The provisioned root is only the first link; once cached, the newest verified root is the anchor.
        bootstrap = None if cached.exists() else self._bootstrap
        return Updater(str(self.metadata_dir), self.metadata_url, fetcher=self.fetcher, config=self.config, bootstrap=bootstrap)

    def target_for(self, a: Assignment, *, arch: str) -> TargetInfo:
        """Refresh the metadata and return the verified target for ``a``; raise TrustError."""
        path = target_path(a.model, a.version)
        try:
            up = self._updater()
            up.refresh()
            self._remember()
            tf = up.get_targetinfo(path)
        except ExpiredMetadataError as exc:  # the controller re-signs it; ask again later
            raise TrustUnavailable(f"image repository metadata expired: ExpiredMetadataError: {exc}") from None
        except RepositoryError as exc:
            raise TrustError(f"image repository metadata rejected: {type(exc).__name__}: {exc}") from None
        except DownloadError as exc:
            raise TrustUnavailable(f"image repository metadata download failed: {type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise TrustUnavailable(f"image repository metadata unusable: {exc}") from None
        except ValueError as exc:
            raise TrustError(f"image repository metadata unusable: {exc}") from None
        if tf is None:
            raise TrustError(f"image repository does not list {path}: not a signed release")
        if "sha256" not in tf.hashes:
            raise TrustError(f"image repository entry {path} lacks edgefleet data: no sha256")
        info = target_info(path, tf.length, tf.hashes["sha256"], tf.custom)
        check_agreement(a, info, arch=arch)
        return info

    def metadata_digest(self) -> str:
        """Refresh the metadata and return a digest of the verified targets (changes when a release changes)."""
        try:
            self._updater().refresh()
            self._remember()
            return hashlib.sha256((self.metadata_dir / "targets.json").read_bytes()).hexdigest()
        except (RepositoryError, DownloadError, OSError, ValueError) as exc:
            raise TrustUnavailable(f"image repository metadata not refreshed: {type(exc).__name__}: {exc}") from None

    def _remember(self) -> None:  # pragma: no mutate block
        """Record the listing this refresh verified (ngclient keeps the verified metadata in ``metadata_dir``)
        and until when it is valid: the earliest expiry of timestamp, snapshot and targets."""
        try:
            mds = {r: Metadata.from_file(str(self.metadata_dir / f"{r}.json")) for r in ("timestamp", "snapshot", "targets")}
            expires = min(md.signed.expires.timestamp() for md in mds.values())
            targets = {
                p: {"length": t.length, "sha256": t.hashes.get("sha256", ""), "custom": t.custom}
                for p, t in mds["targets"].signed.targets.items()  # type: ignore[attr-defined]
            }
            remember(self.metadata_dir, targets, verified_at=time.time(), expires_at=expires)
        except (OSError, ValueError, KeyError, TypeError) as exc:  # only the fast path goes without it
            log.warning("verified release listing not recorded: %s", exc)
