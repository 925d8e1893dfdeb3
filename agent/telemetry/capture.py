"""Data capture: a sampled fraction of inputs, uploaded to the controller for retraining.

Off by default. Samples wait in a bounded SQLite spool on disk and leave it
only after the controller answered 2xx, so uploads resume after a restart or
an outage. Limits: a sampling ``rate``, a byte budget per UTC day of which
unlabelled samples may use at most ``unlabelled_share`` (labelled samples are
worth more for retraining, so they get the rest), and a spool size beyond
which unlabelled samples are evicted first.

Identity: sample ids are the spool's never-reused row ids, and every upload
names the spool (``spool``: a random id made with the spool file). A device
whose data directory is wiped starts a new spool with a new id, so its batch
names (``{spool}-{first}-{last}``) and sample keys (device, spool, id) never
repeat an earlier generation's. A batch the controller refuses with 409 (a
batch of that name is stored with other content: a spool restored from a
backup) is sent again under a fresh spool id, never dropped.

One copy per prediction: a prediction sampled when served and labelled later is
labelled in place while it waits in the spool; once uploaded, the spool keeps a
small tombstone (its prediction id, no payload; the last ``TOMBSTONES``) so the
label goes as a late label in the telemetry, which the controller's datasets
join by (device, prediction id), instead of a second copy of the inputs.
"""

from __future__ import annotations

import json
import logging
import os
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
TOMBSTONES = 4096  # uploaded samples remembered by prediction id (no payload), for labels that come later
_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (id INTEGER PRIMARY KEY AUTOINCREMENT, labelled INTEGER NOT NULL,
                                    size INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS budget (day TEXT PRIMARY KEY, used INTEGER NOT NULL, unlabelled INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = {"prediction_id": "TEXT NOT NULL DEFAULT ''", "sent": "INTEGER NOT NULL DEFAULT 0"}  # added to older spools


def utc_day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))


def new_spool_id() -> str:
    return os.urandom(8).hex()


class CaptureSpool:
    def __init__(self, path: Path, cfg: CaptureConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(samples)")}
        for name, decl in _COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE samples ADD COLUMN {name} {decl}")
        self._db.execute("CREATE INDEX IF NOT EXISTS samples_prediction ON samples (prediction_id) WHERE prediction_id != ''")
        self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('spool', ?)", (new_spool_id(),))
        self.spool_id: str = str(self._db.execute("SELECT value FROM meta WHERE key = 'spool'").fetchone()[0])

    def renew_id(self) -> str:
        """A fresh spool id for the uploads from now on (the controller holds other batches under the old one)."""
        with self._lock:
            self.spool_id = new_spool_id()
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'spool'", (self.spool_id,))
        return self.spool_id

    def sampled(self, rng: random.Random | None = None) -> bool:
        return self.cfg.enabled and (rng or random).random() < self.cfg.rate

    def offer(self, sample: dict[str, Any], *, labelled: bool, at: float | None = None) -> int:
        """Keep ``sample`` if the budgets allow; return its size in bytes, or 0 if refused."""
        if not self.cfg.enabled:
            return 0
        payload = canonical_json(sample)
        size = len(payload)
        pid = sample.get("prediction_id") or ""
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
                self._db.execute(
                    "INSERT INTO samples (labelled, size, payload, prediction_id) VALUES (?, ?, ?, ?)",
                    (int(labelled), size, payload, pid),
                )
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

    def label(self, prediction_id: str, label: int) -> str:
        """A label for a prediction this spool may hold: ``"updated"`` (it waits here unsent and now carries the
        label), ``"sent"`` (it was uploaded: send only the label) or ``"absent"`` (never kept, or evicted)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, sent, payload FROM samples WHERE prediction_id = ? AND prediction_id != '' ORDER BY id DESC LIMIT 1",
                (prediction_id,),
            ).fetchone()
            if row is None:
                return "absent"
            if row[1]:
                return "sent"
            sample = json.loads(row[2])
            sample["label"] = label
            payload = canonical_json(sample)
            self._db.execute(
                "UPDATE samples SET payload = ?, size = ?, labelled = 1 WHERE id = ?", (payload, len(payload), row[0])
            )
        return "updated"

    def _make_room(self, size: int, labelled: bool) -> bool:
        """Evict (unlabelled first, oldest first) until ``size`` more bytes fit the spool."""
        if size > self.cfg.spool_max_bytes:
            return False
        (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM samples WHERE sent = 0").fetchone()
        order = "labelled, id"  # unlabelled (0) before labelled, oldest first
        while total + size > self.cfg.spool_max_bytes:
            victim = self._db.execute(
                f"SELECT id, size, labelled FROM samples WHERE sent = 0 ORDER BY {order} LIMIT 1"  # noqa: S608
            ).fetchone()
            if victim is None or (victim[2] and not labelled):
                return False  # never evict a labelled sample for an unlabelled one
            self._db.execute("DELETE FROM samples WHERE id = ?", (victim[0],))
            total -= victim[1]
        return True

    def batch(self, max_bytes: int) -> list[tuple[int, bytes]]:
        """Oldest samples first, labelled ones before unlabelled, up to ``max_bytes`` (at least one)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, size, payload FROM samples WHERE sent = 0 ORDER BY labelled DESC, id LIMIT 1000"
            ).fetchall()
        out: list[tuple[int, bytes]] = []
        total = 0
        for sid, size, payload in rows:
            if out and total + size > max_bytes:
                break
            out.append((int(sid), bytes(payload)))
            total += size
        return out

    def sent(self, rows: list[tuple[int, bytes]]) -> None:
        """The controller stored ``rows`` (as :meth:`batch` gave them): each becomes a tombstone, unless it was
        labelled meanwhile (then it waits to go again, labelled). Only the last ``TOMBSTONES`` are kept."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("UPDATE samples SET sent = 1, payload = x'', size = 0 WHERE id = ? AND payload = ?", rows)
                self._db.execute(
                    "DELETE FROM samples WHERE sent = 1 AND (prediction_id = '' OR id <= (SELECT id FROM samples "
                    "WHERE sent = 1 ORDER BY id DESC LIMIT 1 OFFSET ?))",
                    (TOMBSTONES,),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def delete(self, ids: list[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM samples WHERE id = ?", [(i,) for i in ids])

    def pending(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM samples WHERE sent = 0").fetchone()
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Uploader:
    """Posts spooled samples to ``{url}/v1/capture/{device_id}``; marks them sent on 2xx."""

    def __init__(
        self, spool: CaptureSpool, cfg: CaptureConfig, device_id: str, timeout: float = 30.0, http: ControllerHttp | None = None
    ) -> None:
        self.spool, self.cfg, self.device_id, self.timeout = spool, cfg, device_id, timeout
        self.http = http or ControllerHttp(timeout=timeout)  # the daemon passes the agent's client (controller CA)
        self.uploaded = 0  # samples the controller stored
        self.dropped = 0  # samples the controller refused for good (400, 413, 422, or 409 under a fresh spool id)
        self.conflicts = 0  # 409s: a batch of that name was stored with other content; sent again under a fresh id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-upload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 1)

    def status(self) -> dict[str, Any]:
        """The capture part of ``edgefleet-agent status``."""
        return {
            "spool": self.spool.spool_id,
            "pending": self.spool.pending(),
            "uploaded": self.uploaded,
            "dropped": self.dropped,
            "conflicts": self.conflicts,
        }

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.upload_interval_s):
            try:
                while not self._stop.is_set() and self.upload_once():
                    pass
            except Exception:
                log.exception("capture upload failed unexpectedly")

    def upload_once(self) -> bool:
        """Upload one batch; True if the controller answered for good (more may wait)."""
        rows = self.spool.batch(self.cfg.batch_max_bytes)
        if not rows:
            return False
        for renewed in (False, True):
            code = self._post(rows)
            if code is None:
                self.spool.sent(rows)
                self.uploaded += len(rows)
                return True
            if code == 409 and not renewed:
                # The controller holds a batch of this name with other content (this spool's ids were used before:
                # a spool restored from a backup, or a sample labelled while its first upload's answer was lost).
                # Stored batches are never replaced: the same samples go again under a fresh spool id.
                old = self.spool.spool_id
                self.conflicts += 1
                log.warning(
                    "controller already holds another capture batch named like this one (spool %s, samples %d-%d); "
                    "sending it again under spool %s",
                    old, rows[0][0], rows[-1][0], self.spool.renew_id(),
                )  # fmt: skip
                continue
            if code in (400, 409, 413, 422):  # the controller will never take this batch: say so, count it, drop it
                self.dropped += len(rows)
                log.error("controller refused %d captured samples (HTTP %s); dropping them", len(rows), code)
                self.spool.delete([sid for sid, _ in rows])
                return True
            return False
        return False

    def _post(self, rows: list[tuple[int, bytes]]) -> int | None:
        """POST one batch under the spool's current id: None when stored, else the HTTP status (0: will retry)."""
        body = (
            b'{"spool":"%s","samples":[' % self.spool.spool_id.encode()
            + b",".join(b'{"id":%d,"sample":%s}' % (sid, p) for sid, p in rows)
            + b"]}"
        )
        url = f"{self.cfg.url}/v1/capture/{self.device_id}"
        try:
            with self.http.open(url, data=body, method="POST", headers={"Content-Type": "application/json"}) as resp:
                json.loads(resp.read(64 * 1024) or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code in (400, 409, 413, 422):
                return exc.code
            why = {401: "the controller did not accept this device's credential", 507: "this device's capture quota is full"}
            log.warning("capture upload failed with HTTP %s (%s); will retry", exc.code, why.get(exc.code, "server error"))
            return 0
        except (OSError, ValueError) as exc:
            log.info("capture upload failed (%s); will retry", exc)
            return 0
        return None
