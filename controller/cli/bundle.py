"""``edgefleet bundle ...``: build a model bundle from a model file, and look inside one (no controller needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from controller.cli.common import CliError, JsonOpt, json_arg, out, read_file
from shared import bundle as bundle_fmt
from shared.errors import ProtocolError

app = typer.Typer(help="Model bundles: build one from a model file, inspect one.", no_args_is_help=True)


def _golden_samples(golden: str) -> np.ndarray | None:
    if golden == "auto":
        return None
    path = Path(golden)
    data = read_file(path, "golden inputs file")
    try:
        if path.suffix == ".npy":
            import io

            return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))
        return np.asarray(json_arg(f"@{golden}", "golden inputs file"), dtype=np.float64)
    except CliError:
        raise
    except Exception as exc:  # numpy's own errors on a malformed file
        raise CliError(f"golden inputs file {golden!r} is not a .npy array or a JSON list of samples: {exc}", "input") from None


@app.command("build")
def bundle_build(
    model_file: Annotated[Path, typer.Argument(help="the model: .onnx or .tflite (int8 or float)")],
    name: Annotated[str, typer.Option(help="model name: lowercase letters, digits, '.', '_', '-'")],
    version: Annotated[int, typer.Option(min=1, help="release counter, higher than any version already registered")],
    label: Annotated[str, typer.Option(help="a human label")] = "",
    golden: Annotated[str, typer.Option(help="'auto' (seeded random inputs) or a .npy / JSON file of sample inputs")] = "auto",
    golden_count: Annotated[int, typer.Option(min=1, max=1000, help="how many golden vectors")] = 4,
    atol: Annotated[float, typer.Option(min=0, help="tolerance of the golden check")] = 1e-4,
    latency_budget_ms: Annotated[float, typer.Option(min=0, help="median latency the health check allows")] = 10.0,
    features: Annotated[
        str | None, typer.Option(help="feature spec (docs/features.md): JSON, or @FILE; golden samples are then raw")
    ] = None,
    preprocessing: Annotated[str | None, typer.Option(help="free-form preprocessing notes: JSON object, or @FILE")] = None,
    lineage: Annotated[str | None, typer.Option(help="lineage (dataset_sha256, code_version, metrics...): JSON or @FILE")] = None,
    arch: Annotated[list[str] | None, typer.Option(help="supported CPU architecture (repeatable); default any")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="bundle path (default NAME-vVERSION.tar)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a bundle: tensor specs read from the model, golden outputs computed by the agent's runtime."""
    from controller.release.bundler import BuildError, BuildSpec, build, runtime_for

    model = read_file(model_file, "model file")
    from shared.features import FeatureSpec, FeatureSpecError

    feat = json_arg(features, "--features") if features else None
    pre = json_arg(preprocessing, "--preprocessing") if preprocessing else {}
    lin = json_arg(lineage, "--lineage") if lineage else {}
    for what, value in (("--features", feat or {}), ("--preprocessing", pre), ("--lineage", lin)):
        if not isinstance(value, dict):
            raise CliError(f"{what} must be a JSON object", "input")
    try:
        fspec = None if feat is None else FeatureSpec.from_dict(feat)
    except FeatureSpecError as exc:
        raise CliError(f"--features: {exc}", "input") from None
    spec = BuildSpec(
        name=name,
        version=version,
        label=label,
        golden_count=golden_count,
        golden_inputs=_golden_samples(golden),
        atol=atol,
        latency_budget_ms=latency_budget_ms,
        preprocessing=pre,
        lineage=lin,
        arch=arch or [],
        features=fspec,
    )
    try:
        data = build(model, runtime_for(model_file), spec)
    except BuildError as exc:
        raise CliError(str(exc), "input") from None
    dest = output or Path(f"{name}-v{version}.tar")
    try:
        dest.write_bytes(data)
    except OSError as exc:
        raise CliError(f"cannot write {str(dest)!r}: {exc.strerror or exc}", "input") from None
    info = _summary(bundle_fmt.read(data), data, str(dest))
    what = f"{name} v{version}, {info['runtime']}, {info['golden']} golden vectors, sha256 {info['sha256'][:12]}"
    out(info, as_json, text=f"wrote {dest} ({what})")


def _summary(b: bundle_fmt.Bundle, data: bytes, path: str) -> dict[str, Any]:
    import hashlib

    m = b.manifest
    return {
        "path": path,
        "sha256": hashlib.sha256(data).hexdigest(),
        "length": len(data),
        "name": m.name,
        "version": m.version,
        "label": m.label,
        "runtime": m.runtime,
        "golden": len(m.golden),
        "manifest": m.to_dict(),
    }


@app.command("inspect")
def bundle_inspect(
    bundle: Annotated[Path, typer.Argument(help="a bundle (.tar)")],
    verify: Annotated[bool, typer.Option(help="also run the golden vectors with the real runtime")] = True,
    as_json: JsonOpt = False,
) -> None:
    """What a bundle holds: manifest summary, tensors, lineage; with --verify the golden check result."""
    data = read_file(bundle, "bundle")
    try:
        b = bundle_fmt.read(data)
    except ProtocolError as exc:
        raise CliError(f"{bundle} is not a valid bundle: {exc}", "input") from None
    info = _summary(b, data, str(bundle))
    if verify:
        from agent.runtime import ModelLoadError, golden_check, load_model

        try:
            golden_check(load_model(b.manifest, b.model, info["sha256"]))
            info["golden_check"] = "ok"
        except ModelLoadError as exc:
            info["golden_check"] = f"failed: {exc}"
    m = b.manifest
    t = Table("field", "value", show_header=False)
    for k, v in (
        ("bundle", f"{info['path']} ({info['length']} bytes, sha256 {info['sha256']})"),
        ("model", f"{m.name} v{m.version} - {m.label}"),
        ("runtime", f"{m.runtime} ({m.model_file}, sha256 {m.model_sha256[:12]})"),
        ("inputs", ", ".join(f"{x.name} {x.dtype}{x.shape}" for x in m.inputs)),
        ("outputs", ", ".join(f"{x.name} {x.dtype}{x.shape}" for x in m.outputs)),
        ("golden", f"{len(m.golden)} vectors, atol {m.golden_atol:g}" + (f", check {info['golden_check']}" if verify else "")),
        ("latency budget", f"{m.latency_budget_ms:g} ms"),
        ("features", "-" if m.features is None else repr(m.features)),
        ("hardware", str(m.hardware or "any")),
        ("lineage", str(m.lineage or "-")),
    ):
        t.add_row(k, v)
    out(info, as_json, t)
    if verify and info["golden_check"] != "ok":
        raise CliError(f"{bundle}: golden check {info['golden_check']}", "input")
