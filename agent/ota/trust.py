"""The image-repository side of the trust check (Uptane-style: two signers must agree).

``ImageRepoClient.target_for`` refreshes TUF metadata with ``tuf.ngclient``
(through the agent's own fetcher, so metadata downloads obey the same length
and speed limits) and returns the signed :class:`TargetInfo` for an assigned
bundle. ``check_agreement`` is pure policy: the director's assignment and the
release-signed target must agree on hash, length and version, the version
must be at or above the signed floor, and the hardware must match.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api.exceptions import DownloadError, ExpiredMetadataError, RepositoryError
from tuf.ngclient import Updater, UpdaterConfig

from agent.ota.fetcher import Fetcher
from shared.bundle import target_path
from shared.messages import Assignment


class TrustError(Exception):
    """The image repository does not vouch for the assignment; the message is the reason."""


class TrustUnavailable(TrustError):
    """The image repository could not be asked (unreachable, or its metadata lapsed): worth retrying."""


@dataclass(frozen=True, kw_only=True)
class MetadataLimits:
    root: int = 512 * 1024  # bytes
    timestamp: int = 16 * 1024  # bytes
    snapshot: int = 1024 * 1024  # bytes
    targets: int = 4 * 1024 * 1024  # bytes


@dataclass(frozen=True)
class TargetInfo:
    path: str
    length: int  # bytes
    sha256: str
    model: str
    version: int
    floor: int
    hardware: dict[str, Any] = field(default_factory=dict)


def check_agreement(a: Assignment, t: TargetInfo, *, arch: str) -> None:
    """Raise TrustError unless the assignment and the signed target agree."""
    if (t.model, t.version) != (a.model, a.version):
        raise TrustError(
            f"image repository lists {t.path} as {t.model} v{t.version}, the director assigned {a.model} v{a.version}"
        )
    if t.sha256 != a.sha256:
        raise TrustError(
            f"mix-and-match: director assigned sha256 {a.sha256[:16]}…, image repository signed {t.sha256[:16]}… for {t.path}"
        )
    if t.length != a.length:
        raise TrustError(f"director assigned length {a.length}, image repository signed {t.length} bytes for {t.path}")
    if t.version < t.floor:
        raise TrustError(f"rollback: {t.model} v{t.version} is below the signed version floor {t.floor}")
    archs = t.hardware.get("arch") or []
    if archs and arch not in archs:
        raise TrustError(f"wrong hardware: {t.path} is signed for {', '.join(archs)}, this device is {arch}")


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
        custom = tf.custom if isinstance(tf.custom, dict) else {}
        try:
            info = TargetInfo(
                path=path,
                length=tf.length,
                sha256=tf.hashes["sha256"],
                model=str(custom["model"]),
                version=int(custom["version"]),
                floor=int(custom.get("floor", 0)),
                hardware=dict(custom.get("hardware") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TrustError(f"image repository entry {path} lacks edgefleet data: {exc!r}") from None
        check_agreement(a, info, arch=arch)
        return info

    def metadata_digest(self) -> str:
        """Refresh the metadata and return a digest of the verified targets (changes when a release changes)."""
        try:
            self._updater().refresh()
            return hashlib.sha256((self.metadata_dir / "targets.json").read_bytes()).hexdigest()
        except (RepositoryError, DownloadError, OSError, ValueError) as exc:
            raise TrustUnavailable(f"image repository metadata not refreshed: {exc}") from None
