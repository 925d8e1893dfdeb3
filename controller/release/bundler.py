"""Build a model bundle from a model file: tensor specs read from the model, golden vectors from the real runtime.

The golden outputs are computed by ``agent.runtime`` (the code the agents and
the controller's upload check run), so a bundle built here passes both checks
by construction; ``build`` re-reads the packed bytes with ``shared.bundle.read``
and re-runs ``golden_check`` before returning them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtime import golden_check, litert_interpreter, load_model
from shared import bundle as bundle_fmt
from shared.errors import SchemaError
from shared.features import FeatureSpec
from shared.manifest import MODEL_FILES, GoldenVector, Manifest, Quantization, TensorSpec, check_features

_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32"}
_ONNX_DTYPES["tensor(int64)"] = "int64"


class BuildError(Exception):
    """The model or an option cannot make a valid bundle; the message says which and why."""


@dataclass(frozen=True)
class BuildSpec:
    name: str
    version: int
    label: str = ""
    golden_count: int = 4
    golden_inputs: np.ndarray | None = None  # samples (first axis) to use as golden inputs (raw with features); random when None
    atol: float = 1e-4
    latency_budget_ms: float = 10.0
    preprocessing: dict[str, Any] = field(default_factory=dict)  # free-form notes
    reference: dict[str, Any] = field(default_factory=dict)  # drift reference histograms (manifest.reference)
    lineage: dict[str, Any] = field(default_factory=dict)
    arch: list[str] = field(default_factory=list)
    seed: int = 0
    features: FeatureSpec | None = None  # raw -> model input; golden vectors then start from raw samples
    golden_batch: dict[str, float] | None = None  # batch-feature values joined to the golden raw samples


def runtime_for(path: Path) -> str:
    for runtime, filename in MODEL_FILES.items():
        if path.suffix == Path(filename).suffix:
            return runtime
    raise BuildError(f"{path.name}: cannot tell the runtime from the extension; expected .onnx or .tflite")


def tensor_specs(runtime: str, model: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensors as the runtime sees them (names, dtypes, shapes, int8 quantization)."""
    try:
        if runtime == "onnx":
            return _onnx_specs(model)
        return _tflite_specs(model)
    except BuildError:
        raise
    except Exception as exc:  # runtimes raise their own types on files they cannot parse
        raise BuildError(f"the {runtime} runtime cannot load this model: {' '.join(str(exc).split())[:300]}") from exc


def _onnx_specs(model: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

    def spec(t: Any) -> TensorSpec:
        if t.type not in _ONNX_DTYPES:
            raise BuildError(f"tensor {t.name!r} has type {t.type}; bundles support {sorted(_ONNX_DTYPES.values())}")
        return TensorSpec(t.name, _ONNX_DTYPES[t.type], [d if isinstance(d, int) and d > 0 else None for d in t.shape])

    return [spec(t) for t in sess.get_inputs()], [spec(t) for t in sess.get_outputs()]


def _tflite_specs(model: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
    interp = litert_interpreter()(model_content=model)
    interp.allocate_tensors()

    def spec(d: dict[str, Any]) -> TensorSpec:
        dtype = np.dtype(d["dtype"]).name
        scale, zero = d.get("quantization", (0.0, 0))
        q = Quantization(float(scale), int(zero)) if dtype in ("int8", "uint8") and scale else None
        return TensorSpec(d["name"], dtype, [int(n) if n > 0 else None for n in d["shape"]], q)

    return [spec(d) for d in interp.get_input_details()], [spec(d) for d in interp.get_output_details()]


def _random_input(t: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    shape = [d or 1 for d in t.shape]
    if t.quantization is not None or t.dtype == "float32":
        return rng.random(shape, dtype=np.float32)  # callers send floats; int8 models quantize them
    lo, hi = {"int8": (-128, 127), "uint8": (0, 255)}.get(t.dtype, (0, 100))
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(t.dtype)


def golden_inputs(inputs: list[TensorSpec], spec: BuildSpec) -> list[dict[str, np.ndarray]]:
    if spec.golden_count < 1:
        raise BuildError("--golden-count must be at least 1")
    if spec.golden_inputs is None:
        rng = np.random.default_rng(spec.seed)
        return [{t.name: _random_input(t, rng) for t in inputs} for _ in range(spec.golden_count)]
    if len(inputs) != 1:
        raise BuildError(f"the model has {len(inputs)} inputs; --golden-inputs supports single-input models")
    t = inputs[0]
    shape = [d or 1 for d in t.shape]
    dtype = np.float32 if t.quantization or t.dtype == "float32" else np.dtype(t.dtype)
    rows = []
    for i, sample in enumerate(spec.golden_inputs[: spec.golden_count]):
        x = np.asarray(sample)
        if x.size != int(np.prod(shape)):
            raise BuildError(
                f"golden input {i} has {x.size} values; input {t.name!r} of shape {t.shape} needs {int(np.prod(shape))}"
            )
        rows.append({t.name: x.reshape(shape).astype(dtype)})
    if not rows:
        raise BuildError("--golden-inputs holds no samples")
    return rows


def golden_raw(fs: FeatureSpec, spec: BuildSpec) -> list[np.ndarray]:
    """Raw golden items (each with a leading batch axis of 1): the given samples, or seeded random
    values within the spec's valid ranges."""
    if spec.golden_count < 1:
        raise BuildError("--golden-count must be at least 1")
    shape = fs.input.shape
    if spec.golden_inputs is None:
        rng = np.random.default_rng(spec.seed)
        lo = 0.0 if fs.input.range[0] is None else fs.input.range[0]
        hi = lo + 1.0 if fs.input.range[1] is None else fs.input.range[1]
        return [rng.uniform(lo, hi, size=(1, *shape)).astype(np.float32) for _ in range(spec.golden_count)]
    rows = []
    for i, sample in enumerate(spec.golden_inputs[: spec.golden_count]):
        x = np.asarray(sample)
        if x.size != int(np.prod(shape)):
            raise BuildError(f"golden raw input {i} has {x.size} values; the feature spec's raw input has shape {list(shape)}")
        rows.append(x.reshape((1, *shape)))
    if not rows:
        raise BuildError("--golden-inputs holds no samples")
    return rows


def build(model: bytes, runtime: str, spec: BuildSpec) -> bytes:
    """The bytes of a valid bundle: specs from the model, golden outputs from ``agent.runtime``.

    With ``spec.features`` the golden inputs are raw samples: each vector holds the raw item, the
    model inputs the feature spec makes of it and the outputs, so the health check covers both steps.
    """
    inputs, outputs = tensor_specs(runtime, model)
    if spec.features is not None:
        try:
            check_features(spec.features, inputs, [])
        except SchemaError as exc:
            raise BuildError(str(exc).removeprefix("manifest.")) from None
    draft = Manifest(
        name=spec.name,
        version=spec.version,
        label=spec.label or f"{spec.name} v{spec.version}",
        runtime=runtime,
        model_file=MODEL_FILES[runtime],
        model_sha256=hashlib.sha256(model).hexdigest(),
        inputs=inputs,
        outputs=outputs,
        golden=[],
        golden_atol=spec.atol,
        latency_budget_ms=spec.latency_budget_ms,
        preprocessing=spec.preprocessing,
        reference=spec.reference,
        hardware={"arch": spec.arch} if spec.arch else {},
        lineage=spec.lineage,
        features=spec.features,
    )
    try:
        loaded = load_model(draft, model, "unpacked")
        vectors = []
        if spec.features is not None:
            for raw in golden_raw(spec.features, spec):
                feed = loaded.featurize(raw, spec.golden_batch)
                got = loaded.predict(feed)
                vectors.append(
                    GoldenVector(
                        {k: v.tolist() for k, v in feed.items()},
                        {k: v.tolist() for k, v in got.items()},
                        raw=raw.tolist(),
                        batch=dict(spec.golden_batch) if spec.golden_batch else None,
                    )
                )
        for feed in golden_inputs(inputs, spec) if spec.features is None else ():
            got = loaded.predict(feed)
            vectors.append(GoldenVector({k: v.tolist() for k, v in feed.items()}, {k: v.tolist() for k, v in got.items()}))
        manifest = Manifest.from_dict(replace(draft, golden=vectors).to_dict())
        data = bundle_fmt.pack(manifest, model)
        golden_check(load_model(bundle_fmt.read(data).manifest, model, "check"))
    except BuildError:
        raise
    except Exception as exc:  # runtime and schema errors: say which step refused the model
        raise BuildError(f"cannot build {spec.name} v{spec.version}: {' '.join(str(exc).split())[:300]}") from exc
    return data
