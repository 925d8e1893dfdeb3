"""Window accumulators: per-role sums of what the models saw and did.

``RoleAccumulator`` turns single inferences into the mergeable role summary of
``shared.telemetry`` (numpy does the binning; the lock only guards the adds).
``WindowBuilder`` holds one accumulator per role plus the agent counters and
hands back the whole window in one atomic ``close()``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.manifest import Manifest
from shared.telemetry import (
    CONFIDENCE_BINS,
    COUNTERS,
    LATENCY_EDGES_MS,
    MAX_CONFUSION_CLASSES,
    N_LATENCY_BUCKETS,
    empty_role_summary,
    latency_bucket,
    summary_shape,
)

log = logging.getLogger(__name__)
_LATENCY_EDGES = np.asarray(LATENCY_EDGES_MS, dtype=np.float64)


def _edges(value: Any) -> np.ndarray | None:
    """Validated, strictly increasing bin edges, or None."""
    if (
        not isinstance(value, list)
        or len(value) < 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return None
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or not np.all(np.diff(arr) > 0):
        return None
    return arr


def _range(value: Any, edges: np.ndarray) -> tuple[float, float]:
    """A feature's valid range from the reference (``"range": [low, high]``), else its bin edges' span."""
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
        and value[0] <= value[1]
    ):
        return float(value[0]), float(value[1])
    return float(edges[0]), float(edges[-1])


@dataclass(frozen=True)
class SummarySpec:
    """What to histogram, read from a manifest's ``reference`` section.

    Feature ``i`` is column ``i`` of the first input tensor, one row per sample
    (the first axis). Predictions are the top class of the first output tensor,
    or, when the reference gives ``bin_edges`` instead of ``classes``, its first
    value binned like a feature.
    """

    feature_names: tuple[str, ...]
    feature_edges: tuple[np.ndarray, ...]
    classes: int  # > 0: classification with this many classes
    prediction_edges: np.ndarray | None  # regression bins, when classes == 0
    feature_ranges: np.ndarray | None = None  # (features, 2): valid [low, high] per feature (``range``, else the edges)

    @classmethod
    def from_manifest(cls, m: Manifest) -> SummarySpec:
        ref = m.reference if isinstance(m.reference, dict) else {}
        # The shape (feature names and bins, number of predictions) comes from the one rule the controller
        # checks summaries against (shared.telemetry.summary_shape), never from a copy of it.
        shape, n_predictions = summary_shape(ref, m.outputs[0].shape if m.outputs else None)
        names: list[str] = []
        edges: list[np.ndarray] = []
        ranges: list[tuple[float, float]] = []
        feats = ref.get("features")
        if shape and isinstance(feats, list):
            for i, f in enumerate(feats):  # summary_shape accepted every feature's bin_edges
                e = _edges(f.get("bin_edges"))
                assert e is not None
                names.append(str(f.get("name", f"f{i}")))
                edges.append(e)
                ranges.append(_range(f.get("range"), e))
            if names != list(shape):  # e.g. two features of one name: the controller would refuse the summaries
                log.warning("%s v%s: reference feature names are not unique; feature histograms off", m.name, m.version)
                names, edges, ranges = [], [], []
        elif isinstance(feats, list) and feats:
            log.warning("%s v%s: a reference feature has no usable bin_edges; feature histograms off", m.name, m.version)
        preds = ref.get("predictions") if isinstance(ref.get("predictions"), dict) else {}
        classes = preds.get("classes") if isinstance(preds, dict) else None
        pred_edges = _edges(preds.get("bin_edges")) if isinstance(preds, dict) else None
        n_classes = len(classes) if isinstance(classes, list) and classes else 0
        if not n_classes and pred_edges is None:
            n_classes = n_predictions  # the output's last dimension, as summary_shape decides
        rng = np.asarray(ranges, dtype=np.float64) if len(ranges) == len(names) and names else None
        return cls(tuple(names), tuple(edges), n_classes, None if n_classes else pred_edges, rng)

    @property
    def n_predictions(self) -> int:
        return self.classes if self.classes else len(self.prediction_edges) + 1  # type: ignore[arg-type]


def bin_counts(edges: np.ndarray, values: np.ndarray, finite: np.ndarray | None = None) -> np.ndarray:
    """Vectorised ``shared.telemetry.bin_index`` over columns: shape (cols, len(edges)+1).

    ``finite`` (same shape as ``values``, False for NaN/inf): those values are not counted.
    """
    idx = np.searchsorted(edges, values, side="right")
    idx[values == edges[-1]] = len(edges) - 1
    nb = len(edges) + 1
    cols = values.shape[1] if values.ndim == 2 else 1
    if finite is None:
        flat = (idx.reshape(-1, cols) + np.arange(cols) * nb).ravel()
        return np.bincount(flat, minlength=cols * nb).reshape(cols, nb)
    idx = np.where(finite, idx, nb)  # one spare bin per column for the values left out
    flat = (idx.reshape(-1, cols) + np.arange(cols) * (nb + 1)).ravel()
    return np.bincount(flat, minlength=cols * (nb + 1)).reshape(cols, nb + 1)[:, :nb]


def confidence_counts(output: np.ndarray, rows: int) -> np.ndarray:
    """Top-class probability of each row in ``CONFIDENCE_BINS`` bins (``shared.telemetry.confidence_bin``)."""
    top = np.nan_to_num(output.astype(np.float64).reshape(rows, -1).max(axis=1), nan=0.0)
    idx = np.minimum((np.clip(top, 0.0, 1.0) * CONFIDENCE_BINS).astype(np.int64), CONFIDENCE_BINS - 1)
    return np.bincount(idx, minlength=CONFIDENCE_BINS)


@dataclass(frozen=True)
class Parts:
    """One call, binned: what ``RoleAccumulator.add`` sums."""

    latency_bucket: int
    error: bool
    rows: int
    predictions: np.ndarray | None
    features: np.ndarray | None  # all feature histograms back to back (see RoleAccumulator._offsets)
    confidence: np.ndarray | None = None  # CONFIDENCE_BINS counts (classification)
    quality: np.ndarray | None = None  # (3, features): NaN, ±inf, finite but out of range


@dataclass(frozen=True)
class Bulk:
    """Many calls, binned at once: what ``RoleAccumulator.add_bulk`` sums (the same sums as their ``Parts``)."""

    calls: int
    errors: int
    rows: int
    latency: np.ndarray  # counts per latency bucket
    predictions: np.ndarray | None = None
    features: np.ndarray | None = None
    confidence: np.ndarray | None = None
    quality: np.ndarray | None = None


def latency_counts(latency_ms: Any) -> np.ndarray:
    """``shared.telemetry.latency_bucket`` of many latencies, counted per bucket."""
    idx = np.searchsorted(_LATENCY_EDGES, np.asarray(latency_ms, dtype=np.float64), side="left")
    return np.bincount(idx, minlength=N_LATENCY_BUCKETS)


def _stack_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """Arrays of one shape as the rows ``measure`` sees, one after another: (calls * rows, -1)."""
    first = arrays[0]
    if first.ndim > 1:
        both = np.concatenate(arrays)
        return both.reshape(len(arrays) * first.shape[0], -1)
    return np.stack(arrays).reshape(len(arrays), -1)


class RoleAccumulator:
    """Sums for one model in one role over one window. Thread-safe."""

    def __init__(self, model: str, version: int, sha256: str, spec: SummarySpec) -> None:
        self.model, self.version, self.sha256, self.spec = model, version, sha256, spec
        nf = len(spec.feature_names)
        same = nf > 0 and all(
            e.shape == spec.feature_edges[0].shape and np.array_equal(e, spec.feature_edges[0]) for e in spec.feature_edges
        )
        self._shared_edges = spec.feature_edges[0] if same else None
        self._lock = threading.Lock()
        self._n = {"count": 0, "errors": 0, "samples": 0}
        self._lat = np.zeros(N_LATENCY_BUCKETS, dtype=np.int64)
        self._pred = np.zeros(spec.n_predictions, dtype=np.int64)
        sizes = [len(e) + 1 for e in spec.feature_edges]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # feature i: [off[i], off[i+1])
        self._feat = np.zeros(int(self._offsets[-1]), dtype=np.int64)
        self._shadow = {"agree": 0, "disagree": 0}
        self._labels = {"count": 0, "correct": 0}
        self._conf = np.zeros(CONFIDENCE_BINS, dtype=np.int64)
        self._quality = np.zeros((3, nf), dtype=np.int64)
        self._missed: dict[str, int] | None = None  # a shadow role: comparisons dropped / sampled out
        self._confusion: np.ndarray | None = None  # a shadow role: [production class, shadow class] counts
        self._warned = False
        self._closed = False

    @classmethod
    def for_manifest(cls, m: Manifest, sha256: str) -> RoleAccumulator:
        return cls(m.name, m.version, sha256, SummarySpec.from_manifest(m))

    def measure(self, latency_ms: float, inputs: Any, output: Any, error: bool = False) -> Parts:
        """Bin one call (its latency, input rows and first output tensor); no shared state touched."""
        lat_bucket = latency_bucket(latency_ms)
        if error or inputs is None or output is None:
            return Parts(lat_bucket, error, 0, None, None)
        x = np.asarray(inputs, dtype=np.float64)
        x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
        rows = x.shape[0]
        feat, quality = self._features_of(x)
        out = np.asarray(output)
        if self.spec.classes:
            pred = np.bincount(np.minimum(top_classes(out), self.spec.classes - 1), minlength=self.spec.classes)
        else:
            first = out.astype(np.float64).reshape(rows, -1)[:, :1]
            pred = bin_counts(self.spec.prediction_edges, first)[0]  # type: ignore[arg-type]
        conf = confidence_counts(out, rows) if self.spec.classes else None
        return Parts(lat_bucket, False, rows, pred, feat, conf, quality)

    def measure_many(self, latency_ms: list[float], inputs: list[Any], outputs: list[Any]) -> Bulk:
        """Bin many calls at once; the same sums as ``measure`` of each call added up.

        ``outputs[i] is None`` marks a failed call. Calls whose arrays all have one shape
        (the usual case) are binned together in one numpy pass; anything else falls back
        to ``measure`` call by call, so the sums never depend on which path ran.
        """
        lat = latency_counts(latency_ms)
        ok = [i for i, o in enumerate(outputs) if o is not None]
        errors = len(outputs) - len(ok)
        xs = [np.asarray(inputs[i]) for i in ok]
        outs = [np.asarray(outputs[i]) for i in ok]
        bulk = self._bulk_same_shape(xs, outs) if ok else None
        if bulk is not None:
            rows, pred, feat, conf, quality = bulk
            return Bulk(len(outputs), errors, rows, lat, pred, feat, conf, quality)
        rows = 0
        pred = np.zeros(self.spec.n_predictions, dtype=np.int64)
        feat = np.zeros(len(self._feat), dtype=np.int64)
        conf = np.zeros(CONFIDENCE_BINS, dtype=np.int64)
        quality = np.zeros_like(self._quality)
        for x, out in zip(xs, outs, strict=True):
            try:
                p = self.measure(0.0, x, out)
            except (ValueError, TypeError):
                continue  # counted as a call, like ``Telemetry``'s fallback of ``measure(latency, None, None)``
            rows += p.rows
            pred += p.predictions if p.predictions is not None else 0
            feat += p.features if p.features is not None else 0
            conf += p.confidence if p.confidence is not None else 0
            quality += p.quality if p.quality is not None else 0
        return Bulk(len(outputs), errors, rows, lat, pred, feat, conf if self.spec.classes else None, quality)

    def _bulk_same_shape(
        self, xs: list[np.ndarray], outs: list[np.ndarray]
    ) -> tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None] | None:
        """``measure``'s sums over calls whose inputs share one shape and outputs another; None otherwise."""
        x0, o0 = xs[0], outs[0]
        if any(x.shape != x0.shape for x in xs) or any(o.shape != o0.shape for o in outs):
            return None
        if x0.dtype.kind not in "biuf" or o0.dtype.kind not in "biuf" or any(x.dtype != x0.dtype for x in xs):
            return None
        per_call = x0.shape[0] if x0.ndim > 1 else 1
        if per_call == 0 or o0.size % per_call:
            return None  # ``measure`` raises on these; the per-call path reproduces that
        x = _stack_rows(xs).astype(np.float64, copy=False)
        out = _stack_rows(outs)
        rows = int(x.shape[0])
        feat, quality = self._features_of(x)
        o_rows = o0.shape[0] if o0.ndim > 1 else 1
        if self.spec.classes:
            top = out.reshape(len(outs) * o_rows, -1).argmax(axis=1)
            pred = np.bincount(np.minimum(top, self.spec.classes - 1), minlength=self.spec.classes)
            conf: np.ndarray | None = confidence_counts(out, rows)
        else:
            first = out.astype(np.float64).reshape(rows, -1)[:, :1]
            pred = bin_counts(self.spec.prediction_edges, first)[0]  # type: ignore[arg-type]
            conf = None
        return rows, pred, feat, conf, quality

    def _features_of(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Feature histogram counts and quality counts of input rows ``x`` (rows, features) as float64;
        (None, None) when the reference has no features or ``x`` has another width (warned once)."""
        nf = len(self.spec.feature_names)
        if nf and x.shape[1] == nf:
            finite = np.isfinite(x)
            all_finite = bool(finite.all())
            ok = None if all_finite else finite
            if self._shared_edges is not None:
                feat = bin_counts(self._shared_edges, x, ok).ravel()
            else:
                feat = np.concatenate(
                    [bin_counts(e, x[:, i : i + 1], None if ok is None else ok[:, i : i + 1])[0]
                     for i, e in enumerate(self.spec.feature_edges)]
                )  # fmt: skip
            return feat, self._quality_of(x, finite, all_finite)
        if nf and not self._warned:
            self._warned = True
            log.warning(
                "%s v%s: input has %d columns, reference has %d features; no feature histograms",
                self.model,
                self.version,
                x.shape[1],
                nf,
            )
        return None, None

    def _quality_of(self, x: np.ndarray, finite: np.ndarray, all_finite: bool) -> np.ndarray | None:
        """(3, features) counts of NaN, ±inf and finite values outside each feature's range."""
        rng = self.spec.feature_ranges
        q = np.zeros((3, x.shape[1]), dtype=np.int64)
        if not all_finite:
            nan = np.isnan(x)
            q[0] = nan.sum(axis=0)
            q[1] = (~finite & ~nan).sum(axis=0)
        if rng is not None:
            with np.errstate(invalid="ignore"):
                q[2] = ((x < rng[:, 0]) | (x > rng[:, 1])).sum(axis=0) - (q[1] if not all_finite else 0)
        return q

    def record(self, latency_ms: float, inputs: Any, output: Any, error: bool = False) -> bool:
        return self.add(self.measure(latency_ms, inputs, output, error))

    def add(self, p: Parts) -> bool:
        """Add measured parts; False if this window is already closed (record into the next one)."""
        with self._lock:
            if self._closed:
                return False
            self._n["count"] += 1
            self._n["errors"] += int(p.error)
            self._n["samples"] += p.rows
            self._lat[p.latency_bucket] += 1
            if p.predictions is not None:
                self._pred += p.predictions
            if p.features is not None:
                self._feat += p.features
            if p.confidence is not None:
                self._conf += p.confidence
            if p.quality is not None:
                self._quality += p.quality
            return True

    def add_bulk(self, b: Bulk) -> bool:
        """Add many calls binned at once; False if this window is already closed."""
        with self._lock:
            if self._closed:
                return False
            self._n["count"] += b.calls
            self._n["errors"] += b.errors
            self._n["samples"] += b.rows
            self._lat += b.latency
            if b.predictions is not None:
                self._pred += b.predictions
            if b.features is not None and len(b.features) == len(self._feat):
                self._feat += b.features
            if b.confidence is not None:
                self._conf += b.confidence
            if b.quality is not None:
                self._quality += b.quality
            return True

    def add_summary(self, s: dict[str, Any]) -> bool:
        """Add another summary of this model (an application's in-process calls, read by
        ``shared.messages.read_role_summary``); False if this window is already closed.
        Raises ValueError when its histograms do not have this model's shapes."""
        names = self.spec.feature_names
        feats = s.get("features") or {}
        if feats and set(feats) != set(names):
            raise ValueError(f"summary features {sorted(feats)[:3]}... are not this model's {list(names)[:3]}...")
        flat = [c for n in names for c in feats[n]] if feats else [0] * len(self._feat)
        arrays = {
            "latency": (s["latency_ms"], self._lat),
            "predictions": (s["predictions"], self._pred),
            "features": (flat, self._feat),
            "confidence": (s.get("confidence") or [0] * CONFIDENCE_BINS, self._conf),
        }
        for key, (got, mine) in arrays.items():
            if len(got) != len(mine):
                raise ValueError(f"summary {key} has {len(got)} counts, this model's window has {len(mine)}")
        q = s.get("quality")
        quality = np.asarray([q["nan"], q["inf"], q["out_of_range"]], dtype=np.int64) if q else None
        if quality is not None and quality.shape != self._quality.shape:
            raise ValueError(f"summary quality has shape {quality.shape}, expected {self._quality.shape}")
        with self._lock:
            if self._closed:
                return False
            for k in ("count", "errors", "samples"):
                self._n[k] += int(s.get(k, 0))
            for got, mine in arrays.values():
                mine += np.asarray(got, dtype=np.int64)
            if quality is not None:
                self._quality += quality
            for part, mine_d in (("shadow", self._shadow), ("labels", self._labels)):
                for k in mine_d:
                    mine_d[k] += int((s.get(part) or {}).get(k, 0))
            return True

    def record_label(self, predicted: int, label: int) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._labels["count"] += 1
            self._labels["correct"] += int(predicted == label)
            return True

    def track_comparisons(self) -> None:
        """This accumulator is the shadow role's: it also counts missed comparisons and a confusion matrix."""
        with self._lock:
            if self._missed is None:
                self._missed = {"dropped": 0, "sampled_out": 0}
                k = self.spec.n_predictions
                if self.spec.classes and 1 <= k <= MAX_CONFUSION_CLASSES:
                    self._confusion = np.zeros((k, k), dtype=np.int64)

    def record_shadow(self, agree: bool, production: int | None = None, shadow: int | None = None) -> bool:
        """One comparison of the shadow model with production (their top classes, when known)."""
        with self._lock:
            if self._closed:
                return False
            self._shadow["agree" if agree else "disagree"] += 1
            cm = self._confusion
            if cm is not None and production is not None and shadow is not None:
                k = cm.shape[0]
                if 0 <= production < k and 0 <= shadow < k:
                    cm[production, shadow] += 1
            return True

    def record_missed(self, why: str, n: int = 1) -> bool:
        """``n`` production inferences not compared: ``dropped`` (shadow queue full) or ``sampled_out``."""
        with self._lock:
            if self._closed or self._missed is None:
                return False
            self._missed[why] += n
            return True

    def close(self) -> dict[str, Any]:
        """The window's summary; later adds are refused so nothing lands in a sent window."""
        with self._lock:
            self._closed = True
        return self.summary()

    def summary(self) -> dict[str, Any]:
        names = self.spec.feature_names
        s = empty_role_summary(
            self.model,
            self.version,
            self.spec.n_predictions,
            {n: len(e) + 1 for n, e in zip(names, self.spec.feature_edges, strict=True)},
        )
        with self._lock:
            s.update(self._n)
            s["latency_ms"] = self._lat.tolist()
            s["predictions"] = self._pred.tolist()
            flat = self._feat.tolist()
            off = self._offsets.tolist()
            s["features"] = {n: flat[off[i] : off[i + 1]] for i, n in enumerate(names)}
            s["shadow"] = dict(self._shadow)
            s["labels"] = dict(self._labels)
            if self.spec.classes:
                s["confidence"] = self._conf.tolist()
            if names:
                nan, inf, oor = self._quality.tolist()
                s["quality"] = {"nan": nan, "inf": inf, "out_of_range": oor}
            if self._missed is not None:
                s["shadow"] |= self._missed
            if self._confusion is not None:
                s["confusion"] = self._confusion.tolist()
        return s


def top_classes(output: np.ndarray) -> np.ndarray:
    """Top class per row of a (rows, classes...) output."""
    rows = output.reshape(output.shape[0] if output.ndim > 1 else 1, -1)
    return np.asarray(rows.argmax(axis=1))


class WindowBuilder:
    """All accumulators of the current window, and the agent counters.

    ``accumulator`` returns None when a different model now holds the role:
    the caller closes the window first, so a window has one model per role.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roles: dict[str, RoleAccumulator] = {}
        self._counters: Counter[str] = Counter()

    def accumulator(self, role: str, m: Manifest, sha256: str) -> RoleAccumulator | None:
        acc = self._roles.get(role)
        if acc is not None:
            return acc if acc.sha256 == sha256 else None
        with self._lock:
            acc = self._roles.get(role)
            if acc is None:
                acc = RoleAccumulator.for_manifest(m, sha256)
                if role == "shadow":
                    acc.track_comparisons()
                self._roles = {**self._roles, role: acc}
            return acc if acc.sha256 == sha256 else None

    def current(self, role: str) -> RoleAccumulator | None:
        return self._roles.get(role)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def close(self) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
        """Summaries and counters of the window; the builder starts a fresh one."""
        with self._lock:
            roles, self._roles = self._roles, {}
            counters, self._counters = self._counters, Counter()
        out = dict.fromkeys(COUNTERS, 0)
        out.update(counters)
        return {r: a.close() for r, a in roles.items()}, out
