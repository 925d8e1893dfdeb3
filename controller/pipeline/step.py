"""A run's folder: what the controller hands a runner, and what the runner hands back.

``{data_dir}/pipeline/runs/<id>/``::

    spec.json          RunSpec (controller.pipeline.run)
    labels.parquet     labels stored by the controller, by (device, prediction id)
    batch.parquet      batch feature values with their validity (point-in-time join)
    incumbent.bundle   the model to beat (absent for a model's first run)
    result.json        written last, atomically: the run is finished when it exists
    candidate.bundle   the blessed int8 TFLite bundle (blessed runs)
    candidate-onnx.bundle  the same model for ONNX Runtime devices (when the export worked)
    progress.log       one line per step while it runs

The in-process runner calls :func:`run_folder` in a thread; a Kubernetes Job runs
``python -m controller.pipeline.step RUN_DIR DATASETS_ROOT`` with both folders on a
shared volume. Either way the leader's job registers what ``result.json`` says.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shared.canonical import canonical_json
from shared.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)
RESULT = "result.json"
PROGRESS = "progress.log"  # one line per step, appended as the run goes
CANDIDATE = "candidate.bundle"
CANDIDATE_ONNX = "candidate-onnx.bundle"


def prepare(folder: Path, spec: dict[str, Any], labels: pa.Table, batch: pa.Table, incumbent: bytes | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(labels, folder / "labels.parquet")
    pq.write_table(batch, folder / "batch.parquet")
    if incumbent is not None:
        atomic_write_bytes(folder / "incumbent.bundle", incumbent)
    atomic_write_bytes(folder / "spec.json", canonical_json(spec))


def progress_lines(folder: Path, last: int = 50) -> list[str]:
    try:
        return (folder / PROGRESS).read_text().splitlines()[-last:]
    except OSError:
        return []


def read_result(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / RESULT).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"state": "failed", "reasons": [f"unreadable {RESULT}: {exc}"]}
    return data if isinstance(data, dict) else {"state": "failed", "reasons": [f"{RESULT} is not an object"]}


def run_folder(folder: Path, datasets_root: Path, progress: Callable[[str], None] = lambda _l: None) -> dict[str, Any]:
    """Execute the run described in ``folder`` and write its result there; never raises."""
    from controller.pipeline import tracking
    from controller.pipeline.run import RunSpec, execute

    def report(line: str) -> None:
        with (folder / PROGRESS).open("a") as f:
            f.write(f"{time.strftime('%H:%M:%S', time.gmtime())} {line}\n")
        progress(line)

    try:
        spec = RunSpec.from_dict(json.loads((folder / "spec.json").read_bytes()))
        inc = folder / "incumbent.bundle"
        res = execute(
            spec,
            datasets_root,
            labels=pq.read_table(folder / "labels.parquet"),
            batch=pq.read_table(folder / "batch.parquet"),
            incumbent=inc.read_bytes() if inc.exists() else None,
            progress=report,
        )
        if res.bundle is not None:
            atomic_write_bytes(folder / CANDIDATE, res.bundle)
        if res.onnx_bundle is not None:
            atomic_write_bytes(folder / CANDIDATE_ONNX, res.onnx_bundle)
        summary = res.summary()
        summary["tracking"] = tracking.log_run(spec, res, folder, report)
    except Exception as exc:  # a run that crashes ends as a failed run with the reason, never a half state
        log.exception("pipeline run in %s failed", folder)
        summary = {"state": "failed", "reasons": [f"{type(exc).__name__}: {exc}"], "traceback": traceback.format_exc()[-4000:]}
    atomic_write_bytes(folder / RESULT, canonical_json(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m controller.pipeline.step RUN_DIR DATASETS_ROOT", file=sys.stderr)
        return 2
    summary = run_folder(Path(args[0]), Path(args[1]), lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps({"state": summary["state"], "reasons": summary.get("reasons", [])}))
    return 0 if summary["state"] != "failed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
