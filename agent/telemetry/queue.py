"""The store-and-forward queue: unsent telemetry windows in SQLite on disk.

Every window is committed (WAL, ``synchronous=FULL``) before anyone tries to
send it, so a SIGKILL or a power cut loses at most the window still being
accumulated. Windows leave the queue only when the broker has acknowledged
them (QoS 1 PUBACK); a window sent but not acknowledged before a crash is sent
again, and the receiver drops the duplicate by ``seq``.

The queue is bounded: when full, the oldest windows are dropped and the number
dropped is kept on disk until the next window reports it (``windows_dropped``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class WindowQueue:
    def __init__(self, path: Path, max_windows: int) -> None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_windows = max_windows
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def put(self, seq: int, created: float, render: Callable[[int], bytes]) -> int:
        """Store one window durably; return how many old windows were dropped to make room.

        ``render(dropped)`` builds the payload given the number of windows dropped
        since the last stored window, in the same transaction, so that count is
        reported exactly once even across crashes.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM meta WHERE key = 'unreported_dropped'").fetchone()
                payload = render(int(row[0]) if row else 0)
                self._db.execute("DELETE FROM meta WHERE key = 'unreported_dropped'")
                self._db.execute(
                    "INSERT OR REPLACE INTO windows (seq, payload, created) VALUES (?, ?, ?)", (seq, payload, created)
                )
                (n,) = self._db.execute("SELECT COUNT(*) FROM windows").fetchone()
                dropped = max(0, n - self.max_windows)
                if dropped:
                    self._db.execute(
                        "DELETE FROM windows WHERE seq IN (SELECT seq FROM windows ORDER BY seq LIMIT ?)", (dropped,)
                    )
                    self._db.execute("INSERT INTO meta (key, value) VALUES ('unreported_dropped', ?)", (dropped,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return int(dropped)

    def oldest(self, limit: int, after: int = -1) -> list[tuple[int, bytes]]:
        """Up to ``limit`` windows with ``seq > after``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload FROM windows WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return [(int(s), bytes(p)) for s, p in rows]

    def ack(self, seqs: list[int]) -> None:
        """Forget windows the broker acknowledged."""
        if not seqs:
            return
        with self._lock:
            self._db.executemany("DELETE FROM windows WHERE seq = ?", [(s,) for s in seqs])

    def pending(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM windows").fetchone()
        return int(n)

    def seqs(self) -> list[int]:
        with self._lock:
            return [int(s) for (s,) in self._db.execute("SELECT seq FROM windows ORDER BY seq")]

    def close(self) -> None:
        with self._lock:
            self._db.close()
