"""The pure trust policy, without python-tuf: director and image repository must agree.

``check_agreement``: the director's assignment and the release-signed target agree on
hash, length and version, the version is at or above the signed floor, the hardware
matches. ``ImageRepoClient`` (agent/ota/trust.py, in the update process) applies it
after each TUF refresh and records what the refresh verified (:func:`remember`):
the listing, when, and until when TUF says it is valid.

:func:`vouched` answers from that record, in the agent itself, whether a bundle already
on the device may be installed again without asking the image repository anew: only if
the last refresh listed it (and the floor allows it) no longer than ``max_age`` seconds
ago and the metadata has not expired. It only ever says yes or "ask"; a refusal comes
from a fresh check. This is the rollback fast path (ADR 0073): a device goes back to the
model it ran before without a download or a TUF refresh on the critical path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.bundle import target_path
from shared.fsutil import atomic_write_json
from shared.messages import Assignment

LISTING = "listing.json"  # in the TUF metadata directory


class TrustError(Exception):
    """The image repository does not vouch for the assignment; the message is the reason."""


class TrustUnavailable(TrustError):
    """The image repository could not be asked (unreachable, or its metadata lapsed): worth retrying."""


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


def target_info(path: str, length: int, sha256: str, custom: Any) -> TargetInfo:
    """A signed target entry as :class:`TargetInfo`; TrustError if it lacks edgefleet's data."""
    c = custom if isinstance(custom, dict) else {}
    try:
        return TargetInfo(
            path=path,
            length=int(length),
            sha256=str(sha256),
            model=str(c["model"]),
            version=int(c["version"]),
            floor=int(c.get("floor", 0)),
            hardware=dict(c.get("hardware") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TrustError(f"image repository entry {path} lacks edgefleet data: {exc!r}") from None


def remember(metadata_dir: Path, targets: dict[str, dict[str, Any]], *, verified_at: float, expires_at: float) -> None:
    """Record what a refresh verified: ``targets`` path -> {length, sha256, custom}, and until when it is valid."""
    atomic_write_json(metadata_dir / LISTING, {"verified_at": verified_at, "expires_at": expires_at, "targets": targets})


def verified_at(metadata_dir: Path) -> float | None:
    """When the recorded listing was verified (unix seconds); None without a usable record."""
    try:
        return float(json.loads((metadata_dir / LISTING).read_bytes())["verified_at"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def vouched(metadata_dir: Path, a: Assignment, *, arch: str, now: float, max_age: float) -> tuple[bool, str]:
    """(True, how) when the last refresh vouched for ``a`` recently enough; (False, why not) otherwise."""
    if max_age <= 0:
        return False, "turned off"
    try:
        data = json.loads((metadata_dir / LISTING).read_bytes())
        verified_at, expires_at = float(data["verified_at"]), float(data["expires_at"])
        entry = data["targets"].get(target_path(a.model, a.version))
    except FileNotFoundError:
        return False, "no refresh recorded"
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
        return False, f"record unusable: {exc!r}"
    age = now - verified_at
    if not 0 <= age <= max_age:
        return False, f"last refresh {age:.0f} s ago (at most {max_age:.0f} s)"
    if now >= expires_at:
        return False, "the metadata of the last refresh has expired"
    if not isinstance(entry, dict):
        return False, f"the last refresh did not list {target_path(a.model, a.version)}"
    try:
        info = target_info(target_path(a.model, a.version), entry["length"], entry["sha256"], entry.get("custom"))
        check_agreement(a, info, arch=arch)
    except (TrustError, KeyError, TypeError) as exc:
        return False, str(exc)
    return True, f"listed by the image repository {age:.0f} s ago"
