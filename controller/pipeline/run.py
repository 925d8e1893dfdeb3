"""One pipeline run, step by step: snapshot → quality gate → train → int8 → evaluate → bless → bundle.

:func:`execute` needs no database: it reads the Parquet partitions, the labels
and batch features handed to it and the incumbent's bundle, and returns a
:class:`RunResult` (with the bundle bytes when blessed). Registration is the
caller's (``controller.pipeline.register``), so the same step runs in the
controller's process or in a Kubernetes Job (``python -m controller.pipeline.step``).
Each step reports progress through ``progress``; the first step that refuses
ends the run with its reasons.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from controller import __version__
from controller.monitoring.estimate import reference_confidence
from controller.pipeline import datasets, evaluate, gate
from controller.pipeline.evaluate import BlessRules
from controller.pipeline.train import TrainParams
from shared import bundle as bundle_fmt
from shared.features import FeatureSpec

Progress = Callable[[str], None]
FEATURE_BINS = 8  # bins per input feature in the drift reference
REPRESENTATIVE_ROWS = 300  # calibration rows for int8
REFERENCE_MIN_ROWS = 200  # training rows the drift reference wants (``reference_rows``, ADR 0079)


@dataclass(frozen=True)
class RunSpec:
    """What a run needs besides data; JSON-able (a Kubernetes Job receives it as a file)."""

    model: str
    version: int  # the version the candidate will be registered as
    parent_version: int | None  # the incumbent
    n_classes: int
    cohort: str | None = None  # the cohort whose trigger started the run
    trigger: dict[str, Any] = field(default_factory=dict)  # kind and evidence
    params: TrainParams = field(default_factory=TrainParams)
    gate: dict[str, Any] = field(default_factory=dict)  # GateRules beyond n_inputs and n_classes
    bless: BlessRules = field(default_factory=BlessRules)
    since: float = 0.0  # samples captured from (unix seconds)
    until: float | None = None  # up to (exclusive); None: everything so far
    recent_s: float = 86400.0  # rows this recent: the "fleet" evaluation set (held out) and the drift reference (trained on)
    reference_min_rows: int = REFERENCE_MIN_ROWS  # training rows the drift reference wants (``reference_rows``)
    drift_since: float | None = None  # a drift-triggered run: the drift was under way from here (unix seconds)
    holdout_share: float = 0.2
    feature_spec: dict[str, Any] | None = None  # None: the incumbent's
    latency_budget_ms: float = 50.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "parent_version": self.parent_version,
            "n_classes": self.n_classes,
            "cohort": self.cohort,
            "trigger": self.trigger,
            "params": self.params.to_dict(),
            "gate": self.gate,
            "bless": self.bless.to_dict(),
            "since": self.since,
            "until": self.until,
            "recent_s": self.recent_s,
            "reference_min_rows": self.reference_min_rows,
            "drift_since": self.drift_since,
            "holdout_share": self.holdout_share,
            "feature_spec": self.feature_spec,
            "latency_budget_ms": self.latency_budget_ms,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        d = dict(d)
        d["params"] = TrainParams.from_dict(d.get("params", {}))
        d["bless"] = BlessRules(**d.get("bless", {}))
        return cls(**d)


@dataclass
class RunResult:
    state: str  # refused | not_blessed | blessed | failed
    reasons: list[str]
    dataset_sha256: str = ""
    gate: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    bundle: bytes | None = None  # the blessed candidate
    onnx_bundle: bytes | None = None  # the same model for ONNX Runtime devices, when the export worked
    steps: list[dict[str, Any]] = field(default_factory=list)  # name, seconds

    def summary(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reasons": self.reasons,
            "dataset_sha256": self.dataset_sha256,
            "gate": self.gate,
            "evaluation": self.evaluation,
            "metrics": self.metrics,
            "lineage": self.lineage,
            "steps": self.steps,
        }


def code_version() -> str:
    """The code that trained: ``EDGEFLEET_CODE_VERSION`` (set in images), else the git commit, else the package version."""
    env = os.environ.get("EDGEFLEET_CODE_VERSION")
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return f"{__version__}+git.{out.stdout.strip()[:12]}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def feature_spec_of(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The feature spec a manifest carries (``features``), or None."""
    spec = manifest.get("features")
    return spec if isinstance(spec, dict) else None


def model_inputs(spec: FeatureSpec, ds: datasets.Dataset, rows: np.ndarray) -> np.ndarray:
    """Model inputs of dataset rows (one per row, flattened): the feature spec run on the raw item with the batch
    features in force when it was captured (the spec's default where none was); a row captured without its raw item
    keeps the model inputs the device computed (right only while the spec is the one that made them: the gate
    reports such rows as ``raw_rows`` short of ``rows``)."""
    out = np.empty((len(rows), math.prod(spec.output_shape)), dtype=np.float32)
    groups: dict[tuple[tuple[str, float], ...], list[int]] = {}
    for k, i in enumerate(rows):
        if ds.raw[i] is None:
            out[k] = ds.inputs[i].reshape(-1)
            continue
        key = tuple((n, float(v[i])) for n, v in sorted(ds.batch.items()) if not np.isnan(v[i]))
        groups.setdefault(key, []).append(k)
    for key, ks in groups.items():  # one transform per distinct set of batch values in force
        raw = np.stack([r for k in ks if (r := ds.raw[rows[k]]) is not None]).reshape((-1, *spec.input.shape))
        out[ks] = spec.transform(raw, dict(key), validate=False).reshape(len(ks), -1)
    return out


@dataclass(frozen=True)
class ReferenceRows:
    """Which training rows the drift reference is built from, and why (the bundle's ``lineage.reference``)."""

    positions: np.ndarray  # indices into the training rows, ascending
    source: str  # "recent" | "newest" | "all"
    cohort: str | None  # rows of this cohort only (the run's trigger cohort)
    reason: str
    since: float | None  # capture time of the first and last of them (unix seconds)
    until: float | None

    def lineage(self, spec: RunSpec) -> dict[str, Any]:
        return {
            "source": self.source,
            "cohort": self.cohort,
            "rows": len(self.positions),
            "since": self.since,
            "until": self.until,
            "recent_s": spec.recent_s,
            "drift_since": spec.drift_since,
            "min_rows": spec.reference_min_rows,
            "reason": self.reason,
        }


def reference_rows(
    ts: np.ndarray,
    recent: float,
    min_rows: int,
    *,
    drift_since: float | None = None,
    cohort: str | None = None,
    members: np.ndarray | None = None,
) -> ReferenceRows:
    """The training rows (capture times ``ts``) the drift reference describes: the world the model goes to.

    Candidates are the rows captured since ``recent`` (the run's ``recent_s`` before its decision) and, for a run
    triggered by a cohort, in that cohort (``members``, a mask over the rows: the cohort the model is rolled out to
    and whose slice it was blessed on). Of those, the rows captured since ``drift_since`` (a drift-triggered run:
    the drift was under way by then) when at least ``min_rows`` are (``recent``); else the newest ``min_rows``
    (``newest``); with fewer than ``min_rows`` candidates, all training rows (``all``), as the reason says."""
    ts = np.asarray(ts, dtype=np.float64)
    ok = ts >= recent
    where = f"since {recent:.0f}"
    if cohort is not None and members is not None:
        ok &= np.asarray(members, dtype=np.bool_)
        where += f" in cohort {cohort}"
    cand = np.flatnonzero(ok)
    cand = cand[np.argsort(ts[cand], kind="stable")]
    start = recent if drift_since is None else max(recent, drift_since)
    after = cand[ts[cand] >= start]
    if len(after) >= min_rows:
        pos, source = after, "recent"
        reason = f"{len(after)} of {len(ts)} training rows, captured {where}" + (
            f", since the drift at {start:.0f}" if start > recent else ""
        )
    elif len(cand) >= min_rows:
        pos, source = cand[-min_rows:], "newest"
        reason = (
            f"the newest {min_rows} of {len(ts)} training rows captured {where}: only {len(after)} since the drift at {start:.0f}"
        )
    else:
        pos, source = np.arange(len(ts)), "all"
        reason = f"only {len(cand)} training rows captured {where} (at least {min_rows} needed): all {len(ts)} training rows"
    pos = np.sort(pos)
    span = ts[pos]
    first, last = (float(span.min()), float(span.max())) if len(span) else (None, None)
    return ReferenceRows(pos, source, cohort if source != "all" else None, reason, first, last)


def drift_reference(x: np.ndarray, probs: np.ndarray, n_classes: int) -> dict[str, Any]:
    """The bundle's drift reference (input features and predicted classes) from the inputs it describes and the
    model's outputs on them: what monitoring and the retraining policy compare the fleet with."""
    flat = x.reshape(len(x), -1)
    features = []
    for i in range(flat.shape[1]):
        col = flat[:, i]
        lo, hi = float(np.min(col)), float(np.max(col))
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, FEATURE_BINS + 1).tolist()
        features.append({"name": f"px{i}", "bin_edges": edges, "counts": np.histogram(col, bins=edges)[0].tolist()})
    preds = probs.argmax(axis=1)
    return {
        "features": features,
        "predictions": {"classes": list(range(n_classes)), "counts": np.bincount(preds, minlength=n_classes).tolist()},
    }


def execute(
    spec: RunSpec,
    root: Path,
    *,
    labels: pa.Table | None = None,
    batch: pa.Table | None = None,
    incumbent: bytes | None = None,
    progress: Progress = lambda _line: None,
    now: float | None = None,
) -> RunResult:
    from controller.pipeline import quantize, train  # TensorFlow loads here, in the training step only
    from controller.release.bundler import BuildError, BuildSpec, build

    # The run's clock is the decision's (spec.until): the "fleet" set and the snapshot do not move with the wall clock.
    t_now = now if now is not None else spec.until if spec.until is not None else time.time()
    steps: list[dict[str, Any]] = []
    started = time.perf_counter()

    def step(name: str) -> None:
        nonlocal started
        t = time.perf_counter()
        steps.append({"step": name, "seconds": round(t - started, 3)})
        started = t
        progress(f"{name} done ({steps[-1]['seconds']:.1f} s)")

    inc_manifest = bundle_fmt.read(incumbent).manifest.to_dict() if incumbent is not None else None
    spec_dict = spec.feature_spec or (feature_spec_of(inc_manifest) if inc_manifest else None)
    if spec_dict is None:
        return RunResult("refused", ["no feature spec: the incumbent's manifest has none and the run gave none"], steps=steps)
    fspec = FeatureSpec.from_dict(spec_dict)

    progress(f"snapshot of {spec.model} samples")
    query = datasets.Query(
        spec.model,
        since=spec.since,
        until=float("inf") if spec.until is None else spec.until,
        batch_features=tuple(b.name for b in fspec.batch),  # joined point in time: the value in force at capture
    )
    try:
        ds = datasets.snapshot(root, query, labels=labels, batch=batch)
    except datasets.DatasetError as exc:
        return RunResult("refused", [f"dataset: {exc}"], steps=steps)
    step("snapshot")

    rules = gate.GateRules.from_dict({"n_classes": spec.n_classes, **spec.gate})
    verdict = gate.check(ds, fspec, rules)
    step("quality gate")
    res = RunResult("refused", verdict.reasons, ds.sha256, verdict.to_dict(), steps=steps)
    if not verdict.passed:
        progress("quality gate refused: " + "; ".join(verdict.reasons))
        return res

    finite = np.array([bool(np.all(np.isfinite(r if r is not None else x))) for r, x in zip(ds.raw, ds.inputs, strict=True)])
    usable = gate.fits(ds, fspec) & finite & (ds.label >= 0)
    held = ds.holdout_mask(spec.holdout_share)
    train_rows = np.flatnonzero(usable & ~held)
    hold_rows = np.flatnonzero(usable & held)
    fleet_rows = hold_rows[ds.ts[hold_rows] >= t_now - spec.recent_s]
    x_train = model_inputs(fspec, ds, train_rows)
    y_train = ds.label[train_rows]
    progress(f"training on {len(train_rows)} rows ({len(hold_rows)} held out, {len(fleet_rows)} of them recent)")
    model = train.train(x_train, y_train, spec.n_classes, spec.params, progress)
    step("train")

    rng = np.random.default_rng(spec.params.seed)
    calib = x_train[rng.permutation(len(x_train))[:REPRESENTATIVE_ROWS]]
    int8 = quantize.tflite_int8(model, calib)
    float_size = len(quantize.tflite_float(model))
    try:
        onnx_model: bytes | None = quantize.onnx_int8(model, calib)
        onnx_note = "onnx int8 via the dense-stack export and onnxruntime static quantization"
    except quantize.QuantizeError as exc:
        onnx_model, onnx_note = None, f"no ONNX model: {exc}"
    step("quantize")

    x_hold = model_inputs(fspec, ds, hold_rows)
    float_acc = float((train.predict(model, x_hold).argmax(axis=1) == ds.label[hold_rows]).mean()) if len(hold_rows) else None
    probs_train = train.predict(model, x_train)
    members = np.array([spec.cohort in ds.cohorts[i] for i in train_rows], dtype=np.bool_) if spec.cohort else None
    ref_rows = reference_rows(
        ds.ts[train_rows],
        t_now - spec.recent_s,
        spec.reference_min_rows,
        drift_since=spec.drift_since,
        cohort=spec.cohort,
        members=members,
    )
    progress(f"drift reference: {ref_rows.reason}")
    # Confidence calibration (accuracy per confidence bin) is a conditional, not a distribution monitoring compares:
    # it comes from all training rows, the more per bin the better (ADR 0079).
    reference = {
        **drift_reference(x_train[ref_rows.positions], probs_train[ref_rows.positions], spec.n_classes),
        "confidence": reference_confidence(probs_train, y_train),
    }
    lineage = {
        "dataset_sha256": ds.sha256,
        "feature_spec_version": fspec.version,
        "code_version": code_version(),
        "training_params": spec.params.to_dict(),
        "parent_version": spec.parent_version,
        "trigger": spec.trigger,
        "reference": ref_rows.lineage(spec),
        "runtime_targets": {"tflite": "LiteRT, full-integer int8", "onnx": onnx_note},
    }
    draft = BuildSpec(
        name=spec.model,
        version=spec.version,
        label=f"{spec.model} v{spec.version}: retrained on {ds.sha256[:12]} ({spec.trigger.get('kind', 'manual')})",
        golden_inputs=_golden_raw(ds, hold_rows),
        latency_budget_ms=spec.latency_budget_ms,
        features=fspec,
        reference=reference,
        lineage=lineage,
        seed=spec.params.seed,
    )
    try:
        candidate = build(int8, "tflite", draft)
    except BuildError as exc:
        return RunResult("failed", [f"bundle: {exc}"], ds.sha256, verdict.to_dict(), steps=steps)

    def inputs_for(s: FeatureSpec) -> Callable[[np.ndarray], np.ndarray]:
        return lambda rows: model_inputs(s, ds, rows)

    cand_pred = evaluate.runtime_predictor(candidate, inputs_for(fspec))
    inc_pred = None
    if incumbent is not None and inc_manifest is not None:
        inc_spec = feature_spec_of(inc_manifest)
        inc_pred = evaluate.runtime_predictor(incumbent, inputs_for(FeatureSpec.from_dict(inc_spec) if inc_spec else fspec))
    ev = evaluate.evaluate(ds, {"holdout": hold_rows, "fleet": fleet_rows}, cand_pred, inc_pred, spec.bless)
    ev.verdict = evaluate.bless(ev, spec.bless, spec.cohort)
    all_hold = ev.get("holdout", "all")
    metrics: dict[str, Any] = {
        "accuracy_int8": None if all_hold is None else all_hold.candidate,
        "accuracy_float": None if float_acc is None else round(float_acc, 6),
        "incumbent_accuracy": None if all_hold is None else all_hold.incumbent,
        "int8_bytes": len(int8),
        "float_bytes": float_size,
        "int8_size_ratio": round(len(int8) / float_size, 4),
        "train_rows": len(train_rows),
        "holdout_rows": len(hold_rows),
        "fleet_rows": len(fleet_rows),
    }
    ev.extra = {"bless_rules": spec.bless.to_dict(), "metrics": metrics}
    step("evaluate")
    res = RunResult(
        "blessed" if ev.verdict.blessed else "not_blessed",
        ev.verdict.reasons,
        ds.sha256,
        verdict.to_dict(),
        ev.to_dict(),
        metrics,
        steps=steps,
    )
    progress(("blessed: " if ev.verdict.blessed else "not blessed: ") + "; ".join(ev.verdict.reasons))
    if not ev.verdict.blessed:
        return res
    # The evaluation goes into the manifest, so the model carries the evidence it was approved on.
    res.lineage = {**lineage, "metrics": metrics, "evaluation": ev.to_dict()}
    try:
        res.bundle = build(int8, "tflite", _with_lineage(draft, res.lineage))
        if onnx_model is not None:
            res.onnx_bundle = build(onnx_model, "onnx", _with_lineage(draft, res.lineage))
    except BuildError as exc:
        return RunResult("failed", [f"bundle: {exc}"], ds.sha256, verdict.to_dict(), ev.to_dict(), metrics, steps=steps)
    step("bundle")
    return res


def _golden_raw(ds: datasets.Dataset, rows: np.ndarray, count: int = 4) -> np.ndarray | None:
    """Raw items of held-out rows with no batch value in force, for the golden vectors (the device's health check
    joins no batch value either); None: the builder draws them within the spec's ranges."""
    raw = [ds.raw[i] for i in rows if ds.raw[i] is not None and not any(not np.isnan(v[i]) for v in ds.batch.values())]
    return np.stack(raw[:count]) if len(raw) >= count else None  # type: ignore[arg-type]


def _with_lineage(draft: Any, lineage: dict[str, Any]) -> Any:
    from dataclasses import replace

    return replace(draft, lineage=lineage)


def bundle_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
