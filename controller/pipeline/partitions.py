"""Which sample Parquet files a reader reads: every ``*.parquet`` of a partition but the inputs of a compaction
that has already published its merged file (ADR 0081).

A partition folder (``samples/model=M/cohort=C/day=D/``) holds small files, one per exported capture batch
(``<device>-<batch>.parquet``), and merged files (``compacted-<digest>.parquet``). While a compaction is under
way it also holds the merged file's manifest, ``compacted-<digest>.json``, naming the inputs the merged file
replaces. The manifest is written before the merged file is renamed into place and removed after the last input
is deleted, so:

- manifest without its ``.parquet``: the merge was not published; its inputs are live (the manifest is ignored);
- manifest with its ``.parquet``: the inputs it names are replaced, whether or not they are deleted yet.

A reader that lists files with :func:`live_files` therefore sees every row exactly once at every point of a
compaction. A reader that globs ``**/*.parquet`` itself (Spark, Trino) may see a merged file's rows twice until
its inputs are deleted (a moment); the snapshot's dedupe (``datasets.SAMPLE_KEY``) makes that harmless for
datasets, not for a plain ``count(*)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MERGED_PREFIX = "compacted-"
MANIFEST_SUFFIX = ".json"


def partition_dirs(root: Path, model: str | None = None) -> list[Path]:
    """``samples/model=M/cohort=C/day=D`` folders (of one model, or all), sorted."""
    samples = root / "samples"
    models = [samples / f"model={model}"] if model is not None else _subdirs(samples, "model=")
    return [d for m in models for c in _subdirs(m, "cohort=") for d in _subdirs(c, "day=")]


def _subdirs(path: Path, prefix: str) -> list[Path]:
    try:
        with os.scandir(path) as it:
            return sorted(Path(e.path) for e in it if e.name.startswith(prefix) and e.is_dir())
    except FileNotFoundError:
        return []


def replaced(folder: Path, names: set[str]) -> set[str]:
    """The inputs of ``folder``'s published merges: names a manifest lists whose merged file exists."""
    out: set[str] = set()
    for name in names:
        if name.startswith(MERGED_PREFIX) and name.endswith(MANIFEST_SUFFIX):
            merged = name[: -len(MANIFEST_SUFFIX)] + ".parquet"
            if merged not in names:
                continue  # not published: its inputs are the live copy
            try:
                out.update(json.loads((folder / name).read_bytes())["inputs"])
            except FileNotFoundError:
                continue  # removed since the listing: its inputs are gone too
    return out


def live_parquet(folder: Path) -> list[Path]:
    """One partition's files to read, sorted by name."""
    try:
        names = set(os.listdir(folder))
    except FileNotFoundError:
        return []
    gone = replaced(folder, names)
    return [folder / n for n in sorted(names) if n.endswith(".parquet") and n not in gone]


def live_files(root: Path, model: str | None = None) -> list[Path]:
    """Every sample file a reader should read (of one model, or all): each row once, whatever a compaction is doing."""
    return [p for d in partition_dirs(root, model) for p in live_parquet(d)]
