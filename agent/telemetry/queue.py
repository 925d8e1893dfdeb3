"""The store-and-forward queue: unsent telemetry windows and device events in SQLite on disk.

Every window and every event is committed (WAL, ``synchronous=FULL``) before anyone
tries to send it, so a SIGKILL or a power cut loses at most the window still being
accumulated. Both leave the queue only when the controller has acknowledged their
``seq`` (ADR 0068, ADR 0078 for events; the broker's PUBACK with ``controller_acks = false``);
one sent but not acknowledged before a crash is sent again, and the receiver drops the
duplicate by ``seq``. Windows and events take their seqs from the device's one counter,
so an ack's seq names exactly one of them.

Each kind has its own bound (``max_windows``, ``max_events``): when one is full, its oldest
rows are dropped and the number dropped is kept on disk until the next window reports it
(counters ``windows_dropped`` and ``events_dropped``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# meta keys of the drops not reported yet, by the window counter that reports them
_UNREPORTED = {"windows_dropped": "unreported_dropped", "events_dropped": "unreported_events_dropped"}


class WindowQueue:
    def __init__(self, path: Path, max_windows: int, max_events: int = 1000) -> None:
        if max_windows < 1 or max_events < 1:
            raise ValueError(f"max_windows and max_events must be >= 1, got {max_windows} and {max_events}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_windows = max_windows
        self.max_events = max_events
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # KiB of page cache (SQLite's default is 2,000): what it holds grows with the file up to this cap,
        # so a smaller cap is less memory and a shorter warm-up; pages beyond it come from the OS page cache
        self._db.execute("PRAGMA cache_size=-64")
        self._db.executescript(_SCHEMA)

    def put(self, seq: int, created: float, render: Callable[[dict[str, int]], bytes]) -> int:
        """Store one window durably; return how many old windows were dropped to make room.

        ``render(dropped)`` builds the payload given the windows and events dropped since
        the last stored window (``{"windows_dropped": n, "events_dropped": m}``, the counters
        that report them), in the same transaction, so each drop is reported exactly once
        even across crashes.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                dropped_before = {}
                for counter, key in _UNREPORTED.items():
                    row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                    dropped_before[counter] = int(row[0]) if row else 0
                payload = render(dropped_before)
                self._db.executemany("DELETE FROM meta WHERE key = ?", [(k,) for k in _UNREPORTED.values()])
                dropped = self._insert("windows", seq, payload, created, self.max_windows, "windows_dropped")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return dropped

    def put_event(self, seq: int, created: float, payload: bytes) -> int:
        """Store one event durably; return how many old events were dropped to make room (reported by the next
        window as ``events_dropped``)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                dropped = self._insert("events", seq, payload, created, self.max_events, "events_dropped")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return dropped

    def _insert(self, table: str, seq: int, payload: bytes, created: float, bound: int, counter: str) -> int:
        """Insert a row into ``table`` (in the caller's transaction), drop the oldest beyond ``bound`` and add them
        to the unreported drops of ``counter``."""
        self._db.execute(f"INSERT OR REPLACE INTO {table} (seq, payload, created) VALUES (?, ?, ?)", (seq, payload, created))  # noqa: S608
        (n,) = self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # noqa: S608
        dropped = max(0, int(n) - bound)
        if dropped:
            self._db.execute(f"DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} ORDER BY seq LIMIT ?)", (dropped,))  # noqa: S608
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                (_UNREPORTED[counter], dropped),
            )
        return dropped

    def oldest(self, limit: int, after: int = -1) -> list[tuple[int, bytes]]:
        """Up to ``limit`` windows with ``seq > after``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload FROM windows WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return [(int(s), bytes(p)) for s, p in rows]

    def events(self, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` events, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT seq, payload FROM events ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [(int(s), bytes(p)) for s, p in rows]

    def ack(self, seqs: list[int]) -> None:
        """Forget acknowledged windows and events."""
        if not seqs:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for table in ("windows", "events"):
                    self._db.executemany(f"DELETE FROM {table} WHERE seq = ?", [(s,) for s in seqs])  # noqa: S608
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def mark(self, key: str) -> None:
        """Remember a fact about this queue across restarts (e.g. that a controller acknowledges its windows)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, 1)", (key,))

    def marked(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM meta WHERE key = ?", (key,)).fetchone() is not None

    def pending(self) -> int:
        """Windows and events waiting for an ack."""
        with self._lock:
            (n,) = self._db.execute("SELECT (SELECT COUNT(*) FROM windows) + (SELECT COUNT(*) FROM events)").fetchone()
        return int(n)

    def seqs(self) -> list[int]:
        with self._lock:
            return [int(s) for (s,) in self._db.execute("SELECT seq FROM windows ORDER BY seq")]

    def event_seqs(self) -> list[int]:
        with self._lock:
            return [int(s) for (s,) in self._db.execute("SELECT seq FROM events ORDER BY seq")]

    def close(self) -> None:
        with self._lock:
            self._db.close()
