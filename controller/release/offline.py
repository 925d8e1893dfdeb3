"""Targets changes waiting for offline release keys (``edgefleet release sign``).

Rules:

- With offline release signing, a registry change (bundle registered, floor raised)
  does not touch the published targets: it is staged into the one **pending** targets
  metadata, version = published + 1. A further change before the threshold is met is
  folded into the same pending version and clears the signatures collected so far
  (they signed different bytes).
- A signature is accepted only from a key that root names for ``targets`` and only if
  it verifies over the pending bytes; anything else is refused with the reason.
- When the signatures reach root's ``targets`` threshold, the pending metadata is
  published: it becomes current targets, then the online key signs snapshot and
  timestamp. Devices can install the new bundles from then on.

Everything runs in the caller's transaction under the TUF writer lock.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import Signature, Signer
from sqlmodel import Session
from tuf.api.metadata import Metadata, Targets
from tuf.api.serialization.json import CanonicalJSONSerializer

from controller.core.tables import PendingTargets
from controller.release.imagerepo import ImageRepoError, ImageRepository


class SignatureRefused(ImageRepoError):
    """A release signature does not belong to the pending targets (wrong key, version or bytes)."""


@dataclass(frozen=True)
class PendingView:
    version: int
    metadata: dict[str, Any]  # the targets metadata to sign, with the signatures so far
    changes: list[str]
    signed_by: list[str]  # key ids
    threshold: int
    published: bool = False


def _pending_md(session: Session, repo: ImageRepository, expiry: timedelta) -> tuple[PendingTargets, Metadata[Targets]]:
    row = session.get(PendingTargets, 1)
    if row is not None:
        return row, Metadata[Targets].from_bytes(bytes(row.data))
    md: Metadata[Targets] = copy.deepcopy(repo.md["targets"])
    md.signed.version += 1
    md.signatures.clear()
    row = PendingTargets(version=md.signed.version, data=b"", changes=[])
    return row, md


def stage(session: Session, repo: ImageRepository, describe: str, apply: Callable[[ImageRepository], None]) -> PendingView:
    """Fold one change into the pending targets: ``apply(repo)`` edits ``repo.md["targets"]``."""
    row, md = _pending_md(session, repo, repo.expiry["targets"])
    published = repo.md["targets"]
    repo.md["targets"] = md
    try:
        apply(repo)
    finally:
        repo.md["targets"] = published
    md.signed.expires = datetime.now(timezone.utc).replace(microsecond=0) + repo.expiry["targets"]
    md.signatures.clear()
    row.data = md.to_bytes()
    row.changes = [*row.changes, describe]
    row.version = md.signed.version
    session.add(row)
    session.flush()
    v = view(repo, row)
    assert v is not None
    return v


def view(repo: ImageRepository, row: PendingTargets | None) -> PendingView | None:
    if row is None:
        return None
    md = Metadata[Targets].from_bytes(bytes(row.data))
    threshold = repo.md["root"].signed.roles["targets"].threshold
    return PendingView(row.version, md.to_dict(), list(row.changes), sorted(md.signatures), threshold)


def pending(session: Session, repo: ImageRepository) -> PendingView | None:
    return view(repo, session.get(PendingTargets, 1))


def pending_expires_in(session: Session) -> float | None:
    """Seconds the pending targets would be valid for if published now; None when nothing waits."""
    row = session.get(PendingTargets, 1)
    if row is None:
        return None
    expires: datetime = Metadata[Targets].from_bytes(bytes(row.data)).signed.expires
    return (expires - datetime.now(timezone.utc)).total_seconds()


def add_signature(session: Session, repo: ImageRepository, version: int, keyid: str, sig: str, online: Signer) -> PendingView:
    """Check one release-key signature over the pending targets; publish at the threshold."""
    row = session.get(PendingTargets, 1)
    if row is None:
        raise SignatureRefused("no targets change is waiting for signatures")
    if row.version != version:
        raise SignatureRefused(f"expected a signature for pending targets version {row.version}, got version {version}")
    root = repo.md["root"].signed
    role = root.roles["targets"]
    if keyid not in role.keyids:
        raise SignatureRefused(f"key {keyid[:16]} is not a release (targets) key in root version {root.version}")
    md = Metadata[Targets].from_bytes(bytes(row.data))
    signature = Signature(keyid, sig)
    try:
        root.keys[keyid].verify_signature(signature, CanonicalJSONSerializer().serialize(md.signed))
    except UnverifiedSignatureError:
        raise SignatureRefused(
            f"signature by {keyid[:16]} does not verify over pending targets version {version} "
            "(signed other bytes? fetch the pending change again)"
        ) from None
    md.signatures[keyid] = signature
    if len(md.signatures) >= role.threshold:
        repo.publish_targets(md, online)
        v = view(repo, row)
        session.delete(row)
        session.flush()
        assert v is not None
        return PendingView(v.version, v.metadata, v.changes, sorted(md.signatures), v.threshold, published=True)
    row.data = md.to_bytes()
    session.add(row)
    session.flush()
    v = view(repo, row)
    assert v is not None
    return v
