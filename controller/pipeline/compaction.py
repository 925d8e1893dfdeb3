"""Compaction: the small sample files of a partition merged into a few size-bounded files (ADR 0081).

Each exported capture batch is its own small Parquet file (``datasets.export_captures``); DuckDB pays per file
opened, so a fleet's uploads make every query slower. :func:`compact` merges the small files of each partition
that is closed (its day ended ``closed_after_s`` ago) or holds more than ``max_open_files`` small files. One merge,
in steps that each leave readers (``partitions.live_files``) with every row exactly once:

1. :func:`write_merged`: the inputs' rows to ``compacted-<digest>.parquet.tmp`` (fsync), then the manifest
   ``compacted-<digest>.json`` naming the inputs (written atomically). Readers ignore both.
2. :func:`publish`: rename the ``.tmp`` to ``compacted-<digest>.parquet`` (fsync the folder). From here readers
   read the merged file and skip the inputs the manifest names.
3. :func:`retire`: delete the inputs, then the manifest.

A crash anywhere is finished by the next run (:func:`recover`): a manifest whose merged file exists is retired;
one without is dropped with its ``.tmp`` (the inputs were never touched). The digest is of the inputs' names, so
re-planning after a crash picks the same name. Rows are copied as they are (the schema of ``datasets.SAMPLE_SCHEMA``;
a column an old file lacks becomes null, as DuckDB's ``union_by_name`` reads it), so every query, the snapshot's
dedupe and its content hash give the same answer before and after. Snapshots are copies of their rows
(``snapshots/<sha>/data.parquet``) and never name sample files, so compaction cannot touch them.
"""

from __future__ import annotations

import calendar
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from controller.pipeline import partitions
from controller.pipeline.datasets import SAMPLE_SCHEMA
from shared.canonical import canonical_json
from shared.fsutil import atomic_write_bytes, fsync_dir

log = logging.getLogger(__name__)
DAY_S = 86400.0


@dataclass(frozen=True)
class Rules:
    small_bytes: int = 16 << 20  # a file under this is small (merged again with others)
    target_bytes: int = 128 << 20  # a merged file takes inputs up to this many bytes
    max_open_files: int = 256  # an open partition (today's) with more small files than this is compacted too
    closed_after_s: float = 3600.0  # a day's partition is closed this long after the day ended (late uploads)
    max_inputs_per_run: int = 100_000  # a backlog is worked off over several runs (the leader's thread is shared)


@dataclass(frozen=True)
class Merge:
    folder: Path
    inputs: tuple[str, ...]  # file names in ``folder``, sorted

    @property
    def name(self) -> str:
        digest = hashlib.sha256("\0".join(self.inputs).encode()).hexdigest()[:20]
        return f"{partitions.MERGED_PREFIX}{digest}"

    @property
    def merged(self) -> Path:
        return self.folder / f"{self.name}.parquet"

    @property
    def tmp(self) -> Path:
        return self.folder / f"{self.name}.parquet.tmp"

    @property
    def manifest(self) -> Path:
        return self.folder / f"{self.name}{partitions.MANIFEST_SUFFIX}"


@dataclass
class Report:
    partitions: int = 0  # partitions compacted
    inputs: int = 0  # small files merged (and deleted)
    outputs: int = 0  # merged files written
    rows: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    recovered: int = 0  # interrupted merges finished (published) or dropped (not published)
    busy: bool = False  # another compaction holds the lock (an old leader finishing its run); nothing done
    more: bool = False  # merges were left for the next run (budget, or leadership lost)
    refused: list[str] = field(default_factory=list)  # files left as they are, with the reason

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items()}


def _closed(folder: Path, now: float, rules: Rules) -> bool:
    day = folder.name.removeprefix("day=")
    try:
        start = calendar.timegm(time.strptime(day, "%Y-%m-%d"))  # the day's UTC midnight
    except ValueError:
        return False
    return now >= start + DAY_S + rules.closed_after_s


def plan(root: Path, now: float, rules: Rules = Rules()) -> list[Merge]:
    """The merges due: per partition, its small live files in name order, cut into groups of at most
    ``target_bytes``; a group of one file is left alone."""
    merges: list[Merge] = []
    for folder in partitions.partition_dirs(root):
        small: list[tuple[str, int]] = []
        for p in partitions.live_parquet(folder):
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                continue
            if size < rules.small_bytes:
                small.append((p.name, size))
        if len(small) < 2 or not (_closed(folder, now, rules) or len(small) > rules.max_open_files):
            continue
        group: list[str] = []
        total = 0
        for name, size in small:
            if group and total + size > rules.target_bytes:
                if len(group) > 1:
                    merges.append(Merge(folder, tuple(group)))
                group, total = [], 0
            group.append(name)
            total += size
        if len(group) > 1:
            merges.append(Merge(folder, tuple(group)))
    return merges


def _as_sample_table(table: pa.Table, name: str) -> pa.Table:
    extra = [c for c in table.column_names if c not in SAMPLE_SCHEMA.names]
    if extra:
        raise ValueError(f"{name}: columns {extra} are not sample columns")
    cols = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in SAMPLE_SCHEMA
    ]
    return pa.Table.from_arrays(cols, schema=SAMPLE_SCHEMA)


def write_merged(m: Merge) -> int:
    """Step 1: the merged rows under the temporary name (fsynced), then the manifest. Returns the rows written.
    Raises ValueError (nothing published) when an input cannot be merged as it is."""
    tables = []
    for name in m.inputs:
        try:
            tables.append(_as_sample_table(pq.ParquetFile(m.folder / name).read(), name))
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"{name}: cannot be read: {exc}") from None
    table = pa.concat_tables(tables)
    if table.num_rows != sum(t.num_rows for t in tables):
        raise ValueError("row count changed in the merge")
    pq.write_table(table, m.tmp)
    fd = os.open(m.tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    atomic_write_bytes(m.manifest, canonical_json({"inputs": list(m.inputs), "rows": table.num_rows}))
    return int(table.num_rows)


def publish(m: Merge) -> None:
    """Step 2: the merged file takes its name; readers now read it instead of the inputs."""
    os.replace(m.tmp, m.merged)
    fsync_dir(m.folder)


def retire(m: Merge) -> None:
    """Step 3: the replaced inputs go, then the manifest."""
    for name in m.inputs:
        (m.folder / name).unlink(missing_ok=True)
    fsync_dir(m.folder)
    m.manifest.unlink(missing_ok=True)
    fsync_dir(m.folder)


def recover(root: Path) -> int:
    """Finish what a crash interrupted: retire published merges, drop unpublished ones. Returns how many."""
    n = 0
    for folder in partitions.partition_dirs(root):
        try:
            names = set(os.listdir(folder))
        except FileNotFoundError:
            continue
        for name in sorted(names):
            stem = name.removesuffix(partitions.MANIFEST_SUFFIX)
            if name.startswith(partitions.MERGED_PREFIX) and name.endswith(partitions.MANIFEST_SUFFIX):
                inputs = tuple(json.loads((folder / name).read_bytes())["inputs"])
                m = Merge(folder, inputs)
                if f"{stem}.parquet" in names:
                    retire(m)
                else:
                    m.tmp.unlink(missing_ok=True)
                    (folder / name).unlink()
                n += 1
            elif (
                name.startswith(partitions.MERGED_PREFIX)
                and name.endswith(".parquet.tmp")
                and f"{name.removesuffix('.parquet.tmp')}{partitions.MANIFEST_SUFFIX}" not in names
            ):
                (folder / name).unlink(missing_ok=True)  # a write that stopped before its manifest
    return n


def compact(root: Path, now: float | None = None, rules: Rules = Rules(), go_on: Callable[[], bool] = lambda: True) -> Report:
    """Recover, then merge every partition that is due, while ``go_on()``. Idempotent: a second call finds nothing
    to do. One compaction at a time per ``root`` (a lock file): a second one returns at once (``busy``)."""
    t = time.time() if now is None else now
    (root / "samples").mkdir(parents=True, exist_ok=True)
    with open(root / "samples" / ".compaction.lock", "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return Report(busy=True)
        return _compact_locked(root, t, rules, go_on)


def _compact_locked(root: Path, t: float, rules: Rules, go_on: Callable[[], bool]) -> Report:
    report = Report(recovered=recover(root))
    folders: set[Path] = set()
    for m in plan(root, t, rules):
        if (report.inputs and report.inputs + len(m.inputs) > rules.max_inputs_per_run) or not go_on():
            report.more = True
            break
        try:
            sizes = sum((m.folder / n).stat().st_size for n in m.inputs)
            rows = write_merged(m)
        except (ValueError, OSError) as exc:
            m.tmp.unlink(missing_ok=True)  # the manifest is written last: nothing was published or announced
            report.refused.append(f"{m.folder.relative_to(root)}: {exc}")
            continue
        publish(m)
        retire(m)
        folders.add(m.folder)
        report.inputs += len(m.inputs)
        report.outputs += 1
        report.rows += rows
        report.bytes_in += sizes
        report.bytes_out += m.merged.stat().st_size
    report.partitions = len(folders)
    return report
