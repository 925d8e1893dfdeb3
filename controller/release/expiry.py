"""When the image repository's signed metadata lapses, and what to tell operators ahead of it.

Snapshot and timestamp (online key) and, with online release signing, targets are re-signed
by the leader. With **offline** release keys nobody on the controller can re-sign targets:
when it lapses every device refuses every install. So ``targets_warning`` speaks up
``warn_s`` ahead (log, ``/v1/tuf/status``, ``edgefleet release status``, the
``edgefleet_tuf_expires_in_seconds`` gauge and its alert), and the leader stages a renewal
for the release-key holders to sign (``edgefleet release sign``). Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

ROLES = ("root", "targets", "snapshot", "timestamp")


@dataclass(frozen=True)
class RoleExpiry:
    role: str
    version: int
    expires_at: datetime
    expires_in_s: float  # negative: lapsed


def targets_warning(targets: RoleExpiry, *, offline: bool, warn_s: float) -> str | None:
    """The operator-facing warning while offline-signed targets are within ``warn_s`` of lapsing, else None."""
    if not offline or targets.expires_in_s >= warn_s:
        return None
    when = targets.expires_at.isoformat(timespec="seconds")
    if targets.expires_in_s <= 0:
        return (
            f"targets version {targets.version} expired at {when}: devices refuse every install until release keys "
            "sign the pending renewal (edgefleet release sign)"
        )
    return (
        f"targets version {targets.version} expires in {_span(targets.expires_in_s)} ({when}); release keys must sign "
        "the pending renewal before then (edgefleet release pending, edgefleet release sign) or devices refuse every install"
    )


def _span(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 60:.0f} minutes"
