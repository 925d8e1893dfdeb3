"""Feature definitions executed by one implementation on the device and in the pipeline.

A bundle's manifest may carry a ``features`` object: a declarative, versioned spec that
turns RAW inputs (what a sensor or an app produces) into the model's input tensor::

    {"version": "digits-pixels-1",
     "input": {"name": "pixels", "dtype": "uint8", "shape": [8, 8], "range": [0, 16]},
     "steps": [{"op": "clip", "min": 0, "max": 16},
               {"op": "scale", "factor": 0.0625, "offset": {"batch": "brightness_offset"}},
               {"op": "reshape", "shape": [64]}],
     "batch": [{"name": "brightness_offset", "default": 0.0}]}

``FeatureSpec.transform(raw, batch)`` takes a batch of raw items (leading axis) and the
batch-feature values joined for them, checks every raw value against its valid range
and returns float32 model inputs. The agent runs it before the runtime when a local app
sends raw inputs; the pipeline runs it on captured raw samples, so training and serving
cannot drift apart (zero skew). Arithmetic is float32 throughout, in a fixed order.

Batch features are per-device or per-cohort values computed in the cloud (a calibration
offset, a site statistic) with validity times; :func:`value_at` picks the value in force
at an instant (``valid_from <= at < valid_to``), on the device at inference time and in
training at each sample's capture time (:func:`join_batch`), so no value set after a
sample was captured is ever joined to it.

Errors::

    SchemaError (shared.errors)
    └── FeatureSpecError    a spec (or a batch value on the wire) is malformed
    ValueError
    └── FeatureInputError   raw inputs or batch values do not fit the spec
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

import numpy as np

from shared.errors import SchemaError

__all__ = [
    "OPS",
    "BatchFeatureValue",
    "FeatureInputError",
    "FeatureSpec",
    "FeatureSpecError",
    "join_batch",
    "next_change",
    "validate_name",
    "validate_scope",
    "value_at",
    "values_at",
]

OPS = ("scale", "clip", "normalise", "reshape", "one_hot", "append")
RAW_DTYPES = ("float32", "float64", "int8", "uint8", "int16", "int32", "int64")
MAX_STEPS = 64
MAX_BATCH_FEATURES = 64
MAX_ITEM_VALUES = 1 << 20  # values per raw item
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_SCOPE = re.compile(r"^(fleet|device:[A-Za-z0-9][A-Za-z0-9._-]{0,63}|cohort:[A-Za-z0-9][A-Za-z0-9._-]{0,127})$")
_MAX_REPORTED = 8  # violations listed in one error message


class FeatureSpecError(SchemaError):
    """A feature spec is malformed; the message names the field, what was expected and what came."""


class FeatureInputError(ValueError):
    """Raw inputs (or batch values) do not fit the spec: wrong shape, out of range, not finite, missing."""


# --- parameters ---------------------------------------------------------------------


@dataclass(frozen=True)
class _BatchRef:
    """A step parameter taken from a batch feature at transform time."""

    name: str


Param = float | tuple[float, ...] | _BatchRef  # a scalar, one value per feature on the last axis, or a batch feature


def _where(i: int, op: str) -> str:
    return f"features.steps[{i}] ({op})"


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FeatureSpecError(f"{where}: expected a finite number, got {value!r:.60}")
    return float(value)


def _param(value: Any, where: str, width: int | None, batch: set[str]) -> Param:
    if isinstance(value, dict):
        name = value.get("batch")
        if set(value) != {"batch"} or not isinstance(name, str):
            raise FeatureSpecError(f'{where}: expected a number, a list of numbers or {{"batch": NAME}}, got {value!r:.80}')
        if name not in batch:
            raise FeatureSpecError(f"{where}: batch feature {name!r} is not declared in features.batch ({sorted(batch)})")
        return _BatchRef(name)
    if isinstance(value, list):
        if width is None:
            raise FeatureSpecError(f"{where}: a per-feature list needs items of rank 1 at this step (reshape first)")
        if len(value) != width:
            raise FeatureSpecError(f"{where}: expected {width} values (one per feature), got {len(value)}")
        return tuple(_number(v, f"{where}[{j}]") for j, v in enumerate(value))
    return _number(value, where)


def _param_json(p: Param) -> Any:
    if isinstance(p, _BatchRef):
        return {"batch": p.name}
    return list(p) if isinstance(p, tuple) else p


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= 8:
        raise FeatureSpecError(f"{where}: expected a list of 1 to 8 positive integers, got {value!r:.60}")
    for d in value:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise FeatureSpecError(f"{where}: expected positive integers, got {d!r}")
    shape = tuple(value)
    if math.prod(shape) > MAX_ITEM_VALUES:
        raise FeatureSpecError(f"{where}: {math.prod(shape)} values per item, limit {MAX_ITEM_VALUES}")
    return shape


# --- the raw input ---------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """What one raw item is: dtype, shape, and the valid range of each value on the last axis."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    range: tuple[float | None, float | None]  # every value; None: unbounded
    ranges: tuple[tuple[float | None, float | None], ...] | None  # per feature on the last axis (overrides range)
    names: tuple[str, ...] | None  # feature names on the last axis, for messages

    @classmethod
    def read(cls, d: Any) -> InputSpec:
        if not isinstance(d, dict):
            raise FeatureSpecError(f"features.input: expected an object, got {type(d).__name__}")
        name = d.get("name", "raw")
        if not isinstance(name, str) or not _NAME.match(name):
            raise FeatureSpecError(f"features.input.name: expected a name like 'pixels', got {name!r:.60}")
        dtype = d.get("dtype", "float32")
        if dtype not in RAW_DTYPES:
            raise FeatureSpecError(f"features.input.dtype: expected one of {', '.join(RAW_DTYPES)}, got {dtype!r:.40}")
        shape = _shape(d.get("shape"), "features.input.shape")
        width = shape[-1]
        rng = _bounds(d.get("range", [None, None]), "features.input.range")
        ranges = None
        if d.get("ranges") is not None:
            raw = d["ranges"]
            if not isinstance(raw, list) or len(raw) != width:
                raise FeatureSpecError(
                    f"features.input.ranges: expected {width} [min, max] pairs (one per feature), got {raw!r:.60}"
                )
            ranges = tuple(_bounds(r, f"features.input.ranges[{i}]") for i, r in enumerate(raw))
        names = None
        if d.get("names") is not None:
            raw = d["names"]
            if not isinstance(raw, list) or len(raw) != width or not all(isinstance(n, str) and len(n) <= 64 for n in raw):
                raise FeatureSpecError(f"features.input.names: expected {width} strings (one per feature), got {raw!r:.60}")
            names = tuple(raw)
        return cls(name, dtype, shape, rng, ranges, names)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "range": list(self.range)}
        if self.ranges is not None:
            d["ranges"] = [list(r) for r in self.ranges]
        if self.names is not None:
            d["names"] = list(self.names)
        return d

    def feature(self, j: int) -> str:
        return f"feature {self.names[j]!r} (index {j})" if self.names else f"feature {j}"


def _bounds(value: Any, where: str) -> tuple[float | None, float | None]:
    if not isinstance(value, list) or len(value) != 2:
        raise FeatureSpecError(f"{where}: expected [min, max] (null for unbounded), got {value!r:.60}")
    lo, hi = (None if v is None else _number(v, where) for v in value)
    if lo is not None and hi is not None and lo > hi:
        raise FeatureSpecError(f"{where}: min {lo:g} is above max {hi:g}")
    return lo, hi


# --- steps -----------------------------------------------------------------------------

Values = Mapping[str, np.float32]  # batch feature name -> value, resolved for one transform call
StepFn = Callable[[np.ndarray, Values], np.ndarray]


@dataclass(frozen=True)
class Step:
    """One parsed step: its JSON form, the item shape after it, and the function that runs it."""

    op: str
    params: dict[str, Any]  # the JSON parameters, normalised
    shape: tuple[int, ...]  # item shape after this step
    run: StepFn


def _compiled(p: Param) -> tuple[Any, str | None]:
    """A parameter as the steps use it: (float32 constant, None), or (None, batch feature name)."""
    if isinstance(p, _BatchRef):
        return None, p.name
    return (np.asarray(p, dtype=np.float32) if isinstance(p, tuple) else np.float32(p)), None


def _read_step(i: int, d: Any, shape: tuple[int, ...], batch: set[str]) -> Step:
    if not isinstance(d, dict):
        raise FeatureSpecError(f"features.steps[{i}]: expected an object with 'op', got {type(d).__name__}")
    op = d.get("op")
    if op not in OPS:
        raise FeatureSpecError(f"features.steps[{i}].op: expected one of {', '.join(OPS)}, got {op!r:.40}")
    where = _where(i, op)
    allowed = {
        "scale": {"factor", "offset"},
        "clip": {"min", "max"},
        "normalise": {"mean", "std"},
        "reshape": {"shape"},
        "one_hot": {"index", "values"},
        "append": {"batch"},
    }[op]
    extra = set(d) - allowed - {"op"}
    if extra:
        raise FeatureSpecError(f"{where}: unknown field(s) {sorted(extra)}; {op} takes {sorted(allowed)}")
    width = shape[-1] if len(shape) == 1 else None
    if op == "scale":
        factor, offset = (
            _param(d.get("factor", 1.0), f"{where}.factor", width, batch),
            _param(d.get("offset", 0.0), f"{where}.offset", width, batch),
        )

        (fc, fn), (oc, on) = _compiled(factor), _compiled(offset)

        def scale(x: np.ndarray, v: Values) -> np.ndarray:
            x *= fc if fn is None else v[fn]
            x += oc if on is None else v[on]
            return x

        return Step(op, {"factor": _param_json(factor), "offset": _param_json(offset)}, shape, scale)
    if op == "clip":
        lo = None if d.get("min") is None else _param(d["min"], f"{where}.min", width, batch)
        hi = None if d.get("max") is None else _param(d["max"], f"{where}.max", width, batch)
        if lo is None and hi is None:
            raise FeatureSpecError(f"{where}: give min, max or both")
        if isinstance(lo, float) and isinstance(hi, float) and lo > hi:
            raise FeatureSpecError(f"{where}: min {lo:g} is above max {hi:g}")

        (lc, ln), (hc, hn) = _compiled(0.0 if lo is None else lo), _compiled(0.0 if hi is None else hi)
        has_lo, has_hi = lo is not None, hi is not None

        def clip(x: np.ndarray, v: Values) -> np.ndarray:
            if has_lo:
                np.maximum(x, lc if ln is None else v[ln], out=x)
            if has_hi:
                np.minimum(x, hc if hn is None else v[hn], out=x)
            return x

        params = {"min": None if lo is None else _param_json(lo), "max": None if hi is None else _param_json(hi)}
        return Step(op, params, shape, clip)
    if op == "normalise":
        mean = _param(d.get("mean", 0.0), f"{where}.mean", width, batch)
        std = _param(d.get("std", 1.0), f"{where}.std", width, batch)
        for s in std if isinstance(std, tuple) else (std,):
            if isinstance(s, float) and s <= 0:
                raise FeatureSpecError(f"{where}.std: expected positive values, got {s:g}")

        (mc, mn), (sc, sn) = _compiled(mean), _compiled(std)

        def normalise(x: np.ndarray, v: Values) -> np.ndarray:
            x -= mc if mn is None else v[mn]
            x /= sc if sn is None else v[sn]
            return x

        return Step(op, {"mean": _param_json(mean), "std": _param_json(std)}, shape, normalise)
    if op == "reshape":
        new = _shape(d.get("shape"), f"{where}.shape")
        if math.prod(new) != math.prod(shape):
            raise FeatureSpecError(
                f"{where}.shape: {list(new)} holds {math.prod(new)} values; items here have shape {list(shape)}"
            )

        def reshape(x: np.ndarray, v: Values) -> np.ndarray:
            return x.reshape((x.shape[0], *new))

        return Step(op, {"shape": list(new)}, new, reshape)
    if op == "one_hot":
        if width is None:
            raise FeatureSpecError(f"{where}: one_hot needs items of rank 1 at this step, they have shape {list(shape)}")
        index = d.get("index")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < width:
            raise FeatureSpecError(f"{where}.index: expected the position of a feature, 0 to {width - 1}, got {index!r:.40}")
        cats = d.get("values")
        if not isinstance(cats, list) or not 1 <= len(cats) <= 4096:
            raise FeatureSpecError(f"{where}.values: expected a list of 1 to 4096 category values, got {cats!r:.60}")
        codes = tuple(_number(c, f"{where}.values[{j}]") for j, c in enumerate(cats))
        if len(set(codes)) != len(codes):
            raise FeatureSpecError(f"{where}.values: categories must be distinct")
        table = np.asarray(codes, dtype=np.float32)

        def one_hot(x: np.ndarray, v: Values) -> np.ndarray:
            hot = (x[:, index : index + 1] == table).astype(np.float32)  # an unknown category: all zeros
            return np.concatenate((x[:, :index], hot, x[:, index + 1 :]), axis=1)

        return Step(op, {"index": index, "values": list(codes)}, (width - 1 + len(codes),), one_hot)
    # append
    if width is None:
        raise FeatureSpecError(f"{where}: append needs items of rank 1 at this step, they have shape {list(shape)}")
    names = d.get("batch")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise FeatureSpecError(f"{where}.batch: expected a list of batch feature names, got {names!r:.60}")
    for n in names:
        if n not in batch:
            raise FeatureSpecError(f"{where}.batch: batch feature {n!r} is not declared in features.batch ({sorted(batch)})")
    cols = tuple(names)

    def append(x: np.ndarray, v: Values) -> np.ndarray:
        extra = np.broadcast_to(np.asarray([v[n] for n in cols], dtype=np.float32), (x.shape[0], len(cols)))
        return np.concatenate((x, extra), axis=1)

    return Step(op, {"batch": list(cols)}, (width + len(cols),), append)


# --- the spec ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchFeature:
    """A batch feature the spec uses; ``default`` is used when no value is in force (None: required)."""

    name: str
    default: float | None = None


class FeatureSpec:
    """A parsed, validated feature spec. Build it with :meth:`from_dict`; it is immutable."""

    __slots__ = ("_batch_names", "_doc", "_hi", "_last", "_lo", "_uniform", "batch", "input", "output_shape", "steps", "version")

    def __init__(self, version: str, input: InputSpec, steps: tuple[Step, ...], batch: tuple[BatchFeature, ...]) -> None:
        self.version = version
        self.input = input
        self.steps = steps
        self.batch = batch
        self.output_shape: tuple[int, ...] = steps[-1].shape if steps else input.shape  # per item
        self._batch_names = tuple(b.name for b in batch)
        width = input.shape[-1]
        lo = [input.range[0]] * width
        hi = [input.range[1]] * width
        for j, (a, b) in enumerate(input.ranges or ()):
            lo[j], hi[j] = a, b
        self._lo = np.asarray([-np.inf if v is None else v for v in lo], dtype=np.float64)
        self._hi = np.asarray([np.inf if v is None else v for v in hi], dtype=np.float64)
        # one range for every value: checked with two reductions instead of per-feature compares
        self._uniform = (float(self._lo[0]), float(self._hi[0])) if input.ranges is None else None
        self._doc = self._to_dict()
        self._last: tuple[Any, dict[str, np.float32]] = (None, {})  # the last batch mapping given, resolved

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        """Parse and validate a spec; raise :class:`FeatureSpecError` saying what is wrong."""
        if not isinstance(d, Mapping):
            raise FeatureSpecError(f"features: expected an object, got {type(d).__name__}")
        unknown = set(d) - {"version", "input", "steps", "batch"}
        if unknown:
            raise FeatureSpecError(f"features: unknown field(s) {sorted(unknown)}; expected version, input, steps, batch")
        version = d.get("version")
        if not isinstance(version, str) or not 1 <= len(version) <= 64:
            raise FeatureSpecError(f"features.version: expected a string of 1 to 64 characters, got {version!r:.60}")
        raw_batch = d.get("batch", [])
        if not isinstance(raw_batch, list) or len(raw_batch) > MAX_BATCH_FEATURES:
            raise FeatureSpecError(
                f"features.batch: expected a list of at most {MAX_BATCH_FEATURES} names, got {raw_batch!r:.60}"
            )
        batch = tuple(_batch_feature(i, b) for i, b in enumerate(raw_batch))
        names = [b.name for b in batch]
        if len(set(names)) != len(names):
            raise FeatureSpecError(f"features.batch: names must be distinct, got {names}")
        inp = InputSpec.read(d.get("input"))
        raw_steps = d.get("steps", [])
        if not isinstance(raw_steps, list) or len(raw_steps) > MAX_STEPS:
            raise FeatureSpecError(f"features.steps: expected a list of at most {MAX_STEPS} steps, got {raw_steps!r:.60}")
        steps, shape = [], inp.shape
        for i, s in enumerate(raw_steps):
            step = _read_step(i, s, shape, set(names))
            steps.append(step)
            shape = step.shape
        return cls(version, inp, tuple(steps), batch)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``from_dict(spec.to_dict())`` gives an equal spec)."""
        doc: dict[str, Any] = _copy(self._doc)
        return doc

    def _to_dict(self) -> dict[str, Any]:
        batch: list[Any] = [b.name if b.default is None else {"name": b.name, "default": b.default} for b in self.batch]
        return {
            "version": self.version,
            "input": self.input.to_dict(),
            "steps": [{"op": s.op, **s.params} for s in self.steps],
            "batch": batch,
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureSpec) and self._doc == other._doc

    def __hash__(self) -> int:
        return hash(self.version)

    def __repr__(self) -> str:
        ops = ", ".join(s.op for s in self.steps)
        shape, batch = list(self.input.shape), list(self._batch_names)
        return f"FeatureSpec(version={self.version!r}, input={shape}, steps=[{ops}], batch={batch})"

    # -- running it ---------------------------------------------------------------------

    def check(self, raw: Any) -> list[str]:
        """Every way ``raw`` (a batch of raw items, leading axis) breaks the spec; empty when it fits."""
        try:
            x = self._array(raw)
        except FeatureInputError as exc:
            return [str(exc)]
        return self._violations(x)

    def transform(self, raw: Any, batch: Mapping[str, float] | None = None, *, validate: bool = True) -> np.ndarray:
        """Raw items (leading batch axis, item shape ``input.shape``) -> float32 model inputs.

        ``batch``: the batch-feature values joined for these items (name -> value); a declared
        feature without a value takes its default, else FeatureInputError. ``validate``: refuse
        (FeatureInputError listing the violations) raw values outside their valid ranges.
        """
        x = self._array(raw)
        if validate:
            problems = self._violations(x)
            if problems:
                raise FeatureInputError("; ".join(problems))
        values = self.batch_values(batch)
        out = x.astype(np.float32)  # a copy the steps work on in place
        for step in self.steps:
            out = step.run(out, values)
        return out

    def batch_values(self, batch: Mapping[str, float] | None) -> dict[str, np.float32]:
        """The value of each declared batch feature for one transform: given, else its default."""
        if not self.batch:
            return {}
        last = self._last  # the agent passes the same read-only mapping until a value starts or ends
        if type(batch) is MappingProxyType and batch is last[0]:
            return last[1]
        given = batch or {}
        out = {}
        for b in self.batch:
            v = given.get(b.name, b.default)
            if v is None:
                raise FeatureInputError(f"batch feature {b.name!r} has no value in force and no default")
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
                raise FeatureInputError(f"batch feature {b.name!r}: expected a finite number, got {v!r:.40}")
            out[b.name] = np.float32(v)
        if type(batch) is MappingProxyType:  # read-only: the same object always holds the same values
            self._last = (batch, out)
        return out

    def _array(self, raw: Any) -> np.ndarray:
        try:
            x = raw if isinstance(raw, np.ndarray) else np.asarray(raw)
        except (ValueError, TypeError) as exc:
            raise FeatureInputError(f"raw input {self.input.name!r} is not an array of numbers: {exc}") from None
        if x.dtype.kind not in "fiub":
            raise FeatureInputError(f"raw input {self.input.name!r}: expected numbers, got {x.dtype} values")
        want = self.input.shape
        if x.shape[1:] != want:
            raise FeatureInputError(
                f"raw input {self.input.name!r}: expected shape [n, {', '.join(map(str, want))}] "
                f"(a leading batch axis, then {list(want)}), got {list(x.shape)}"
            )
        return x

    def _violations(self, x: np.ndarray) -> list[str]:
        if x.dtype.kind == "b" or x.size == 0:
            return []
        uniform = self._uniform
        integral = self.input.dtype.startswith(("int", "uint")) and x.dtype.kind == "f"
        if uniform is not None and not integral and x.min() >= uniform[0] and x.max() <= uniform[1]:
            return []  # the common case, cheaply (NaN fails the comparisons and takes the long way)
        ok = (x >= self._lo) & (x <= self._hi)  # NaN compares false: reported as out of range
        out: list[str] = []
        if not ok.all():
            bad = ~ok.reshape(-1, self.input.shape[-1])
            per = bad.sum(axis=0)
            flat = x.reshape(-1, self.input.shape[-1])
            for j in np.flatnonzero(per)[:_MAX_REPORTED]:
                row = int(np.flatnonzero(bad[:, j])[0])
                item = row // (flat.shape[0] // x.shape[0])
                lo, hi = self._lo[j], self._hi[j]
                out.append(
                    f"{self.input.feature(int(j))}: {int(per[j])} value(s) outside [{lo:g}, {hi:g}], "
                    f"e.g. {float(flat[row, j])!r} in item {item}"
                )
            if np.count_nonzero(per) > _MAX_REPORTED:
                out.append(f"... and {np.count_nonzero(per) - _MAX_REPORTED} more features out of range")
        if integral:
            frac = x != np.round(x)
            frac &= ok
            if frac.any():
                n = int(frac.sum())
                out.append(f"raw input {self.input.name!r} is declared {self.input.dtype}: {n} value(s) are not whole numbers")
        return out


def _batch_feature(i: int, b: Any) -> BatchFeature:
    where = f"features.batch[{i}]"
    if isinstance(b, str):
        b = {"name": b}
    if not isinstance(b, dict) or set(b) - {"name", "default"}:
        raise FeatureSpecError(f'{where}: expected a name or {{"name": ..., "default": ...}}, got {b!r:.60}')
    name = b.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise FeatureSpecError(f"{where}.name: expected a name like 'calibration_offset', got {name!r:.60}")
    default = b.get("default")
    return BatchFeature(name, None if default is None else _number(default, f"{where}.default"))


def _copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_copy(v) for v in d]
    return d


# --- batch feature values and point-in-time lookup ------------------------------------

_SCOPE_RANK = {"device": 0, "cohort": 1, "fleet": 2}  # most specific first


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


@dataclass(frozen=True)
class BatchFeatureValue:
    """One value of a batch feature for a scope (``device:<id>``, ``cohort:<name>`` or ``fleet``),
    in force from ``valid_from`` (inclusive) to ``valid_to`` (exclusive; None: until replaced).
    Naive datetimes are read as UTC."""

    name: str
    value: float
    valid_from: datetime
    valid_to: datetime | None
    scope: str

    def in_force(self, at: datetime) -> bool:
        at = _utc(at)
        return _utc(self.valid_from) <= at and (self.valid_to is None or at < _utc(self.valid_to))

    def to_wire(self) -> dict[str, Any]:
        """The form carried in the signed desired state: times as unix seconds."""
        return {
            "name": self.name,
            "value": self.value,
            "valid_from": _utc(self.valid_from).timestamp(),
            "valid_to": None if self.valid_to is None else _utc(self.valid_to).timestamp(),
            "scope": self.scope,
        }

    @classmethod
    def from_wire(cls, d: Any, where: str = "feature") -> BatchFeatureValue:
        """Parse the desired-state form; FeatureSpecError naming the field on anything wrong."""
        if not isinstance(d, dict):
            raise FeatureSpecError(f"{where}: expected an object, got {type(d).__name__}")
        name, scope = d.get("name"), d.get("scope")
        if not isinstance(name, str) or not _NAME.match(name):
            raise FeatureSpecError(f"{where}.name: expected a batch feature name, got {name!r:.60}")
        if not isinstance(scope, str) or not _SCOPE.match(scope):
            raise FeatureSpecError(f"{where}.scope: expected device:<id>, cohort:<name> or fleet, got {scope!r:.60}")
        value = _number(d.get("value"), f"{where}.value")
        start = _number(d.get("valid_from"), f"{where}.valid_from")
        end = None if d.get("valid_to") is None else _number(d["valid_to"], f"{where}.valid_to")
        if end is not None and end <= start:
            raise FeatureSpecError(f"{where}: valid_to {end} is not after valid_from {start}")
        to_dt = datetime.fromtimestamp
        return cls(name, value, to_dt(start, timezone.utc), None if end is None else to_dt(end, timezone.utc), scope)


def validate_scope(scope: str) -> str:
    """``device:<id>``, ``cohort:<name>`` or ``fleet``; FeatureSpecError otherwise."""
    if not isinstance(scope, str) or not _SCOPE.match(scope):
        raise FeatureSpecError(f"scope: expected device:<id>, cohort:<name> or fleet, got {scope!r:.60}")
    return scope


def validate_name(name: str) -> str:
    """A batch feature's name: a letter or '_', then letters, digits, '_', '.', '-' (at most 64)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise FeatureSpecError(f"name: expected a batch feature name like 'dark_level', got {name!r:.60}")
    return name


def _rank(v: BatchFeatureValue) -> int:
    return _SCOPE_RANK.get(v.scope.split(":", 1)[0], 3)


def value_at(history: Sequence[BatchFeatureValue], name: str, at: datetime) -> float | None:
    """The value of ``name`` in force at ``at`` (``valid_from <= at < valid_to``), or None.

    Several in force: the most specific scope wins (device, then cohort, then fleet), then the
    latest ``valid_from`` (a newer value replaces an open-ended older one), then the later entry.
    ``history`` is what applies to one device: its own values, its cohorts' and the fleet's.
    """
    best: tuple[int, datetime, int] | None = None
    value = None
    for i, v in enumerate(history):
        if v.name != name or not v.in_force(at):
            continue
        key = (-_rank(v), _utc(v.valid_from), i)
        if best is None or key > best:
            best, value = key, v.value
    return value


def values_at(history: Sequence[BatchFeatureValue], at: datetime) -> dict[str, float]:
    """Every batch feature in force at ``at`` (name -> value), by the rules of :func:`value_at`."""
    return {n: v for n in sorted({h.name for h in history}) if (v := value_at(history, n, at)) is not None}


def next_change(history: Sequence[BatchFeatureValue], at: datetime) -> datetime | None:
    """The first instant after ``at`` where a value starts or ends (None: nothing changes any more)."""
    at = _utc(at)
    edges = [_utc(t) for v in history for t in (v.valid_from, v.valid_to) if t is not None and _utc(t) > at]
    return min(edges) if edges else None


def join_batch(
    rows: Iterable[tuple[str, str | None, datetime]],
    history: Sequence[BatchFeatureValue],
    names: Sequence[str] | None = None,
) -> list[dict[str, float | None]]:
    """Point-in-time join for training: per ``(device_id, cohort, captured_at)`` row, each batch
    feature's value in force at ``captured_at`` for that device (its device scope, then its cohort's,
    then the fleet's), None where no value was in force. ``names``: the features to join (default:
    every name in ``history``). A value whose ``valid_from`` is after the capture is never used.
    """
    wanted = sorted({h.name for h in history}) if names is None else list(names)
    by_scope: dict[str, list[BatchFeatureValue]] = {}
    for h in history:
        by_scope.setdefault(h.scope, []).append(h)
    for vs in by_scope.values():
        vs.sort(key=lambda v: _utc(v.valid_from))
    starts = {s: [_utc(v.valid_from) for v in vs] for s, vs in by_scope.items()}
    out = []
    for device_id, cohort, at in rows:
        at = _utc(at)
        applicable: list[BatchFeatureValue] = []
        for scope in (f"device:{device_id}", f"cohort:{cohort}" if cohort else "", "fleet"):
            found = by_scope.get(scope)
            if found:
                applicable.extend(found[: bisect.bisect_right(starts[scope], at)])  # started by ``at`` only
        out.append({n: value_at(applicable, n, at) for n in wanted})
    return out
