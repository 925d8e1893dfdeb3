"""Process-wide garbage-collector thresholds while telemetry ingestion runs."""

from __future__ import annotations

import gc
import threading

# Each decoded window is ~70 lists and dicts, and thousands wait in the queue and the batch:
# with CPython's default thresholds (700, 10, 10) the collector runs every ~10 windows and keeps
# re-walking them (~30% of ingestion time in scripts/bench.py ingest). These thresholds keep
# collections rare; telemetry objects hold no reference cycles, so nothing waits longer to be freed.
GC_THRESHOLDS = (100_000, 50, 1000)


class _GcThresholds:
    """Raised while at least one ingester runs; the last one to stop restores what the first found."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._before = gc.get_threshold()

    def acquire(self) -> None:
        with self._lock:
            if self._users == 0:
                self._before = gc.get_threshold()
                gc.set_threshold(*(max(a, b) for a, b in zip(GC_THRESHOLDS, self._before, strict=True)))
            self._users += 1

    def release(self) -> None:
        with self._lock:
            if self._users > 0:
                self._users -= 1
                if self._users == 0:
                    gc.set_threshold(*self._before)


ingest_gc = _GcThresholds()  # shared by every ingester of the process
