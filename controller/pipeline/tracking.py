"""Optional: each run logged to an MLflow tracking server (``EDGEFLEET_MLFLOW_TRACKING_URI``).

Parameters (training parameters, dataset hash, feature spec version, trigger),
metrics (int8 and float accuracy, size ratio, per-slice accuracy) and the
candidate bundle as an artifact. Off when the variable is unset; a tracking
server that fails is reported in the run's result, never fails the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.pipeline.run import RunResult, RunSpec

ENV = "EDGEFLEET_MLFLOW_TRACKING_URI"


def log_run(spec: RunSpec, res: RunResult, folder: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    uri = os.environ.get(ENV)
    if not uri:
        return {"mlflow": "off"}
    try:
        import mlflow
    except ImportError as exc:
        return {"mlflow": f"not installed ({exc}); pip install 'edgefleet[mlflow]'"}
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(f"edgefleet-{spec.model}")
        with mlflow.start_run(run_name=f"{spec.model}-v{spec.version}") as active:
            mlflow.log_params(
                {
                    **{f"train.{k}": str(v) for k, v in spec.params.to_dict().items()},
                    "dataset_sha256": res.dataset_sha256,
                    "trigger": spec.trigger.get("kind", "manual"),
                    "cohort": spec.cohort or "",
                    "parent_version": str(spec.parent_version),
                }
            )
            mlflow.set_tags({"edgefleet.state": res.state, "edgefleet.model": spec.model})
            nums = {k: float(v) for k, v in res.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for s in res.evaluation.get("slices", []):
                nums[f"acc.{s['set']}.{s['slice'].replace(':', '.')}"] = float(s["candidate"])
            if nums:
                mlflow.log_metrics(nums)
            mlflow.log_dict(res.summary(), "result.json")
            if (folder / "candidate.bundle").exists():
                mlflow.log_artifact(str(folder / "candidate.bundle"))
            progress(f"logged to MLflow run {active.info.run_id}")
            return {"mlflow": uri, "run_id": active.info.run_id}
    except Exception as exc:  # the tracking server is optional: say why, keep the run
        return {"mlflow": uri, "error": f"{type(exc).__name__}: {exc}"[:500]}
