"""Compaction: what a dataset build costs over many small sample files, and over the files compaction makes of them.

A fleet's capture uploads as the export files them: 5,000 small Parquet files (one per upload, 6 samples each,
64 model inputs and a raw 8x8 item per sample, a third labelled, late labels for another third) over one model,
two cohorts and five days. The dataset build (``datasets.snapshot``'s query: dedupe, late labels joined) runs over
them, then ``compaction.compact`` merges every partition (all days closed), then the same build runs again;
builds alternate uncompacted and compacted copies of the same data so machine load hits both alike.

- ``compaction_query_s_before`` / ``_after``: median dataset-build query time over the small files / the merged ones.
- ``compaction_query_ratio``: after ÷ before (same run).
- ``compaction_files_before`` / ``_after``; ``compaction_s``: the compaction's own time.
- ``compaction_same_hash``: the dataset hash is the same before and after (must be true).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FILES = 5000
PER_FILE = 6
T0 = 1_790_000_000.0
REPEATS = 3


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fleet(root: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from controller.pipeline import datasets

    rng = np.random.default_rng(0)
    late = []
    for f in range(FILES):
        device = f"dev{f % 500:04d}"
        cohort = "north" if f % 2 else "south"
        day_ts = T0 + (f % 5) * 86400.0
        rows = []
        for k in range(PER_FILE):
            sid = f * PER_FILE + k
            raw = rng.integers(0, 17, 64).astype(np.float32)
            rows.append({
                "device_id": device, "sample_id": sid, "spool": "s1", "ts": day_ts + sid % 80000, "version": 1,
                "role": "production", "inputs": (raw / 16).tolist(), "raw": raw.tolist(), "prediction": int(sid % 10),
                "label": int(sid % 10) if sid % 3 == 0 else None, "prediction_id": f"p{sid}", "hardware_class": "pi4",
            })  # fmt: skip
            if sid % 3 == 1:
                late.append((device, f"p{sid}", int(sid % 7)))
        folder = root / "samples" / "model=digits" / f"cohort={cohort}" / f"day={datasets.utc_day(day_ts)}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=datasets.SAMPLE_SCHEMA), folder / f"{device}-{f:06d}.parquet")
    return datasets.labels_table(late)


def _build_s(root: Path, labels: Any) -> float:
    from controller.pipeline import datasets

    t0 = time.perf_counter()
    datasets._snapshot_table(root, datasets.Query("digits"), labels, datasets.batch_table([]))
    return time.perf_counter() - t0


def run() -> dict[str, Any]:
    from controller.pipeline import compaction, datasets, partitions

    with tempfile.TemporaryDirectory(prefix="bench-compaction-") as tmp:
        small, merged = Path(tmp) / "small", Path(tmp) / "merged"
        _log(f"writing {FILES} small sample files")
        labels = _fleet(small)
        shutil.copytree(small, merged)
        files_before = len(partitions.live_files(small))
        sha_before = datasets.snapshot(small, datasets.Query("digits"), labels=labels).sha256
        t0 = time.perf_counter()
        rep = compaction.compact(merged, now=T0 + 30 * 86400.0)
        compact_s = time.perf_counter() - t0
        files_after = len(partitions.live_files(merged))
        sha_after = datasets.snapshot(merged, datasets.Query("digits"), labels=labels).sha256
        _log(f"compacted {rep.inputs} files into {rep.outputs} in {compact_s:.1f} s")
        before, after = [], []
        for i in range(REPEATS):
            before.append(_build_s(small, labels))
            after.append(_build_s(merged, labels))
            _log(f"round {i}: {before[-1]:.2f} s over {files_before} files, {after[-1]:.3f} s over {files_after}")
    b, a = statistics.median(before), statistics.median(after)
    return {
        "compaction_files_before": files_before,
        "compaction_files_after": files_after,
        "compaction_query_s_before": round(b, 3),
        "compaction_query_s_after": round(a, 3),
        "compaction_query_ratio": round(a / b, 4),
        "compaction_s": round(compact_s, 2),
        "compaction_same_hash": sha_before == sha_after,
    }
