"""Data capture: a sampled fraction of inputs, uploaded to the controller for retraining.

Off by default. Samples wait in a bounded SQLite spool on disk and leave it
only after the controller answered 2xx, so uploads resume after a restart or
an outage. Limits: a sampling ``rate``, a byte budget per UTC day of which
unlabelled samples may use at most ``unlabelled_share`` (labelled samples are
worth more for retraining, so they get the rest), and a spool size beyond
which unlabelled samples are evicted first. Sample ids are the spool's
never-reused row ids, so the controller can drop a re-uploaded duplicate.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

from agent.config import CaptureConfig
from agent.http import ControllerHttp
from shared.canonical import canonical_json

log = logging.getLogger(__name__)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (id INTEGER PRIMARY KEY AUTOINCREMENT, labelled INTEGER NOT NULL,
                                    size INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS budget (day TEXT PRIMARY KEY, used INTEGER NOT NULL, unlabelled INTEGER NOT NULL);
"""


def utc_day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))


class CaptureSpool:
    def __init__(self, path: Path, cfg: CaptureConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def sampled(self, rng: random.Random | None = None) -> bool:
        return self.cfg.enabled and (rng or random).random() < self.cfg.rate

    def offer(self, sample: dict[str, Any], *, labelled: bool, at: float | None = None) -> int:
        """Keep ``sample`` if the budgets allow; return its size in bytes, or 0 if refused."""
        if not self.cfg.enabled:
            return 0
        payload = canonical_json(sample)
        size = len(payload)
        day = utc_day(time.time() if at is None else at)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT used, unlabelled FROM budget WHERE day = ?", (day,)).fetchone()
                used, unl = row if row else (0, 0)
                if used + size > self.cfg.max_bytes_per_day or (
                    not labelled and unl + size > self.cfg.unlabelled_share * self.cfg.max_bytes_per_day
                ):
                    self._db.execute("ROLLBACK")
                    return 0
                if not self._make_room(size, labelled):
                    self._db.execute("ROLLBACK")
                    return 0
                self._db.execute("INSERT INTO samples (labelled, size, payload) VALUES (?, ?, ?)", (int(labelled), size, payload))
                self._db.execute("DELETE FROM budget WHERE day != ?", (day,))
                self._db.execute(
                    "INSERT INTO budget (day, used, unlabelled) VALUES (?, ?, ?) ON CONFLICT(day) DO UPDATE "
                    "SET used = used + excluded.used, unlabelled = unlabelled + excluded.unlabelled",
                    (day, size, 0 if labelled else size),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return size

    def _make_room(self, size: int, labelled: bool) -> bool:
        """Evict (unlabelled first, oldest first) until ``size`` more bytes fit the spool."""
        if size > self.cfg.spool_max_bytes:
            return False
        (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM samples").fetchone()
        order = "labelled, id"  # unlabelled (0) before labelled, oldest first
        while total + size > self.cfg.spool_max_bytes:
            victim = self._db.execute(f"SELECT id, size, labelled FROM samples ORDER BY {order} LIMIT 1").fetchone()  # noqa: S608
            if victim is None or (victim[2] and not labelled):
                return False  # never evict a labelled sample for an unlabelled one
            self._db.execute("DELETE FROM samples WHERE id = ?", (victim[0],))
            total -= victim[1]
        return True

    def batch(self, max_bytes: int) -> list[tuple[int, bytes]]:
        """Oldest samples first, labelled ones before unlabelled, up to ``max_bytes`` (at least one)."""
        with self._lock:
            rows = self._db.execute("SELECT id, size, payload FROM samples ORDER BY labelled DESC, id LIMIT 1000").fetchall()
        out: list[tuple[int, bytes]] = []
        total = 0
        for sid, size, payload in rows:
            if out and total + size > max_bytes:
                break
            out.append((int(sid), bytes(payload)))
            total += size
        return out

    def delete(self, ids: list[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM samples WHERE id = ?", [(i,) for i in ids])

    def pending(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM samples").fetchone()
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Uploader:
    """Posts spooled samples to ``{url}/v1/capture/{device_id}``; deletes them on 2xx."""

    def __init__(
        self, spool: CaptureSpool, cfg: CaptureConfig, device_id: str, timeout: float = 30.0, http: ControllerHttp | None = None
    ) -> None:
        self.spool, self.cfg, self.device_id, self.timeout = spool, cfg, device_id, timeout
        self.http = http or ControllerHttp(timeout=timeout)  # the daemon passes the agent's client (controller CA)
        self.uploaded = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-upload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.upload_interval_s):
            try:
                while not self._stop.is_set() and self.upload_once():
                    pass
            except Exception:
                log.exception("capture upload failed unexpectedly")

    def upload_once(self) -> bool:
        """Upload one batch; True if one was accepted (more may wait)."""
        rows = self.spool.batch(self.cfg.batch_max_bytes)
        if not rows:
            return False
        body = b'{"samples":[' + b",".join(b'{"id":%d,"sample":%s}' % (sid, p) for sid, p in rows) + b"]}"
        url = f"{self.cfg.url}/v1/capture/{self.device_id}"
        try:
            with self.http.open(url, data=body, method="POST", headers={"Content-Type": "application/json"}) as resp:
                json.loads(resp.read(64 * 1024) or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code in (400, 409, 413, 422):  # the controller will never take this batch: say so, drop it
                log.error("controller refused %d captured samples (%s); dropping them", len(rows), exc.code)
                self.spool.delete([sid for sid, _ in rows])
                return True
            why = {401: "the controller did not accept this device's credential", 507: "this device's capture quota is full"}
            log.warning("capture upload failed with HTTP %s (%s); will retry", exc.code, why.get(exc.code, "server error"))
            return False
        except (OSError, ValueError) as exc:
            log.info("capture upload failed (%s); will retry", exc)
            return False
        self.spool.delete([sid for sid, _ in rows])
        self.uploaded += len(rows)
        return True
