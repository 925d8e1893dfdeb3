"""The runtime seam: load a model file, run named input arrays, get named outputs.

Runtimes are imported lazily so an agent that only serves ONNX never imports
LiteRT and vice versa.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple, Protocol

import numpy as np

from shared.manifest import Manifest

_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}
_DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "int32": np.int32, "int64": np.int64}


class ModelLoadError(Exception):
    """A model could not be loaded or run."""


class Runtime(Protocol):
    name: str

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class FastPath(NamedTuple):
    """The usual request, checked inline by ``ModelHost``: an array of the single input's exact
    dtype and fixed shape is what ``coerce_inputs`` would return as is; ``direct(feed, None)``
    (a runtime that offers it, with nothing to (de)quantize here) returns the outputs as a list
    in ``outputs`` order."""

    input: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    direct: Callable[[dict[str, np.ndarray], None], list[np.ndarray]] | None
    single: str | None  # the output's name when there is one output
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve: its manifest, bundle hash and runtime session."""

    manifest: Manifest
    sha256: str
    runtime: Runtime
    loaded_at: float

    def predict(self, inputs: dict[str, Any] | Any) -> dict[str, np.ndarray]:
        """Run the model: float inputs are quantized and int8 outputs dequantized per the manifest."""
        return self.run_coerced(self.coerce_inputs(inputs))

    def run_coerced(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``predict`` for inputs that already went through ``coerce_inputs``."""
        return self.run_coerced_fn(inputs)

    @cached_property
    def run_coerced_fn(self) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """``run_coerced`` as one callable: the runtime's own ``run`` when nothing is (de)quantized
        here, so the hot path (``ModelHost.predict``) pays no extra Python frame."""
        if not self._quantized:
            return self.runtime.run
        return lambda inputs: self.dequantize(self.runtime.run(self.quantize(inputs)))

    @cached_property
    def _quantized(self) -> bool:
        return any(t.quantization is not None and t.dtype in _INT_RANGE for t in (*self.manifest.inputs, *self.manifest.outputs))

    def quantize(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``clip(round(x / scale) + zero_point)`` per the manifest, in place on one temporary
        (``rint``/``minimum``/``maximum``: the same values as ``round``/``clip``, ~3x faster)."""
        out = {}
        for name, q, lo, hi, dtype in self._quant_specs:
            arr = inputs[name]
            if q is not None:
                t = np.asarray(arr / q.scale)
                np.rint(t, out=t)
                t += q.zero_point
                np.minimum(t, hi, out=t)
                np.maximum(t, lo, out=t)
                arr = t.astype(dtype)
            out[name] = arr
        return out

    @cached_property
    def _quant_specs(self) -> list[tuple[str, Any, int, int, Any]]:
        """Per input: name, quantization (None: passed as is), integer range, integer dtype."""
        out = []
        for spec in self.manifest.inputs:
            q = spec.quantization if spec.dtype in _INT_RANGE else None
            lo, hi = _INT_RANGE.get(spec.dtype, (0, 0))
            out.append((spec.name, q, lo, hi, _DTYPES[spec.dtype]))
        return out

    def dequantize(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``(q - zero_point) * scale`` in float32 per the manifest: for the declared 8-bit dtype a
        lookup in the table of all 256 results (the same float32 values, computed once)."""
        for name, dtype, zero_point, scale, table in self._dequant_tables:
            arr = outputs.get(name)
            if arr is None:
                continue
            if arr.dtype == dtype:
                outputs[name] = table[arr.view(np.uint8)]
            else:
                outputs[name] = (arr.astype(np.float32) - zero_point) * scale
        return outputs

    @cached_property
    def _dequant_tables(self) -> list[tuple[str, Any, int, np.float32, np.ndarray]]:
        """Per quantized 8-bit output: name, dtype, zero point, scale, and the float32 result for
        each of the 256 codes, indexed by the code's bits read as uint8."""
        out = []
        for spec in self.manifest.outputs:
            q = spec.quantization
            if q is None or spec.dtype not in _INT_RANGE:
                continue
            dtype = np.dtype(_DTYPES[spec.dtype])
            scale = np.float32(q.scale)
            codes = np.arange(256, dtype=np.uint8).view(dtype)
            out.append((spec.name, dtype, q.zero_point, scale, (codes.astype(np.float32) - q.zero_point) * scale))
        return out

    def featurize(self, raw: Any, batch: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
        """Raw inputs -> the model's input per the manifest's feature spec (``shared.features``).

        ``raw``: one raw item, or items on a leading batch axis, as a list or array (or a dict with
        the one raw input, by its name). ValueError when the model has no feature spec or the raw
        values do not fit it.
        """
        spec = self.manifest.features
        if spec is None:
            m = self.manifest
            raise ValueError(f"model {m.name} v{m.version} has no feature spec: send model inputs, not raw")
        if isinstance(raw, dict):
            if len(raw) != 1 or next(iter(raw)) not in ("", spec.input.name):
                raise ValueError(f"raw inputs: expected the one raw input {spec.input.name!r}, got {sorted(raw)}")
            raw = next(iter(raw.values()))
        x = raw if isinstance(raw, np.ndarray) else np.asarray(raw)
        if x.ndim == len(spec.input.shape):
            x = x[np.newaxis]  # one item without its batch axis
        return {self.manifest.inputs[0].name: spec.transform(x, batch)}

    def coerce_inputs(self, inputs: dict[str, Any] | Any) -> dict[str, np.ndarray]:
        """Turn JSON-ish inputs (a list for a single-input model, or a dict) into arrays."""
        checks = self._input_checks
        if not isinstance(inputs, dict):
            if len(checks) != 1:
                raise ValueError(f"model has {len(checks)} inputs; pass a dict of {[c[0] for c in checks]}")
            name, dtype, exact, ndim, fixed, shape = checks[0]
            # An array of the right dtype is used as is (what np.asarray returns too, ~0.1 µs later).
            arr = inputs if type(inputs) is np.ndarray and inputs.dtype is dtype else np.asarray(inputs, dtype=dtype)
            if arr.shape != exact and (arr.ndim != ndim or any(arr.shape[i] != d for i, d in fixed)):
                raise ValueError(f"input {name!r}: expected shape {shape}, got {list(arr.shape)}")
            return {name: arr}
        out = {}
        for name, dtype, exact, ndim, fixed, shape in checks:
            if name not in inputs:
                raise ValueError(f"missing input {name!r}")
            arr = np.asarray(inputs[name], dtype=dtype)
            if arr.shape != exact and (arr.ndim != ndim or any(arr.shape[i] != d for i, d in fixed)):
                raise ValueError(f"input {name!r}: expected shape {shape}, got {list(arr.shape)}")
            out[name] = arr
        return out

    @cached_property
    def fast_path(self) -> FastPath | None:
        """The shortcut ``ModelHost`` takes for the usual request, when this model allows one."""
        checks = self._input_checks
        if len(checks) != 1:
            return None
        name, dtype, exact, _, _, _ = checks[0]
        if exact is None:
            return None
        direct = None if self._quantized else getattr(self.runtime, "direct", None)
        outputs = tuple(t.name for t in self.manifest.outputs)
        return FastPath(name, dtype, exact, direct, outputs[0] if len(outputs) == 1 else None, outputs)

    @cached_property
    def _input_checks(
        self,
    ) -> list[tuple[str, Any, tuple[int, ...] | None, int, tuple[tuple[int, int], ...], list[int | None]]]:
        """Per input: name, dtype the caller's values become, the whole shape when every
        dimension is fixed (one tuple compare on the hot path), rank, fixed dimensions, declared shape."""
        return [
            (
                t.name,
                np.dtype(np.float32 if t.quantization else _DTYPES[t.dtype]),
                None if None in t.shape else tuple(t.shape),  # type: ignore[arg-type]
                len(t.shape),
                tuple((i, d) for i, d in enumerate(t.shape) if d is not None),
                t.shape,
            )
            for t in self.manifest.inputs
        ]


def load_model(manifest: Manifest, model: bytes, sha256: str, *, threads: int = 1) -> LoadedModel:
    """Load ``model`` (the verified bytes from the bundle) with the manifest's runtime."""
    try:
        if manifest.runtime == "onnx":
            from agent.runtime.onnx_rt import OnnxRuntime

            rt: Runtime = OnnxRuntime(model, manifest, threads=threads)
        elif manifest.runtime == "tflite":
            from agent.runtime.litert import LiteRtRuntime

            rt = LiteRtRuntime(model, manifest, threads=threads)
        else:
            raise ModelLoadError(f"unsupported runtime {manifest.runtime!r}")
    except ModelLoadError:
        raise
    except Exception as exc:  # runtimes raise their own types on bad files
        raise ModelLoadError(f"cannot load {manifest.runtime} model {manifest.name} v{manifest.version}: {exc}") from exc
    return LoadedModel(manifest, sha256, rt, time.time())


FEATURE_ATOL = 1e-6  # golden model inputs vs the feature spec's output for the vector's raw input


def golden_check(model: LoadedModel) -> None:
    """Run the manifest's golden vectors; raise ModelLoadError on any mismatch.

    A vector with a raw input runs the whole serving path: the feature spec must reproduce its
    model inputs (within ``FEATURE_ATOL``) and the model, fed those features, its outputs.
    """
    m = model.manifest
    for i, vec in enumerate(m.golden):
        inputs: dict[str, Any] = vec.inputs
        if vec.raw is not None and m.features is not None:
            inputs = _golden_features(model, i, vec.raw, vec.batch, vec.inputs)
        try:
            got = model.predict(inputs)
        except Exception as exc:
            raise ModelLoadError(f"golden vector {i}: inference failed: {exc}") from exc
        for name, expected in vec.outputs.items():
            if name not in got:
                raise ModelLoadError(f"golden vector {i}: model produced no output {name!r}")
            exp = np.asarray(expected, dtype=np.float64)
            actual = got[name].astype(np.float64)
            if exp.shape != actual.shape:
                raise ModelLoadError(f"golden vector {i}: output {name!r} shape {list(actual.shape)}, expected {list(exp.shape)}")
            err = float(np.max(np.abs(exp - actual))) if exp.size else 0.0
            if err > m.golden_atol:
                raise ModelLoadError(f"golden vector {i}: output {name!r} differs by {err:.6g}, tolerance {m.golden_atol:.6g}")


def _golden_features(
    model: LoadedModel, i: int, raw: Any, batch: Mapping[str, float] | None, expected: dict[str, Any]
) -> dict[str, np.ndarray]:
    try:
        features = model.featurize(np.asarray(raw, dtype=np.float64), batch)
    except ValueError as exc:
        raise ModelLoadError(f"golden vector {i}: the feature spec refused the raw input: {exc}") from exc
    for name, arr in features.items():
        if name not in expected:
            raise ModelLoadError(f"golden vector {i}: no model input {name!r} to compare the features with")
        exp = np.asarray(expected[name], dtype=np.float64)
        if exp.shape != arr.shape:
            raise ModelLoadError(
                f"golden vector {i}: features of shape {list(arr.shape)}, the vector's input is {list(exp.shape)}"
            )
        err = float(np.max(np.abs(exp - arr))) if exp.size else 0.0
        if err > FEATURE_ATOL:
            raise ModelLoadError(
                f"golden vector {i}: features from the raw input differ from its model input by {err:.6g}, "
                f"tolerance {FEATURE_ATOL:g} (feature spec {model.manifest.features.version if model.manifest.features else '-'})"
            )
    return features
