"""The append-only, hash-chained audit log.

Every entry's ``hash`` is sha256 over the previous entry's hash and the entry's
own fields in canonical JSON, so editing or deleting any row breaks the chain
from there on; ``verify`` walks the chain and names the first broken link.
Appends take the single ``AuditHead`` row first (an UPDATE, which locks it in
PostgreSQL and takes SQLite's write lock), so concurrent writers in several
replicas still produce one gapless chain. An append is part of the caller's
transaction: the decision and its record commit together or not at all.

The head (sequence and hash) returned by ``verify`` can be copied somewhere
else (a ticket, a chat message); a chain rewritten wholesale from some entry on
no longer ends in that hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from controller.core.tables import AuditEntry, AuditHead
from shared.canonical import canonical_json

GENESIS = "0" * 64


def iso(dt: datetime | None = None) -> str:
    """Fixed-width ISO 8601 UTC with microseconds: sorts correctly as text."""
    dt = (dt or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str) -> str:
    """Normalise an ISO 8601 time given by a user to :func:`iso` form; ValueError if invalid."""
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return iso(dt)


def entry_hash(prev_hash: str, seq: int, at: str, actor: str, action: str, subject: str, reason: str, evidence: Any) -> str:
    body = canonical_json(
        {"seq": seq, "at": at, "actor": actor, "action": action, "subject": subject, "reason": reason, "evidence": evidence}
    )
    return hashlib.sha256(prev_hash.encode() + b"\n" + body).hexdigest()


def _head(session: Session) -> AuditHead:
    # Write first so the row (PostgreSQL) or the database (SQLite) is locked
    # before the head is read: concurrent appends serialise here.
    res = session.execute(update(AuditHead).where(col(AuditHead.id) == 1).values(seq=AuditHead.seq))
    if res.rowcount == 0:  # type: ignore[attr-defined]
        session.add(AuditHead(id=1, seq=0, hash=GENESIS))
        session.flush()
    head = session.get(AuditHead, 1, populate_existing=True)
    assert head is not None
    return head


def record(
    session: Session, *, actor: str, action: str, subject: str, reason: str = "", evidence: dict[str, Any] | None = None
) -> AuditEntry:
    """Append one entry in the caller's transaction (the caller commits)."""
    head = _head(session)
    seq = head.seq + 1
    at = iso()
    ev = evidence or {}
    h = entry_hash(head.hash, seq, at, actor, action, subject, reason, ev)
    entry = AuditEntry(
        seq=seq, at=at, actor=actor, action=action, subject=subject, reason=reason, evidence=ev, prev_hash=head.hash, hash=h
    )
    head.seq, head.hash = seq, h
    session.add(entry)
    session.add(head)
    session.flush()
    return entry


@dataclass
class Verification:
    entries: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(session: Session, batch: int = 5000, max_problems: int = 20) -> Verification:
    """Recompute the whole chain; report gaps, edits and a head that does not match."""
    out = Verification()
    prev_hash, expected_seq, last = GENESIS, 1, 0
    while len(out.problems) < max_problems:
        rows = session.exec(select(AuditEntry).where(col(AuditEntry.seq) > last).order_by(col(AuditEntry.seq)).limit(batch)).all()
        if not rows:
            break
        for e in rows:
            out.entries += 1
            if e.seq != expected_seq:
                out.problems.append(
                    f"entry {expected_seq}..{e.seq - 1} missing: sequence jumps from {expected_seq - 1} to {e.seq}"
                )
            if e.prev_hash != prev_hash:
                out.problems.append(
                    f"entry {e.seq}: prev_hash {e.prev_hash[:16]}… does not match entry {e.seq - 1} ({prev_hash[:16]}…)"
                )
            h = entry_hash(e.prev_hash, e.seq, e.at, e.actor, e.action, e.subject, e.reason, e.evidence)
            if h != e.hash:
                out.problems.append(f"entry {e.seq}: content does not match its hash (edited after it was written)")
            prev_hash, expected_seq, last = e.hash, e.seq + 1, e.seq
    head = session.get(AuditHead, 1)
    out.head_seq, out.head_hash = (head.seq, head.hash) if head else (0, GENESIS)
    if head is not None and (head.seq != last or head.hash != prev_hash):
        out.problems.append(
            f"head says entry {head.seq} with hash {head.hash[:16]}…, chain ends at entry {last} with {prev_hash[:16]}… "
            "(entries deleted from the end, or the head edited)"
        )
    del out.problems[max_problems:]
    return out
