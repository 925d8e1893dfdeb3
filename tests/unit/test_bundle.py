import io
import json
import tarfile

import pytest

from shared import bundle
from shared.errors import BundleError

pytestmark = pytest.mark.unit


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_round_trip_is_deterministic(onnx_bundle):
    b = bundle.read(onnx_bundle)
    assert b.manifest.runtime == "onnx"
    assert bundle.pack(b.manifest, b.model) == onnx_bundle


def test_tampered_model_is_refused(onnx_bundle):
    b = bundle.read(onnx_bundle)
    raw = _tar([("manifest.json", b.manifest.to_json()), ("model.onnx", b.model[:-1] + b"\0")])
    with pytest.raises(BundleError, match="does not match manifest"):
        bundle.read(raw)


def test_extra_and_traversal_members_are_refused(onnx_bundle):
    b = bundle.read(onnx_bundle)
    for extra in ("../evil", "x.sh"):
        raw = _tar([("manifest.json", b.manifest.to_json()), ("model.onnx", b.model), (extra, b"x")])
        with pytest.raises(BundleError, match="unexpected bundle member|bundle members"):
            bundle.read(raw)


@pytest.mark.parametrize("raw", [b"", b"garbage" * 100, _tar([("model.onnx", b"x")]), _tar([("manifest.json", b"{")])])
def test_garbage_is_refused(raw):
    with pytest.raises(BundleError):
        bundle.read(raw)


def test_invalid_manifest_names_the_field(onnx_bundle):
    b = bundle.read(onnx_bundle)
    m = json.loads(b.manifest.to_json())
    m["runtime"] = "torch"
    with pytest.raises(BundleError, match="manifest.runtime"):
        bundle.read(_tar([("manifest.json", json.dumps(m).encode()), ("model.onnx", b.model)]))
