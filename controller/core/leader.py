"""One leader among controller replicas, and the periodic jobs it runs.

Rules:

- Leadership is a lease row (``leaderlease``) in the shared database, so it works the
  same on SQLite (one process) and PostgreSQL (many replicas). A replica takes the
  lease when it is free or expired and renews it every ``lease_s / 3`` seconds; a
  leader that dies loses it within ``lease_s``, and another replica takes it over.
- Every take-over increments ``term``. A job sees the term it runs under
  (``LeaderContext.term``) and may record it; ``still_leader()`` re-checks the lease.
- Jobs are idempotent: a job that runs twice (an old leader finishing its tick while
  a new one starts) does no harm. A job that raises is logged and counted; the loop
  goes on.
- Nothing here knows what the jobs do; concerns register them with
  :meth:`Leader.add_job` (TUF re-signing, desired-state refresh, rollout analysis, ...).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col

from controller.core.tables import LeaderLease

log = logging.getLogger(__name__)

LEASE_NAME = "controller"


@dataclass(frozen=True)
class LeaderContext:
    """What a job gets: the database and the term it runs under."""

    engine: Engine
    term: int
    still_leader: Callable[[], bool]


Job = Callable[[LeaderContext], None]


@dataclass
class _Scheduled:
    name: str
    interval_s: float
    fn: Job
    next_at: float = 0.0
    runs: int = 0
    failures: int = 0
    last_error: str | None = None


@dataclass
class LeaderStatus:
    holder: str | None
    term: int
    is_leader: bool
    jobs: dict[str, dict[str, object]] = field(default_factory=dict)


class Leader:
    """Campaigns for the lease in a background thread and runs due jobs while it holds it."""

    def __init__(self, engine: Engine, *, identity: str | None = None, lease_s: float = 10.0, tick_s: float = 0.5) -> None:
        self.engine = engine
        self.identity = identity or uuid.uuid4().hex[:12]
        self.lease_s = lease_s
        self.tick_s = tick_s
        self._jobs: list[_Scheduled] = []
        self._term = 0
        self._holder: str | None = None
        self._leader_until = 0.0  # monotonic time up to which this replica may act as leader
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.on_change: list[Callable[[bool, int], None]] = []

    # --- public -------------------------------------------------------------------

    def add_job(self, name: str, interval_s: float, fn: Job) -> None:
        with self._lock:
            self._jobs.append(_Scheduled(name, interval_s, fn))

    @property
    def is_leader(self) -> bool:
        return time.monotonic() < self._leader_until

    def status(self) -> LeaderStatus:
        with self._lock:
            jobs: dict[str, dict[str, object]] = {
                j.name: {"runs": j.runs, "failures": j.failures, "last_error": j.last_error} for j in self._jobs
            }
        return LeaderStatus(self._holder, self._term, self.is_leader, jobs)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="leader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.is_leader:
            self._release()

    def campaign(self, now: float | None = None) -> bool:
        """Take or renew the lease once; True while this replica leads."""
        wall = time.time() if now is None else now
        was = self.is_leader
        try:
            with Session(self.engine) as session:
                row = session.get(LeaderLease, LEASE_NAME)
                if row is None:
                    session.add(LeaderLease(name=LEASE_NAME, holder=self.identity, term=1, expires_at=wall + self.lease_s))
                    try:
                        session.commit()
                    except IntegrityError:
                        session.rollback()
                        return self._set(False, None, self._term, was)
                    return self._set(True, self.identity, 1, was)
                if row.holder == self.identity and row.expires_at > wall:
                    term = row.term
                elif row.expires_at <= wall:
                    term = row.term + 1
                else:
                    return self._set(False, row.holder, row.term, was)
                # Compare-and-set on the row we read: a concurrent taker makes this update match no row.
                res = session.execute(
                    update(LeaderLease)
                    .where(col(LeaderLease.name) == LEASE_NAME, col(LeaderLease.term) == row.term)
                    .where(col(LeaderLease.holder) == row.holder, col(LeaderLease.expires_at) == row.expires_at)
                    .values(holder=self.identity, term=term, expires_at=wall + self.lease_s)
                )
                session.commit()
                if res.rowcount != 1:  # type: ignore[attr-defined]
                    return self._set(False, None, self._term, was)
                return self._set(True, self.identity, term, was)
        except SQLAlchemyError as exc:
            log.warning("leader lease: database error (%s); not leading until it answers", exc.__class__.__name__)
            return self._set(False, self._holder, self._term, was, keep_holder=True)

    def run_due(self, now: float | None = None) -> None:
        """Run every job whose interval has passed (only while leading)."""
        t = time.monotonic() if now is None else now
        with self._lock:
            due = [j for j in self._jobs if j.next_at <= t]
        ctx = LeaderContext(self.engine, self._term, lambda: self.is_leader)
        for job in due:
            if not self.is_leader or self._stop.is_set():
                return
            job.next_at = t + job.interval_s
            try:
                job.fn(ctx)
                job.runs += 1
                job.last_error = None
            except Exception as exc:  # a failing job must not stop the others or the lease
                job.failures += 1
                job.last_error = f"{exc.__class__.__name__}: {exc}"[:300]
                log.exception("leader job %s failed", job.name)

    # --- internals ------------------------------------------------------------------

    def _set(self, leading: bool, holder: str | None, term: int, was: bool, keep_holder: bool = False) -> bool:
        if leading:
            self._leader_until = time.monotonic() + self.lease_s * 0.8  # stop acting before others may take over
        else:
            self._leader_until = 0.0
        if not keep_holder:
            self._holder = holder
        changed = leading != was or (leading and term != self._term)
        self._term = term
        if changed:
            log.info("leader: %s (term %d, replica %s)", "leading" if leading else f"following {holder}", term, self.identity)
            if leading:
                with self._lock:
                    for j in self._jobs:
                        j.next_at = 0.0  # a new leader runs every job at once
            for cb in self.on_change:
                cb(leading, term)
        return leading

    def _release(self) -> None:
        try:
            with Session(self.engine) as session:
                session.execute(
                    update(LeaderLease)
                    .where(col(LeaderLease.name) == LEASE_NAME, col(LeaderLease.holder) == self.identity)
                    .values(expires_at=0.0)
                )
                session.commit()
        except SQLAlchemyError:
            pass
        self._leader_until = 0.0

    def _run(self) -> None:
        renew_every = self.lease_s / 3
        next_campaign = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_campaign:
                self.campaign()
                next_campaign = now + renew_every
            if self.is_leader:
                self.run_due()
            self._stop.wait(self.tick_s)
