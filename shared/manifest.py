"""The bundle manifest (``manifest.json``): what a model is and how to check it.

See DESIGN "Model bundle". Validation is strict: a manifest that does not parse
here is refused by both the controller (at upload) and the agent (at install).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from shared.errors import SchemaError
from shared.features import FeatureSpec
from shared.messages import validate_sha256
from shared.schema import Reader

MANIFEST_SCHEMA = 1
RUNTIMES = ("onnx", "tflite")
DTYPES = ("float32", "int8", "uint8", "int32", "int64")
MODEL_FILES = {"onnx": "model.onnx", "tflite": "model.tflite"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Quantization:
    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: list[int | None]  # None (or -1 in JSON) for a dynamic dimension
    quantization: Quantization | None = None

    @classmethod
    def read(cls, r: Reader) -> TensorSpec:
        shape: list[int | None] = []
        for i, d in enumerate(r.array("shape", max_items=8)):
            if d is None or d == -1:
                shape.append(None)
            elif isinstance(d, int) and not isinstance(d, bool) and d > 0:
                shape.append(d)
            else:
                raise SchemaError(f"{r.where}.shape[{i}]: expected a positive integer or -1, got {d!r}")
        q = r.obj("quantization", optional=True)
        return cls(
            name=r.string("name", max_len=256),
            dtype=r.string("dtype", choices=DTYPES),
            shape=shape,
            quantization=None if q is None else Quantization(q.number("scale", minimum=0), q.integer("zero_point")),
        )


@dataclass(frozen=True)
class GoldenVector:
    """One input with the output the model must reproduce within ``atol``.

    With a feature spec, ``raw`` (nested list, leading batch axis) and ``batch`` (batch-feature
    values) are the raw item the spec turns into ``inputs``: the health check runs that step too.
    """

    inputs: dict[str, Any]  # tensor name -> nested list
    outputs: dict[str, Any]  # tensor name -> nested list
    raw: Any = None  # raw input before the feature spec; None: the vector covers the model only
    batch: dict[str, float] | None = None  # batch-feature values joined for ``raw``

    @classmethod
    def read(cls, r: Reader) -> GoldenVector:
        batch = r.raw_obj("batch", optional=True) or None
        for k, v in (batch or {}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SchemaError(f"{r.where}.batch.{k}: expected a number, got {v!r:.40}")
        raw = r.data.get("raw")
        if raw is not None and not isinstance(raw, list):
            raise SchemaError(f"{r.where}.raw: expected a nested list (a leading batch axis, then the raw item)")
        return cls(inputs=r.raw_obj("inputs"), outputs=r.raw_obj("outputs"), raw=raw, batch=batch)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"inputs": self.inputs, "outputs": self.outputs}
        if self.raw is not None:  # absent otherwise: manifests without features stay byte-identical
            d["raw"] = self.raw
        if self.batch:
            d["batch"] = self.batch
        return d


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int  # monotonic release counter per model name
    label: str
    runtime: str  # onnx | tflite
    model_file: str
    model_sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    golden: list[GoldenVector]
    golden_atol: float
    latency_budget_ms: float
    preprocessing: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)  # drift reference histograms
    hardware: dict[str, Any] = field(default_factory=dict)  # e.g. {"arch": ["x86_64", "aarch64"]}
    lineage: dict[str, Any] = field(default_factory=dict)
    features: FeatureSpec | None = None  # raw input -> model input (shared/features.py); None: apps send model inputs
    schema: int = MANIFEST_SCHEMA

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        r = Reader(data, "manifest")
        r.schema_version(MANIFEST_SCHEMA)
        name = r.string("name", max_len=128)
        if not _NAME.match(name):
            raise SchemaError(f"manifest.name: {name!r} must be lowercase letters, digits, '.', '_' or '-'")
        runtime = r.string("runtime", choices=RUNTIMES)
        model_file = r.string("model_file", max_len=64)
        if model_file != MODEL_FILES[runtime]:
            raise SchemaError(f"manifest.model_file: expected {MODEL_FILES[runtime]!r} for runtime {runtime}, got {model_file!r}")
        golden_r = r.obj("golden")
        assert golden_r is not None
        vectors = []
        for i, v in enumerate(golden_r.array("vectors", max_items=1000)):
            vectors.append(GoldenVector.read(Reader(v, f"manifest.golden.vectors[{i}]")))
        if not vectors:
            raise SchemaError("manifest.golden.vectors: at least one golden vector is required")
        inputs = [TensorSpec.read(Reader(t, f"manifest.inputs[{i}]")) for i, t in enumerate(r.array("inputs", max_items=64))]
        outputs = [TensorSpec.read(Reader(t, f"manifest.outputs[{i}]")) for i, t in enumerate(r.array("outputs", max_items=64))]
        if not inputs or not outputs:
            raise SchemaError("manifest: at least one input and one output tensor are required")
        features = None if r.data.get("features") is None else FeatureSpec.from_dict(r.data["features"])
        if features is not None:
            check_features(features, inputs, vectors)
        return cls(
            name=name,
            version=r.integer("version", minimum=1),
            label=r.string("label", optional=True, max_len=256) or "",
            runtime=runtime,
            model_file=model_file,
            model_sha256=validate_sha256(r.string("model_sha256"), "manifest.model_sha256"),
            inputs=inputs,
            outputs=outputs,
            golden=vectors,
            golden_atol=golden_r.number("atol", minimum=0),
            latency_budget_ms=r.number("latency_budget_ms", minimum=0),
            preprocessing=r.raw_obj("preprocessing", optional=True),
            reference=r.raw_obj("reference", optional=True),
            hardware=r.raw_obj("hardware", optional=True),
            lineage=r.raw_obj("lineage", optional=True),
            features=features,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, golden=[], features=None))
        d.pop("golden")
        d["golden"] = {"vectors": [v.to_dict() for v in self.golden], "atol": d.pop("golden_atol")}
        if self.features is None:
            d.pop("features")  # absent, so manifests without a feature spec are byte-identical to before
        else:
            d["features"] = self.features.to_dict()
        return d

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True).encode()

    def supports(self, arch: str) -> bool:
        archs = self.hardware.get("arch")
        return not archs or arch in archs


def check_features(spec: FeatureSpec, inputs: list[TensorSpec], vectors: list[GoldenVector]) -> None:
    """A feature spec must feed the model's one input: float (or quantized) values of the shape it makes."""
    if len(inputs) != 1:
        raise SchemaError(f"manifest.features: a feature spec feeds a single-input model; this one has {len(inputs)} inputs")
    t = inputs[0]
    if t.dtype != "float32" and t.quantization is None:
        raise SchemaError(f"manifest.features: input {t.name!r} is {t.dtype} without quantization; features are float32")
    item = t.shape[1:]
    out = spec.output_shape
    if len(item) != len(out) or any(d is not None and d != o for d, o in zip(item, out, strict=True)):
        raise SchemaError(
            f"manifest.features: the steps make items of shape {list(out)}; input {t.name!r} of shape {t.shape} "
            f"takes items of shape {item} after its batch axis"
        )
    declared = {b.name for b in spec.batch}
    for i, v in enumerate(vectors):
        unknown = set(v.batch or {}) - declared
        if unknown:
            raise SchemaError(f"manifest.golden.vectors[{i}].batch: {sorted(unknown)} are not batch features of the spec")
