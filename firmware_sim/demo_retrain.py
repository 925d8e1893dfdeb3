"""The demo's retraining chapter: the controller's own pipeline, watched from its decision to a registered model.

Once the cameras drift, the controller's leader decides by itself to retrain (the policy of
docs/pipeline.md with the demo's short windows, :data:`PIPELINE_SETTINGS`), snapshots the
samples the enrolled devices captured and labelled, trains and quantizes an int8 model,
evaluates it against the model the fleet runs and registers it when the blessing gate
passes. The demo only watches (``GET /v1/pipeline/decisions``, ``/v1/pipeline/runs/{id}``)
and tells what the controller said; a run without a blessed model ends the demo with the
controller's reasons (:class:`PipelineFailed`), never with a model made elsewhere.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx

__all__ = ["PIPELINE_SETTINGS", "PipelineFailed", "PipelineWatch", "capture", "decision_line", "run_report", "run_summary"]

# The retraining policy with windows short enough for a demo (docs/pipeline.md, "Operating it").
PIPELINE_SETTINGS = {
    "EDGEFLEET_PIPELINE_ENABLED": "true",
    "EDGEFLEET_PIPELINE_INTERVAL_S": "5",
    "EDGEFLEET_PIPELINE_WINDOW_S": "10",
    "EDGEFLEET_PIPELINE_DRIFT_WINDOWS": "2",
    "EDGEFLEET_PIPELINE_MIN_DEVICE_SAMPLES": "20",
    # Drift is this demo's trigger. The accuracy trigger is off (a drop of 100 points): the bad candidate's
    # canary lowers the fleet's measured accuracy for a while and would start a run before any drift.
    "EDGEFLEET_PIPELINE_ACCURACY_DROP": "1.0",
    "EDGEFLEET_PIPELINE_MIN_NEW_LABELS": "0",  # no trigger on label volume
    "EDGEFLEET_PIPELINE_COOLDOWN_S": "3600",  # one run: the fleet keeps drifting from v3's reference until v4 is out
    "EDGEFLEET_PIPELINE_EPOCHS": "15",
    "EDGEFLEET_PIPELINE_RECENT_S": "30",  # the "fleet" evaluation set: held-out samples of the last 30 s (the drifted camera)
    # v4's drift reference: the samples after the first drifted window (ADR 0079), 10-20 s of them; 100 rows will do.
    "EDGEFLEET_PIPELINE_REFERENCE_MIN_ROWS": "100",
    "EDGEFLEET_PIPELINE_AUTO_ROLLOUT": "false",  # the demo starts the canary rollout itself, with its own stages
}
ACTIVE = ("running", "finishing")  # run states before the result is recorded
_CLOCK = re.compile(r"^\d\d:\d\d:\d\d ")  # the time a progress line starts with


def capture(devices: int) -> dict[str, Any]:
    """The agents' [capture] table: every labelled prediction is captured (the agent always offers those) and a
    quarter of the others, uploaded signed with the device's key; a day's budget that outlasts the demo.

    Each upload becomes one Parquet file the policy's queries open on every tick: a bigger fleet uploads less
    often (3 s for 15 devices or fewer, up to 10 s from 50), so the files grow by at most ~5 a second."""
    interval = min(10.0, max(3.0, devices / 5))
    return {"enabled": True, "rate": 0.25, "upload_interval_s": interval, "max_bytes_per_day": 64 * 1024 * 1024}


class PipelineFailed(RuntimeError):
    """The pipeline decided nothing or made no blessed model; the message carries the controller's reasons."""


def decision_line(d: dict[str, Any]) -> str:
    """One retrain decision as the controller recorded it, with its run."""
    return f"the controller decided (decision {d['id']}, cohort {d['cohort']}): {d['reason']}; pipeline run {d['run_id']}"


def _pct(v: Any) -> str:
    return f"{float(v):.1%}" if isinstance(v, (int, float)) else "n/a"


def _slice(evaluation: dict[str, Any], set_: str, name: str = "all") -> dict[str, Any] | None:
    return next((s for s in evaluation.get("slices", []) if s.get("set") == set_ and s.get("slice") == name), None)


def run_report(run: dict[str, Any]) -> list[str]:
    """What a finished run says: the dataset, int8 accuracy against the incumbent and the gate's verdict.

    Raises :class:`PipelineFailed` with the controller's reasons when the run registered no model.
    """
    result = run.get("result") or {}
    gate = (result.get("gate") or {}).get("stats") or {}
    m = result.get("metrics") or {}
    ev = result.get("evaluation") or {}
    sha = str(run.get("dataset_sha256") or "")[:12] or "(none)"
    data = (
        f"dataset {sha}: {gate.get('rows', '?')} captured samples, {gate.get('labelled', '?')} labelled, "
        f"{gate.get('raw_rows', '?')} with the sensor's raw frame"
    )
    state, why = run.get("state"), run.get("reason") or "no reason given"
    if state == "refused":
        raise PipelineFailed(f"pipeline run {run['id']}: the quality gate refused the {data}: {why}")
    if state == "not_blessed":
        raise PipelineFailed(
            f"pipeline run {run['id']}: the int8 candidate was not blessed (int8 {_pct(m.get('accuracy_int8'))} vs the "
            f"incumbent's {_pct(m.get('incumbent_accuracy'))} held out): {why}"
        )
    if state not in ("registered", "approved", "rolled_out"):
        raise PipelineFailed(f"pipeline run {run['id']} ended {state}: {why}")
    fleet = _slice(ev, "fleet")
    now = (
        f"; on what the fleet sees now ({fleet['n']} recent samples) {_pct(fleet['candidate'])} vs {_pct(fleet['incumbent'])}"
        if fleet
        else ""
    )
    verdict = ev.get("verdict") or {}
    return [
        f"{data}; trained on {m.get('train_rows', '?')}, {m.get('holdout_rows', '?')} held out",
        f"int8 accuracy {_pct(m.get('accuracy_int8'))} (float {_pct(m.get('accuracy_float'))}) vs the incumbent "
        f"v{run.get('parent_version')}'s {_pct(m.get('incumbent_accuracy'))} on the held-out samples{now}",
        f"blessing gate: {'blessed' if verdict.get('blessed') else 'not blessed'} — {'; '.join(verdict.get('reasons', []))}",
        f"registered {run.get('model')} v{run.get('version')} (int8 TFLite, {_size(m)}), waiting for an approver",
    ]


def run_summary(run: dict[str, Any]) -> str:
    """One line for the demo's summary: the dataset, int8 against the incumbent, the gate's verdict (a registered run)."""
    result = run.get("result") or {}
    gate = (result.get("gate") or {}).get("stats") or {}
    m, ev = result.get("metrics") or {}, result.get("evaluation") or {}
    fleet = _slice(ev, "fleet")
    now = f", {_pct(fleet['candidate'])} vs {_pct(fleet['incumbent'])} on what the fleet sees now" if fleet else ""
    blessed = "blessed" if (ev.get("verdict") or {}).get("blessed") else "not blessed"
    return (
        f"dataset {str(run.get('dataset_sha256'))[:12]} of {gate.get('rows', '?')} captured samples "
        f"({gate.get('labelled', '?')} labelled); int8 {_pct(m.get('accuracy_int8'))} vs v{run.get('parent_version')}'s "
        f"{_pct(m.get('incumbent_accuracy'))} held out{now}; {blessed}, registered as v{run.get('version')}"
    )


def _size(m: dict[str, Any]) -> str:
    n, ratio = m.get("int8_bytes"), m.get("int8_size_ratio")
    return f"{n / 1024:.0f} KiB, {ratio:.2f} of the float model" if isinstance(n, int) and isinstance(ratio, float) else "int8"


class PipelineWatch:
    """Reads what the controller's pipeline decides and does (never starts or changes anything)."""

    def __init__(self, api: Callable[[], httpx.Client], say: Callable[[str], None], model: str) -> None:
        self.api, self.say, self.model = api, say, model

    def _get(self, path: str, **params: Any) -> Any:
        with self.api() as api:
            r = api.get(path, params=params, timeout=60)
        if r.status_code >= 400:
            raise RuntimeError(f"GET {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def decisions(self) -> list[dict[str, Any]]:
        return list(self._get("/v1/pipeline/decisions", model=self.model, limit=50))

    def retrain_decision(self, since: float, timeout: float) -> dict[str, Any]:
        """The first decision to retrain at or after ``since``; PipelineFailed when one came before it or none comes."""
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        while True:
            try:
                found = self.decisions()
            except (httpx.HTTPError, RuntimeError):  # a busy controller: ask again within the deadline
                found = []
            early = [d for d in found if d["decision"] == "retrain" and d["at"] < since]
            if early:
                raise PipelineFailed(f"the pipeline retrained before the drift was injected: {early[-1]['reason']}")
            for d in reversed(found):  # oldest first: the story in order, up to the decision to retrain
                if d["decision"] == "retrain":
                    return dict(d)
                if d["id"] not in seen:
                    seen.add(d["id"])
                    self.say(f"pipeline decision: {d['decision']} — {d['reason']}")
            if time.monotonic() > deadline:
                last = found[0]["reason"] if found else "no decision recorded"
                raise PipelineFailed(f"no decision to retrain within {timeout:.0f} s of the drift; the latest: {last}")
            time.sleep(2.0)

    def follow(self, run_id: int, timeout: float) -> dict[str, Any]:
        """Tell the run's progress lines as they come; the run once its result is recorded."""
        deadline = time.monotonic() + timeout
        told = 0
        while True:
            try:
                run = dict(self._get(f"/v1/pipeline/runs/{run_id}"))
            except (httpx.HTTPError, RuntimeError):
                run = {}
            lines = run.get("progress", [])
            for line in lines[told:] if len(lines) >= told else lines:
                self.say(f"run {run_id}: {_CLOCK.sub('', line)}")  # the demo's own clock is on every line
            told = len(lines)
            if run and run["state"] not in ACTIVE:
                return run
            if time.monotonic() > deadline:
                raise PipelineFailed(f"pipeline run {run_id} has no result after {timeout:.0f} s (state {run.get('state')})")
            time.sleep(1.0)

    def evidence(self, version: int) -> dict[str, Any]:
        """What an approver sees for the version (``GET /v1/approvals``): the pipeline's evaluation."""
        for a in self._get("/v1/approvals"):
            if a["name"] == self.model and a["version"] == version:
                return dict(a.get("evidence") or {})
        raise PipelineFailed(f"{self.model} v{version} is not waiting for approval")
