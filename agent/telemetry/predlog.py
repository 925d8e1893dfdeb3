"""Recent predictions' context on disk, bounded, so a label that comes late still finds its prediction.

A local application may report the true label hours or days after a
prediction. The label must count for the prediction's window and model
version, so the agent keeps, per prediction id: role, model, version, the
window it fell in and the predicted class. Predictions are buffered in memory
and written once per telemetry window (one SQLite transaction, off the
inference path); the table keeps the newest ``max_rows`` (oldest deleted
first). After a crash the predictions of the unfinished window are lost; their
labels are then refused as unknown, like labels for pruned predictions.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import NamedTuple


class Prediction(NamedTuple):  # a tuple: the telemetry thread makes one per inference; ~1 µs cheaper than a frozen dataclass
    prediction_id: str
    role: str
    model: str
    version: int
    window_start: float  # start of the telemetry window the prediction fell in (unix seconds)
    predicted: int


class PredictionLog:
    def __init__(self, path: Path, max_rows: int = 100_000) -> None:
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # KiB of page cache (SQLite's default is 2,000): what it holds grows with the file up to this cap,
        # so a smaller cap is less memory and a shorter warm-up; pages beyond it come from the OS page cache
        self._db.execute("PRAGMA cache_size=-64")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS prediction (id TEXT PRIMARY KEY, role TEXT NOT NULL, model TEXT NOT NULL,"
            " version INTEGER NOT NULL, window_start REAL NOT NULL, predicted INTEGER NOT NULL)"
        )

    def add_many(self, rows: list[Prediction]) -> None:
        """Store predictions (one transaction) and drop the oldest beyond ``max_rows``."""
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO prediction (id, role, model, version, window_start, predicted) VALUES (?, ?, ?, ?, ?, ?)",
                [(p.prediction_id, p.role, p.model, p.version, p.window_start, p.predicted) for p in rows],
            )
            self._db.execute("DELETE FROM prediction WHERE rowid <= (SELECT MAX(rowid) FROM prediction) - ?", (self.max_rows,))
            self._db.execute("COMMIT")

    def get(self, prediction_id: str) -> Prediction | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, role, model, version, window_start, predicted FROM prediction WHERE id = ?", (prediction_id,)
            ).fetchone()
        return None if row is None else Prediction(row[0], row[1], row[2], int(row[3]), float(row[4]), int(row[5]))

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM prediction").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
