"""Captured samples as Parquet, and datasets as immutable, content-hashed snapshots.

Layout under ``root`` (``{data_dir}/datasets`` on a controller)::

    samples/model=M/cohort=C/day=YYYY-MM-DD/<device>-<batch>.parquet   one per capture batch and partition
    samples/model=M/cohort=C/day=YYYY-MM-DD/compacted-<digest>.parquet small files merged (``compaction``)
    samples/_exported/<device>/<batch>.json                              the batch was exported (what and how many)
    snapshots/<sha256>/data.parquet, meta.json                           one dataset, never rewritten

Rules:

- A capture batch (``controller/api/routes/capture.py``: one JSON-lines file, never
  replaced) becomes Parquet files once; re-running the export writes nothing new.
  A line that does not parse is skipped and counted; the JSON-lines file stays, so
  nothing is lost. A device in several cohorts has its samples in each cohort's
  partition (a cohort's partition is complete); snapshots count a sample once.
- Labels are joined at snapshot time: a label stored by the controller for the
  sample's prediction id (``predictionlabel``: late labels from the device or the
  API) wins over the label the device captured with the sample.
- Batch features are joined point in time: each sample gets the value that was in
  force on its device when it was captured, by the rules of
  ``shared.features.value_at`` (device scope, then its cohorts', then the fleet's),
  in DuckDB; a value that started after the sample was captured is never joined.
- Samples keep the model inputs the device computed (``inputs``) and, when the
  app sent raw inputs, the raw item (``raw``): training runs the feature spec on
  ``raw``, so a new spec can be trained from old captures.
- One row per sample: a prediction captured twice (sampled when served, then again
  when its label came) is one row, the labelled copy's, captured at its first
  copy's time. The held-out split is keyed by the raw input's content
  (``Dataset.holdout_mask``), so the same input never lands on both sides.
- A sample is (device, spool, sample id): the agent's spool id (``spool``, random,
  made with its spool) tells a wiped device's generations apart, whose sample ids
  start again at 1; batches of agents before spool ids have ``spool`` "". The
  batch-feature join and a sample without a prediction id key on all three.
- Readers read the files ``partitions.live_files`` lists, not a glob: while a compaction is under way
  every row is read once (ADR 0081); a file deleted under a query makes it list again and retry.
- A snapshot's hash covers its rows in a fixed order (device, sample id, spool) and the
  query that chose them, so the same inputs give the same hash on any machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from controller.pipeline import partitions
from shared.canonical import canonical_json
from shared.features import BatchFeatureValue
from shared.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)
T = TypeVar("T")

NO_COHORT = "_none"  # partition of devices in no cohort
SAMPLE_SCHEMA = pa.schema(
    [
        ("device_id", pa.string()),
        ("sample_id", pa.int64()),
        ("spool", pa.string()),  # the agent's spool id ("" from agents before spool ids)
        ("ts", pa.float64()),
        ("version", pa.int64()),
        ("role", pa.string()),
        ("inputs", pa.list_(pa.float32())),  # what the model got (flattened)
        ("raw", pa.list_(pa.float32())),  # the raw input the feature spec made them from (flattened); null: not captured
        ("prediction", pa.int64()),
        ("label", pa.int64()),
        ("prediction_id", pa.string()),
        ("hardware_class", pa.string()),
    ]
)
LABEL_SCHEMA = pa.schema([("device_id", pa.string()), ("prediction_id", pa.string()), ("label", pa.int64())])
BATCH_SCHEMA = pa.schema(
    [
        ("scope", pa.string()),
        ("name", pa.string()),
        ("value", pa.float64()),
        ("valid_from", pa.float64()),
        ("valid_to", pa.float64()),
    ]
)
# What makes rows copies of one sample (GROUP BY it): the same capture filed under each of its device's cohorts,
# and the same prediction captured again when its label came (``agent/telemetry/capture.py`` samples a prediction
# at serving time; agents before spool tombstones captured it once more, labelled, on feedback; a batch refused with
# 409 goes again under a fresh spool id). Copies share (device, prediction id); a sample captured with no prediction
# id is its own, (device, spool, sample id). Copies were captured at their first copy's time, min(ts).
SAMPLE_KEY = (
    "device_id, prediction_id, CASE WHEN prediction_id = '' THEN coalesce(spool, '') END, "
    "CASE WHEN prediction_id = '' THEN sample_id END"
)
# One row per sample; the labelled copy wins (then the latest). The spool and time break the remaining ties (a batch
# sent again under a fresh spool id), so the winner does not depend on the order files are read in (compaction).
_WINNER = "(s.label IS NOT NULL, s.sample_id, s.hardware_class, coalesce(s.spool, ''), s.ts)"
_PICK = (
    "CREATE TEMP TABLE picked AS SELECT s.device_id, "  # noqa: S608  (module constants only)
    f"arg_max_null(s.sample_id, {_WINNER}) AS sample_id, arg_max_null(coalesce(s.spool, ''), {_WINNER}) AS spool, "
    f"min(s.ts) AS ts, arg_max_null(s.version, {_WINNER}) AS version, "
    f"arg_max_null(s.inputs, {_WINNER}) AS inputs, arg_max_null(s.raw, {_WINNER}) AS raw, "
    f"arg_max_null(s.hardware_class, {_WINNER}) AS hardware_class, list(DISTINCT s.cohort ORDER BY s.cohort) AS cohorts, "
    f"arg_max_null(s.label, {_WINNER}) AS device_label, s.prediction_id "
    "FROM read_parquet($files, hive_partitioning = true, hive_types = {'cohort': VARCHAR, 'day': VARCHAR}, "
    "union_by_name = true) s "  # files exported before spool ids have no spool column
    "WHERE len($cohorts) = 0 OR list_contains($cohorts, s.cohort) "
    f"GROUP BY {SAMPLE_KEY} "
    "HAVING min(s.ts) >= $since AND min(s.ts) < $until"
)
# The value of each batch feature in force on a sample's device when it was captured, by the rules of
# ``shared.features.value_at``: valid_from <= ts < valid_to; the most specific scope wins (the device, then any of
# its cohorts, then the fleet), then the latest valid_from, then the later entry.
_IN_FORCE = (
    "CREATE TEMP TABLE in_force AS SELECT device_id, spool, sample_id, name, value FROM ("
    " SELECT p.device_id, p.spool, p.sample_id, b.name, b.value, row_number() OVER ("
    "  PARTITION BY p.device_id, p.spool, p.sample_id, b.name ORDER BY"
    "  CASE WHEN b.scope = 'device:' || p.device_id THEN 0 WHEN b.scope = 'fleet' THEN 2 ELSE 1 END,"
    "  b.valid_from DESC, b.seq DESC) AS rk"
    " FROM picked p JOIN (SELECT *, row_number() OVER () AS seq FROM batch) b"
    " ON (b.scope = 'device:' || p.device_id OR b.scope = 'fleet'"
    "     OR (starts_with(b.scope, 'cohort:') AND list_contains(p.cohorts, substr(b.scope, 8))))"
    " AND b.valid_from <= p.ts AND (b.valid_to IS NULL OR p.ts < b.valid_to) AND list_contains($names, b.name)"
    ") WHERE rk = 1"
)
_PART = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_ATTEMPTS = 3  # a query a compaction raced (a listed file deleted) lists the files again this many times


class DatasetError(Exception):
    """A dataset cannot be made or read; the message says which input and why."""


# --- export: capture JSON lines -> Parquet partitions ------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    cohorts: tuple[str, ...]  # every cohort the device is in (empty: none)
    hardware_class: str = ""


@dataclass
class ExportReport:
    batches: int = 0  # capture batches exported in this call
    samples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> lines not exported
    files: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _sample_row(device_id: str, rec: Any, hardware_class: str) -> dict[str, Any]:
    """One captured sample as a row; raises ValueError (the reason) when the line is unusable."""
    if not isinstance(rec, dict):
        raise ValueError("not an object")
    model, ts = rec.get("model"), rec.get("ts")
    if not isinstance(model, str) or not _PART.match(model):
        raise ValueError("bad model name")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not np.isfinite(ts):
        raise ValueError("bad ts")
    sid, version = rec.get("id"), rec.get("version")
    if not isinstance(sid, int) or isinstance(sid, bool) or not isinstance(version, int) or isinstance(version, bool):
        raise ValueError("bad id or version")
    try:
        inputs = np.asarray(rec.get("inputs"), dtype=np.float32).ravel()
    except (TypeError, ValueError):
        raise ValueError("inputs are not numbers") from None
    if inputs.size == 0:
        raise ValueError("no inputs")
    raw = None
    if rec.get("raw") is not None:
        try:
            raw = np.asarray(rec["raw"], dtype=np.float32).ravel()
        except (TypeError, ValueError):
            raise ValueError("raw inputs are not numbers") from None

    spool = rec.get("spool", "")
    if not isinstance(spool, str) or len(spool) > 64:
        raise ValueError("bad spool id")

    def opt_int(v: Any) -> int | None:
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    return {
        "model": model,
        "device_id": device_id,
        "sample_id": sid,
        "spool": spool,
        "ts": float(ts),
        "version": version,
        "role": str(rec.get("role", "")),
        "inputs": inputs,
        "raw": raw,
        "prediction": opt_int(rec.get("prediction")),
        "label": opt_int(rec.get("label")),
        "prediction_id": str(rec.get("prediction_id") or ""),
        "hardware_class": hardware_class,
    }


def _write_parquet(table: pa.Table, path: Path) -> None:
    """Write ``path`` whole or not at all. The temporary name is this writer's own: two exports at once (an old
    leader's tick finishing under a new leader's) must not rename each other's file away."""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        pq.write_table(table, tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_captures(capture_dir: Path, root: Path, devices: dict[str, DeviceInfo]) -> ExportReport:
    """Write every capture batch not yet exported as Parquet partitions (model, cohort, day)."""
    report = ExportReport()
    if not capture_dir.is_dir():
        return report
    for device_dir in sorted(p for p in capture_dir.iterdir() if p.is_dir()):
        device_id = device_dir.name
        info = devices.get(device_id, DeviceInfo(()))
        for batch in sorted(device_dir.glob("*.jsonl")):
            marker = root / "samples" / "_exported" / device_id / f"{batch.stem}.json"
            if marker.exists():
                continue
            groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
            for line in batch.read_bytes().splitlines():
                try:
                    row = _sample_row(device_id, json.loads(line), info.hardware_class)
                except (ValueError, UnicodeDecodeError) as exc:
                    report.skip(str(exc) if not isinstance(exc, json.JSONDecodeError) else "not JSON")
                    continue
                for cohort in info.cohorts or (NO_COHORT,):
                    groups.setdefault((row["model"], cohort, utc_day(row["ts"])), []).append(row)
                report.samples += 1
            written = []
            for (model, cohort, day), rows in sorted(groups.items()):
                path = (
                    root / "samples" / f"model={model}" / f"cohort={cohort}" / f"day={day}" / f"{device_id}-{batch.stem}.parquet"
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                table = pa.Table.from_pylist([{k: r[k] for k in SAMPLE_SCHEMA.names} for r in rows], schema=SAMPLE_SCHEMA)
                _write_parquet(table, path)
                written.append(str(path.relative_to(root)))
            atomic_write_bytes(marker, canonical_json({"files": written, "batch": batch.name}))
            report.batches += 1
            report.files.extend(written)
    return report


# --- snapshots ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """Which samples make a dataset."""

    model: str
    since: float = 0.0  # unix seconds, inclusive
    until: float = float("inf")  # unix seconds, exclusive
    cohorts: tuple[str, ...] = ()  # empty: every cohort
    batch_features: tuple[str, ...] = ()  # names joined point in time

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "since": self.since,
            "until": None if self.until == float("inf") else self.until,
            "cohorts": sorted(self.cohorts),
            "batch_features": list(self.batch_features),
        }


@dataclass(frozen=True)
class Dataset:
    """One immutable snapshot, loaded: rows in (device, sample id, spool) order."""

    sha256: str
    path: Path  # the snapshot's folder
    query: Query
    device_id: np.ndarray  # str
    sample_id: np.ndarray  # int64
    spool: np.ndarray  # str: the agent's spool id ("" before spool ids); a sample is (device, spool, sample id)
    ts: np.ndarray  # float64
    version: np.ndarray  # int64
    hardware_class: np.ndarray  # str
    cohorts: list[list[str]]
    inputs: list[np.ndarray]  # model inputs as captured, per row (float32, flat)
    raw: list[np.ndarray | None]  # raw inputs per row (float32, flat); None: only model inputs were captured
    label: np.ndarray  # int64, -1: no label
    batch: dict[str, np.ndarray]  # batch feature name -> float64 per row (nan: none in force)

    def __len__(self) -> int:
        return len(self.sample_id)

    @property
    def labelled(self) -> np.ndarray:
        return self.label >= 0

    def in_cohort(self, cohort: str) -> np.ndarray:
        return np.array([cohort in c for c in self.cohorts], dtype=bool)

    def holdout_mask(self, share: float = 0.2) -> np.ndarray:
        """A stable split keyed by content: a row is held out by the hash of its raw input (its model inputs when
        no raw was captured), whatever else is in the dataset. One input is on one side only, however many times
        it was captured (a prediction sampled and captured again with its label, a frame seen twice), so the
        held-out rows never hold an input the candidate was trained on."""
        keys = [content_key(r if r is not None else x) for r, x in zip(self.raw, self.inputs, strict=True)]
        return np.array([int.from_bytes(k[:4], "big") / 2**32 < share for k in keys], dtype=bool)


def content_key(values: np.ndarray) -> bytes:
    """The sha256 of a flat float32 input (-0.0 counted as 0.0): equal inputs, equal keys."""
    return hashlib.sha256((np.asarray(values, dtype=np.float32).ravel() + np.float32(0.0)).tobytes()).digest()


def labels_table(rows: Iterable[tuple[str, str, int]]) -> pa.Table:
    items = list(rows)
    d, p, lab = zip(*items, strict=True) if items else ((), (), ())
    return pa.table({"device_id": list(d), "prediction_id": list(p), "label": list(lab)}, schema=LABEL_SCHEMA)


def batch_table(values: Iterable[BatchFeatureValue]) -> pa.Table:
    """Batch feature values (``shared.features``) as the table snapshots join, times in unix seconds, in order."""
    rows = [v.to_wire() for v in values]
    return pa.table({k: [r[k] for r in rows] for k in BATCH_SCHEMA.names}, schema=BATCH_SCHEMA)


def _content_hash(table: pa.Table, query: Query) -> str:
    h = hashlib.sha256()
    h.update(canonical_json(query.to_dict()))
    for name in table.column_names:
        h.update(name.encode() + b"\0")
        col = table.column(name).combine_chunks()
        if pa.types.is_list(col.type):
            h.update(np.asarray(col.value_lengths().fill_null(0), dtype=np.int64).tobytes())
            col = col.flatten()
            if pa.types.is_list(col.type):  # cohorts: list of strings
                col = col.flatten()
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            for v in col.to_pylist():
                h.update(("\x01" if v is None else v).encode() + b"\0")
        else:
            arr = col.to_numpy(zero_copy_only=False)
            h.update(np.ascontiguousarray(arr).tobytes())
            h.update(np.asarray(col.is_null(), dtype=bool).tobytes())
    return h.hexdigest()


def _retrying(run: Callable[[], T]) -> T:
    """``run()`` again when a file it listed was deleted under it (a compaction retired it): the new listing has the
    merged file instead."""
    for attempt in range(_ATTEMPTS):
        try:
            return run()
        except duckdb.IOException as exc:
            if attempt == _ATTEMPTS - 1 or ("No files found" not in str(exc) and "No such file" not in str(exc)):
                raise
            log.info("sample files changed under a query (compaction); reading again: %s", str(exc).splitlines()[0])
    raise AssertionError("unreachable")


def _snapshot_table(root: Path, query: Query, labels: pa.Table, batch: pa.Table) -> pa.Table:
    return _retrying(lambda: _snapshot_table_once(root, query, labels, batch))


def _snapshot_table_once(root: Path, query: Query, labels: pa.Table, batch: pa.Table) -> pa.Table:
    files = partitions.live_files(root, query.model)
    if not files:
        where = root / "samples" / f"model={query.model}"
        raise DatasetError(f"no captured samples of model {query.model!r} under {where}; export captures first")
    con = duckdb.connect()
    try:
        con.register("labels", labels)
        con.register("batch", batch)
        params: dict[str, Any] = {
            "files": [str(p) for p in files],
            "since": query.since,
            "until": query.until,
            "cohorts": list(query.cohorts),
        }
        con.execute(_PICK, params)
        select = [
            "p.device_id",
            "p.sample_id",
            "p.spool",
            "p.ts",
            "p.version",
            "p.hardware_class",
            "p.cohorts",
            "p.inputs",
            "p.raw",
            "coalesce(l.label, p.device_label, -1)::BIGINT AS label",
        ]
        joins = [
            "LEFT JOIN (SELECT device_id, prediction_id, any_value(label) AS label FROM labels GROUP BY ALL) l "
            "ON l.device_id = p.device_id AND l.prediction_id = p.prediction_id AND p.prediction_id <> ''"
        ]
        if query.batch_features:
            con.execute(_IN_FORCE, {"names": list(query.batch_features)})
        for i, name in enumerate(query.batch_features):
            b = f"b{i}"
            con.execute(
                f"CREATE TEMP TABLE {b} AS SELECT device_id, spool, sample_id, value FROM in_force WHERE name = $n",  # noqa: S608
                {"n": name},
            )
            joins.append(f"LEFT JOIN {b} ON {b}.device_id = p.device_id AND {b}.spool = p.spool AND {b}.sample_id = p.sample_id")
            select.append(f'{b}.value::DOUBLE AS "batch:{name}"')
        # Identifiers are generated here (b0, b1, ...); feature names only appear quoted as column aliases.
        sql = f"SELECT {', '.join(select)} FROM picked p {' '.join(joins)} ORDER BY p.device_id, p.sample_id, p.spool"  # noqa: S608
        table = con.sql(sql).to_arrow_table()
    finally:
        con.close()
    return table


def snapshot(root: Path, query: Query, labels: pa.Table | None = None, batch: pa.Table | None = None) -> Dataset:
    """Make (or find) the immutable snapshot of the samples ``query`` picks, labels and batch features joined."""
    table = _snapshot_table(root, query, labels if labels is not None else labels_table([]), batch or batch_table([]))
    if table.num_rows == 0:
        raise DatasetError(f"the query picks no samples: {query.to_dict()}")
    sha = _content_hash(table, query)
    folder = root / "snapshots" / sha
    data = folder / "data.parquet"
    if not data.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _write_parquet(table, data)
        meta = {"sha256": sha, "rows": table.num_rows, "query": query.to_dict(), "columns": table.column_names}
        atomic_write_bytes(folder / "meta.json", canonical_json(meta))
    return load(root, sha)


def load(root: Path, sha256: str) -> Dataset:
    """A snapshot by its hash; refused when its content no longer has that hash."""
    folder = root / "snapshots" / sha256
    try:
        meta = json.loads((folder / "meta.json").read_bytes())
        table = pq.read_table(folder / "data.parquet")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"dataset {sha256[:12]}: cannot read {folder}: {exc}") from None
    q = meta["query"]
    query = Query(
        model=q["model"],
        since=q["since"],
        until=float("inf") if q["until"] is None else q["until"],
        cohorts=tuple(q["cohorts"]),
        batch_features=tuple(q["batch_features"]),
    )
    if _content_hash(table, query) != sha256:
        raise DatasetError(f"dataset {sha256[:12]}: content does not match its hash; the snapshot was altered")
    cols = table.to_pydict()
    return Dataset(
        sha256=sha256,
        path=folder,
        query=query,
        device_id=np.array(cols["device_id"], dtype=object),
        sample_id=np.array(cols["sample_id"], dtype=np.int64),
        spool=np.array(cols.get("spool") or [""] * table.num_rows, dtype=object),  # snapshots made before spool ids
        ts=np.array(cols["ts"], dtype=np.float64),
        version=np.array(cols["version"], dtype=np.int64),
        hardware_class=np.array(cols["hardware_class"], dtype=object),
        cohorts=[list(c) for c in cols["cohorts"]],
        inputs=[np.asarray(v, dtype=np.float32) for v in cols["inputs"]],
        raw=[None if v is None else np.asarray(v, dtype=np.float32) for v in cols["raw"]],
        label=np.array(cols["label"], dtype=np.int64),
        batch={
            n: np.array([np.nan if v is None else v for v in cols[f"batch:{n}"]], dtype=np.float64) for n in query.batch_features
        },
    )


def sql(root: Path, statement: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Ad-hoc DuckDB over the sample partitions: ``samples`` is a view of every exported sample."""
    return _retrying(lambda: _sql_once(root, statement, params))


def _sql_once(root: Path, statement: str, params: Sequence[Any] | dict[str, Any] | None) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    try:
        files = partitions.live_files(root)
        # No files: the glob, so the error says what it always said (no files found).
        listed = (
            "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in files) + "]"
            if files
            else "'" + str(root / "samples" / "model=*" / "**" / "*.parquet").replace("'", "''") + "'"
        )
        con.execute(
            f"CREATE VIEW samples AS SELECT * FROM read_parquet({listed}, hive_partitioning = true, "  # noqa: S608
            "hive_types = {'model': VARCHAR, 'cohort': VARCHAR, 'day': VARCHAR}, union_by_name = true)"
        )
        return con.execute(statement, params).fetchall()
    finally:
        con.close()
