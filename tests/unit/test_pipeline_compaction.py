"""Compaction of the sample Parquet files (ADR 0081), on real Parquet files read by DuckDB: the same rows, the same
dataset hashes and every row exactly once for readers at every step, crashes included."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from controller.pipeline import compaction, demo, partitions
from controller.pipeline import datasets as dsets

pytestmark = pytest.mark.unit
DAY = 86400.0
T0 = 1_790_000_000.0  # 2026-09-21
LATER = T0 + 10 * DAY  # every partition of the fleet below is closed by then
BATCH = 5  # samples per capture batch: many small files


def write_batch(capture: Path, device: str, rows: list[dict], first: int, spool: str = "") -> None:
    folder = capture / device
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{first:012d}-{first + len(rows) - 1:012d}.jsonl"
    lines = [json.dumps({"id": first + i, "spool": spool, **r}, separators=(",", ":")) for i, r in enumerate(rows)]
    (folder / (f"{spool}-{name}" if spool else name)).write_text("\n".join(lines) + "\n")


def sample(x: np.ndarray, ts: float, label: int | None, pid: str) -> dict:
    raw = np.asarray(x, dtype=np.float64)
    return {"ts": ts, "role": "production", "model": "digits", "version": 1, "inputs": np.clip(raw / 16, 0, 1).tolist(),
            "raw": raw.tolist(), "prediction": 0, "label": label, "prediction_id": pid}  # fmt: skip


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Path, pa.Table]:
    """Three devices over three days in small batches; a device in two cohorts; predictions captured again with their
    label (and a batch sent again under a fresh spool id); late labels; one file exported before spool ids."""
    x, y = demo.load_raw()
    capture, root = tmp_path / "capture", tmp_path / "datasets"
    for d, dev in enumerate(("d1", "d2", "d3")):
        rows = [sample(x[i], T0 + i * 900.0, int(y[i]) if i % 3 == 0 else None, f"p{dev}-{i}") for i in range(d, 240, 3)]
        for k in range(0, len(rows), BATCH):
            write_batch(capture, dev, rows[k : k + BATCH], first=k + 1, spool="s1")
        again = [dict(r, label=int(y[int(r["prediction_id"].split("-")[1])])) for r in rows[:10]]
        write_batch(capture, dev, again, first=1, spool="s2")  # labelled copies under another spool
    devices = {
        "d1": dsets.DeviceInfo(("north",), "pi4"),
        "d2": dsets.DeviceInfo(("north", "south"), "pi5"),
        "d3": dsets.DeviceInfo((), "jetson"),
    }
    dsets.export_captures(capture, root, devices)
    # A file exported before spool ids: no spool column (DuckDB reads it as null through union_by_name).
    old = root / "samples" / "model=digits" / "cohort=north" / f"day={dsets.utc_day(T0)}" / "d9-old.parquet"
    cols = [n for n in dsets.SAMPLE_SCHEMA.names if n != "spool"]
    row = {"device_id": "d9", "sample_id": 1, "ts": T0 + 5.0, "version": 1, "role": "production", "inputs": [0.5] * 64,
           "raw": [8.0] * 64, "prediction": 1, "label": None, "prediction_id": "old-1", "hardware_class": "pi3"}  # fmt: skip
    pq.write_table(pa.Table.from_pylist([row], schema=pa.schema([dsets.SAMPLE_SCHEMA.field(n) for n in cols])), old)
    late = dsets.labels_table(
        [(f"d{d + 1}", f"pd{d + 1}-{i}", int(y[i])) for d in range(3) for i in range(d, 240, 3) if i % 3 == 1]
    )
    return root, late


def rows(root: Path) -> list[tuple]:
    """Every row a reader sees (each copy), in a fixed order: duplicates and losses both show."""
    return dsets.sql(
        root,
        "SELECT model, cohort, day, device_id, sample_id, coalesce(spool, ''), ts, label, prediction_id, inputs, raw "
        "FROM samples ORDER BY ALL",
    )


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "samples").glob("model=*/**/*.parquet"))


def snapshot_rows(ds: dsets.Dataset) -> list[tuple]:
    return list(zip(ds.device_id, ds.sample_id, ds.spool, ds.ts, ds.label, [c for c in map(tuple, ds.cohorts)], strict=True))


def test_compaction_keeps_every_row_the_dedupe_and_the_hash(fleet) -> None:
    root, late = fleet
    before_files = files(root)
    before = rows(root)
    q = dsets.Query("digits", batch_features=())
    ds0 = dsets.snapshot(root, q, labels=late)
    snap_bytes = (ds0.path / "data.parquet").read_bytes()
    north = dsets.snapshot(root, dsets.Query("digits", cohorts=("north",), since=T0 + DAY), labels=late)

    rep = compaction.compact(root, now=LATER)

    after_files = files(root)
    per_dir: dict[str, int] = {}
    for f in before_files:
        per_dir[str(Path(f).parent)] = per_dir.get(str(Path(f).parent), 0) + 1
    assert len(before_files) > 50 and rep.inputs == sum(n for n in per_dir.values() if n > 1)
    assert sorted(str(Path(f).parent) for f in after_files) == sorted(per_dir)  # one file per partition
    assert rep.outputs == rep.partitions == sum(1 for n in per_dir.values() if n > 1)
    assert all(Path(f).name.startswith("compacted-") for f in after_files if per_dir[str(Path(f).parent)] > 1)
    assert rows(root) == before
    assert rep.rows == sum(1 for r in before if per_dir[f"samples/model={r[0]}/cohort={r[1]}/day={r[2]}"] > 1)
    ds1 = dsets.snapshot(root, q, labels=late)  # the same query after: the same rows, labels joined late included
    assert ds1.sha256 == ds0.sha256 and snapshot_rows(ds1) == snapshot_rows(ds0)
    assert int((ds1.label >= 0).sum()) > 0 and len(ds1) == 3 * 80 + 1
    assert dsets.snapshot(root, dsets.Query("digits", cohorts=("north",), since=T0 + DAY), labels=late).sha256 == north.sha256
    # The snapshot made before compaction is its own copy of the rows: untouched, and it still verifies.
    assert (ds0.path / "data.parquet").read_bytes() == snap_bytes
    assert dsets.load(root, ds0.sha256).sha256 == ds0.sha256
    # Idempotent: nothing is left to do.
    again = compaction.compact(root, now=LATER)
    assert (again.inputs, again.outputs, again.recovered) == (0, 0, 0) and files(root) == after_files


@pytest.mark.parametrize("stop", ["written", "published", "half-retired"])
def test_a_crash_between_steps_leaves_readers_correct_and_the_next_run_finishes(fleet, stop: str) -> None:
    root, late = fleet
    before = rows(root)
    sha = dsets.snapshot(root, dsets.Query("digits"), labels=late).sha256
    merges = compaction.plan(root, LATER)
    assert merges
    for m in merges:  # the crash: every merge stopped at the same step
        compaction.write_merged(m)
        if stop != "written":
            compaction.publish(m)
        if stop == "half-retired":
            for name in m.inputs[: len(m.inputs) // 2]:
                (m.folder / name).unlink()
    # Between the steps, a reader sees every row once: the merged file or its inputs, never both, never neither.
    assert rows(root) == before
    assert dsets.snapshot(root, dsets.Query("digits"), labels=late).sha256 == sha
    leftover = {p.name for m in merges for p in m.folder.iterdir() if p.name.startswith("compacted-")}
    assert any(n.endswith(".json") for n in leftover)

    rep = compaction.compact(root, now=LATER)
    assert rep.recovered == len(merges)
    assert rows(root) == before and dsets.snapshot(root, dsets.Query("digits"), labels=late).sha256 == sha
    names = [p.name for m in merges for p in m.folder.iterdir()]
    assert names and all(n.startswith("compacted-") and n.endswith(".parquet") for n in names)  # no manifest, no input


def test_a_write_that_stopped_before_its_manifest_is_dropped(fleet) -> None:
    root, _ = fleet
    before = rows(root)
    m = compaction.plan(root, LATER)[0]
    m.tmp.write_bytes(b"PAR1 half a file")
    assert rows(root) == before  # a .tmp is not read
    compaction.recover(root)
    assert not m.tmp.exists() and rows(root) == before


def test_only_closed_or_crowded_partitions_are_compacted(fleet) -> None:
    root, _ = fleet
    last_day_end = (T0 // DAY + 3) * DAY  # the fleet's samples span three UTC days
    rules = compaction.Rules(closed_after_s=3600.0, max_open_files=1000)
    assert compaction.plan(root, T0, rules) == []  # the first day is not over
    first = {m.folder.name for m in compaction.plan(root, T0 - T0 % DAY + DAY + 3600.0, rules)}
    assert first == {f"day={dsets.utc_day(T0)}"}
    assert compaction.plan(root, last_day_end + 3599.0, rules) and all(
        m.folder.name != f"day={dsets.utc_day(last_day_end - 1)}" for m in compaction.plan(root, last_day_end + 3599.0, rules)
    )
    crowded = compaction.plan(root, T0, compaction.Rules(max_open_files=3))  # nothing closed, but many small files
    assert crowded and all(len(m.inputs) >= 2 for m in crowded)


def test_merged_files_are_bounded_in_size(fleet) -> None:
    root, _ = fleet
    before = rows(root)
    sizes = [p.stat().st_size for p in (root / "samples").glob("model=*/**/*.parquet")]
    rules = compaction.Rules(target_bytes=4 * max(sizes))
    merges = compaction.plan(root, LATER, rules)
    assert all(sum((m.folder / n).stat().st_size for n in m.inputs) <= rules.target_bytes for m in merges)
    rep = compaction.compact(root, LATER, rules)
    assert rep.outputs > rep.partitions  # some partitions became several files
    assert rows(root) == before


def test_a_file_that_cannot_be_merged_is_left_and_reported(fleet) -> None:
    root, _ = fleet
    folder = root / "samples" / "model=digits" / "cohort=north" / f"day={dsets.utc_day(T0)}"
    t = pq.ParquetFile(next(folder.glob("d1-*.parquet"))).read()
    pq.write_table(t.append_column("extra", pa.array([1] * t.num_rows)), folder / "zz-foreign.parquet")
    before = rows(root)
    rep = compaction.compact(root, now=LATER)
    assert len(rep.refused) == 1 and "extra" in rep.refused[0] and "cohort=north" in rep.refused[0]
    assert (folder / "zz-foreign.parquet").exists() and rows(root) == before
    assert not list(folder.glob("compacted-*"))  # that partition is left as it was


def test_a_second_compaction_at_once_does_nothing(fleet) -> None:
    root, _ = fleet
    with open(root / "samples" / ".compaction.lock", "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        rep = compaction.compact(root, now=LATER)
    assert rep.busy and rep.inputs == 0
    assert compaction.compact(root, now=LATER).inputs > 0


def test_a_query_whose_files_were_retired_under_it_lists_again(fleet) -> None:
    root, _ = fleet
    stale = partitions.live_files(root, "digits")
    expected = rows(root)
    compaction.compact(root, now=LATER)
    glob = [str(p) for p in stale]
    with pytest.raises(duckdb.IOException):
        duckdb.connect().execute("SELECT count(*) FROM read_parquet($f)", {"f": glob}).fetchall()
    listings: list[list[Path]] = [stale]

    def query() -> int:
        fs = listings.pop() if listings else partitions.live_files(root, "digits")
        return int(duckdb.connect().execute("SELECT count(*) FROM read_parquet($f)", {"f": [str(p) for p in fs]}).fetchone()[0])

    assert dsets._retrying(query) == len(expected)


def test_the_same_sample_sent_under_two_spools_has_one_winner_whatever_the_file_order(tmp_path: Path) -> None:
    """A batch sent again under a fresh spool id: two copies alike but for the spool. The winner must not depend on
    the order DuckDB reads the files in (a compaction changes it), or the dataset hash would."""
    x, _ = demo.load_raw()
    capture, root = tmp_path / "capture", tmp_path / "datasets"
    rows_ = [sample(x[i], T0 + i, None, f"p-{i}") for i in range(5)]
    write_batch(capture, "d1", rows_, first=1, spool="zz")
    write_batch(capture, "d1", rows_, first=1, spool="aa")
    dsets.export_captures(capture, root, {"d1": dsets.DeviceInfo(())})
    ds = dsets.snapshot(root, dsets.Query("digits"))
    assert set(ds.spool.tolist()) == {"zz"}
    compaction.compact(root, now=LATER)
    assert dsets.snapshot(root, dsets.Query("digits")).sha256 == ds.sha256
