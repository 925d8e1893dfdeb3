import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.ota.checks import RejectedError, check_desired
from controller.fleet.director import Director
from shared.messages import Assignment
from shared.signing import key_id

pytestmark = pytest.mark.unit
A = {"production": Assignment(model="digits", version=1, sha256="ab" * 32, length=10, url="http://x/b")}


@pytest.fixture
def director():
    return Director(Ed25519PrivateKey.generate())


def trusted(d):
    k = d._key.public_key()
    return {key_id(k): k}


def payload(env):
    return json.dumps(env).encode()


def check(d, env, last=0, device="pi-1", at=None):
    return check_desired(payload(env), device_id=device, trusted=trusted(d), last_counter=last, at=at or time.time())


def test_valid_desired(director):
    d = check(director, director.sign_desired("pi-1", 5, A, 60))
    assert d.counter == 5 and d.assignments["production"].version == 1


def test_wrong_device(director):
    with pytest.raises(RejectedError, match="for device 'pi-2'"):
        check(director, director.sign_desired("pi-2", 1, A, 60))


def test_replayed_counter(director):
    with pytest.raises(RejectedError, match="replayed or old desired state: counter 3, expected > 3"):
        check(director, director.sign_desired("pi-1", 3, A, 60), last=3)


def test_expired(director):
    with pytest.raises(RejectedError, match="expired"):
        check(director, director.sign_desired("pi-1", 1, A, 60), at=time.time() + 61)


def test_other_director(director):
    other = Director(Ed25519PrivateKey.generate())
    with pytest.raises(RejectedError, match="unknown key"):
        check(director, other.sign_desired("pi-1", 1, A, 60))


def test_tampered_hash(director):
    env = director.sign_desired("pi-1", 1, A, 60)
    env["signed"]["assignments"]["production"]["sha256"] = "cd" * 32
    with pytest.raises(RejectedError, match="Invalid signature"):
        check(director, env)


@pytest.mark.parametrize("raw", [b"", b"null", b"[1]", b'{"signed": {}, "signatures": []}', b"\x00" * 10])
def test_garbage(director, raw):
    with pytest.raises(RejectedError):
        check_desired(raw, device_id="pi-1", trusted=trusted(director), last_counter=0, at=time.time())


def test_a_verifying_function_as_trust_accepts_and_refuses(director):
    # The agent's default: the update process verifies signatures (worker.verify), check_desired gets a function.
    from shared.errors import SignatureError
    from shared.signing import verify_document

    def verify(envelope):
        return verify_document(envelope, trusted(director))

    env = director.sign_desired("pi-1", 2, A, 60)
    d = check_desired(payload(env), device_id="pi-1", trusted=verify, last_counter=0, at=time.time())
    assert d.counter == 2

    def refuse(envelope):
        raise SignatureError("no director key signed it")

    with pytest.raises(RejectedError, match="no director key signed it"):
        check_desired(payload(env), device_id="pi-1", trusted=refuse, last_counter=0, at=time.time())
