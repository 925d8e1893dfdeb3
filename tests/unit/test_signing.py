import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.canonical import canonical_json
from shared.errors import SignatureError
from shared.signing import generate_private_key_file, key_id, load_private_key_file, sign_document, verify_document

pytestmark = pytest.mark.unit


def trusted(*keys):
    return {key_id(k.public_key()): k.public_key() for k in keys}


def test_canonical_json_is_stable():
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_sign_and_verify():
    k = Ed25519PrivateKey.generate()
    env = sign_document({"device_id": "a", "counter": 1}, k)
    assert verify_document(env, trusted(k)) == {"device_id": "a", "counter": 1}


def test_tampered_document_fails():
    k = Ed25519PrivateKey.generate()
    env = sign_document({"counter": 1}, k)
    env["signed"]["counter"] = 2
    with pytest.raises(SignatureError, match="Invalid signature"):
        verify_document(env, trusted(k))


def test_unknown_key_fails():
    k, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError, match="unknown key"):
        verify_document(sign_document({"a": 1}, other), trusted(k))


@pytest.mark.parametrize(
    "env",
    [None, [], {"signed": 1}, {"signed": {}}, {"signed": {}, "signatures": []}, {"signed": {}, "signatures": [1, {"keyid": 2}]}],
)
def test_malformed_envelopes(env):
    with pytest.raises(SignatureError):
        verify_document(env, trusted(Ed25519PrivateKey.generate()))


def test_key_file_is_private(tmp_path):
    path = tmp_path / "keys" / "k.pem"
    k = generate_private_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert key_id(load_private_key_file(path).public_key()) == key_id(k.public_key())


def test_uncanonicalizable_documents_fail_as_signature_errors():
    k = Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError, match="cannot be canonicalized"):
        verify_document({"signed": {"x": float("inf")}, "signatures": [{"keyid": "a", "sig": "00"}]}, trusted(k))
