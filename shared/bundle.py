"""Model bundle: one uncompressed tar with ``manifest.json`` and the model file.

The bundle is content-addressed by the sha256 of the whole file. Packing is
deterministic (fixed order, mtime 0) so the same inputs give the same hash.
Reading refuses anything else in the archive (links, directories, traversal,
extra members) and checks the model file against ``manifest.model_sha256``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from shared.errors import BundleError, SchemaError
from shared.manifest import Manifest

__all__ = ["MANIFEST_NAME", "Bundle", "BundleError", "pack", "read", "sha256_file", "target_path"]

MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # bytes
MAX_MODEL_BYTES = 512 * 1024 * 1024  # bytes


def target_path(model: str, version: int) -> str:
    """Where a bundle lives in the image repository (its TUF target path): ``<model>/<version>.tar``."""
    return f"{model}/{version}.tar"


@dataclass(frozen=True)
class Bundle:
    manifest: Manifest
    model: bytes


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pack(manifest: Manifest, model: bytes) -> bytes:
    if hashlib.sha256(model).hexdigest() != manifest.model_sha256:
        raise BundleError("model bytes do not match manifest.model_sha256")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((MANIFEST_NAME, manifest.to_json()), (manifest.model_file, model)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def read(source: bytes | Path) -> Bundle:
    """Parse and check a bundle; raise BundleError on anything unexpected."""
    try:
        fileobj = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise BundleError(f"cannot open bundle: {exc}") from exc
    try:
        with fileobj, tarfile.open(fileobj=fileobj, mode="r:") as tar:
            members = {}
            for m in tar.getmembers():
                if not m.isfile() or "/" in m.name or m.name in members:
                    raise BundleError(f"unexpected bundle member {m.name!r}: only {MANIFEST_NAME} and the model file")
                members[m.name] = m
            if MANIFEST_NAME not in members:
                raise BundleError(f"bundle has no {MANIFEST_NAME}")
            if members[MANIFEST_NAME].size > MAX_MANIFEST_BYTES:
                raise BundleError(f"{MANIFEST_NAME} is {members[MANIFEST_NAME].size} bytes, limit {MAX_MANIFEST_BYTES}")
            raw = _extract(tar, members[MANIFEST_NAME])
            try:
                manifest = Manifest.from_dict(json.loads(raw))
            except (ValueError, RecursionError) as exc:
                if isinstance(exc, SchemaError):
                    raise BundleError(f"invalid manifest: {exc}") from None
                raise BundleError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from None
            if set(members) != {MANIFEST_NAME, manifest.model_file}:
                raise BundleError(f"bundle members {sorted(members)}, expected {[MANIFEST_NAME, manifest.model_file]}")
            if members[manifest.model_file].size > MAX_MODEL_BYTES:
                raise BundleError(f"model file exceeds {MAX_MODEL_BYTES} bytes")
            model = _extract(tar, members[manifest.model_file])
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"bundle is not a valid tar archive: {exc}") from None
    got = hashlib.sha256(model).hexdigest()
    if got != manifest.model_sha256:
        raise BundleError(f"model file sha256 {got[:16]}… does not match manifest {manifest.model_sha256[:16]}…")
    return Bundle(manifest, model)


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    if f is None:
        raise BundleError(f"cannot read bundle member {member.name!r}")
    return f.read()
