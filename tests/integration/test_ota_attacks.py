"""Every attack on the update path, one test each, with real keys, real TUF metadata,
real HTTP and real int8 bundles. Each rejection must leave the running model
untouched and be reported as an event naming the reason.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from securesystemslib.signer import CryptoSigner

from agent.ota.state import State
from controller.release.imagerepo import public_key
from shared import bundle as bundle_fmt
from shared.manifest import Manifest
from tests.otalab import Lab

pytestmark = pytest.mark.integration


def repack(bundle: bytes, **changes) -> bytes:
    b = bundle_fmt.read(bundle)
    d = b.manifest.to_dict()
    d.update(changes)
    return bundle_fmt.pack(Manifest.from_dict(d), b.model)


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path / "lab")
    yield lab
    lab.close()


@pytest.fixture
def v1(make_bundle):
    return make_bundle(1)


@pytest.fixture
def v2(make_bundle):
    return make_bundle(2)


@pytest.fixture
def device(lab, tmp_path, v1):
    """An updater already serving v1 (committed through the whole verified path)."""
    up = lab.updater(tmp_path / "dev")
    up.apply(lab.desired("lab-dev", lab.publish(v1)))
    assert up.store.ota.state is State.COMMITTED, lab.events
    assert up.host.get().manifest.version == 1
    lab.events.clear()
    return up


def assert_still_v1(lab, up, reason_fragment: str) -> None:
    ev = [e for e in lab.events if e["kind"] in ("ota.rejected", "desired.rejected")]
    assert ev, "no rejection event"
    assert reason_fragment in ev[-1]["message"], ev[-1]["message"]
    assert up.host.get().manifest.version == 1
    assert up.store.slot("production").version == 1
    assert up.store.slot("production", "candidate") is None
    assert up.store.ota.state in (State.IDLE, State.COMMITTED)
    assert not up.store.partial_downloads()


def attempt(lab, up, a, **kw):
    up.apply(lab.desired("lab-dev", a, **kw))


# --- happy path -----------------------------------------------------------------


def test_verified_update_commits_and_keeps_the_old_bundle_as_previous(lab, device, v1, v2):
    attempt(lab, device, lab.publish(v2))
    assert device.store.ota.state is State.COMMITTED
    assert device.store.ota.history == ("DOWNLOADING", "VERIFYING", "STAGED", "ACTIVATING", "HEALTH_CHECK", "COMMITTED")
    assert device.host.get().manifest.version == 2
    assert device.store.slot("production").version == 2
    assert device.store.slot("production", "previous").version == 1
    assert "ota.committed" in lab.kinds()
    assert device.running()["production"].version == 2


# --- arbitrary software ----------------------------------------------------------


def test_bad_signature_on_targets_metadata_is_rejected(lab, device, v2):
    a = lab.publish(v2)
    version = lab.repo.md["targets"].signed.version
    name = f"{version}.targets.json"
    doc = json.loads((lab.repo.metadata_dir / name).read_bytes())
    doc["signed"]["targets"]["digits/2.tar"]["custom"]["floor"] = 0
    doc["signed"]["targets"]["digits/2.tar"]["length"] += 1  # the signatures no longer cover this
    lab.server.faults.replace[name] = json.dumps(doc).encode()
    attempt(lab, device, a)
    assert_still_v1(lab, device, "UnsignedMetadataError")


def test_release_signed_by_unknown_keys_is_rejected(lab, device, v2):
    strangers = [CryptoSigner.generate_ed25519() for _ in range(2)]
    attempt(lab, device, lab.publish(v2, signers=strangers))
    assert_still_v1(lab, device, "UnsignedMetadataError")


def test_bundle_not_listed_by_the_image_repository_is_rejected(lab, device, v2):
    (lab.bundle_dir / "x").write_bytes(b"")
    attempt(lab, device, lab.assignment(v2))  # the director alone cannot release software
    assert_still_v1(lab, device, "does not list digits/2.tar")


# --- rollback ----------------------------------------------------------------------


def test_version_below_the_signed_floor_is_rejected(lab, device, v1, v2):
    attempt(lab, device, lab.publish(v2))
    assert device.host.get().manifest.version == 2
    lab.repo.set_floor("digits", 2, signers=lab.keys.release[:2], online=lab.keys.online)
    lab.events.clear()
    attempt(lab, device, lab.assignment(v1))
    ev = lab.last("ota.rejected")
    assert "below the signed version floor 2" in ev["message"]
    assert device.host.get().manifest.version == 2


def test_replayed_older_assignment_is_rejected(lab, device, v1, v2):
    old = lab.desired("lab-dev", lab.assignment(v1))  # an older signed assignment, captured
    lab.publish(v2)
    attempt(lab, device, lab.assignment(v2))
    assert device.host.get().manifest.version == 2
    device.apply(old)
    ev = lab.last("desired.rejected")
    assert "replayed or old desired state" in ev["message"]
    assert device.host.get().manifest.version == 2


# --- freeze ----------------------------------------------------------------------------


def test_expired_metadata_is_rejected(lab, device, v2):
    a = lab.publish(v2)
    lab.repo.expiry["timestamp"] = timedelta(seconds=-60)
    lab.repo.timestamp(lab.keys.online)  # a validly signed but expired timestamp (a frozen mirror)
    attempt(lab, device, a)
    assert_still_v1(lab, device, "ExpiredMetadataError")


# --- mix-and-match ----------------------------------------------------------------------


def test_assignment_hash_differing_from_the_image_repository_is_rejected(lab, device, v2, make_bundle):
    lab.publish(v2)
    other = make_bundle(2, seed=7)  # also "digits v2", but not what the release keys signed
    (lab.bundle_dir / f"{lab.assignment(other).sha256}.tar").write_bytes(other)
    attempt(lab, device, lab.assignment(other))
    assert_still_v1(lab, device, "mix-and-match")


# --- endless data ----------------------------------------------------------------------


def test_bundle_longer_than_declared_is_cut_off(lab, device, v2):
    a = lab.publish(v2)
    lab.server.faults.extra_bytes = 4 * 1024 * 1024
    attempt(lab, device, a)
    assert_still_v1(lab, device, "exceeds the signed length")


def test_oversized_metadata_is_refused(lab, device, v2):
    a = lab.publish(v2)
    lab.server.faults.replace["timestamp.json"] = b"{" + b" " * (1024 * 1024) + b"}"
    attempt(lab, device, a)
    assert_still_v1(lab, device, "DownloadLengthMismatchError")


# --- slow retrieval ---------------------------------------------------------------------


def test_download_below_the_minimum_speed_is_abandoned(lab, tmp_path, v1, v2):
    up = lab.updater(tmp_path / "slow", min_speed=20_000, grace=0.3)
    up.apply(lab.desired("lab-dev", lab.publish(v1)))
    assert up.host.get().manifest.version == 1
    lab.events.clear()
    lab.server.faults.trickle = 0.05  # ~1.3 kB/s
    attempt(lab, up, lab.publish(v2))
    assert_still_v1(lab, up, "SlowRetrievalError")


# --- wrong hardware ---------------------------------------------------------------------


def test_release_for_other_hardware_is_rejected(lab, device, v2):
    attempt(lab, device, lab.publish(v2, hardware={"arch": ["riscv64"]}))
    assert_still_v1(lab, device, "wrong hardware")


# --- key rotation -------------------------------------------------------------------------


def test_root_rotation_signed_by_the_threshold_is_accepted(lab, device, v2):
    new = [CryptoSigner.generate_ed25519() for _ in range(3)]
    lab.repo.rotate_root(
        new_root_keys=[public_key(s) for s in new], threshold=2, old_signers=lab.keys.root[:2], new_signers=new[:2]
    )
    attempt(lab, device, lab.publish(v2))
    assert device.store.ota.state is State.COMMITTED, lab.events
    assert device.host.get().manifest.version == 2
    assert (device.store.root / "tuf" / "root_history" / "2.root.json").exists()


def test_root_rotation_signed_below_the_threshold_is_refused(lab, device, v2):
    new = [CryptoSigner.generate_ed25519() for _ in range(3)]
    lab.repo.rotate_root(
        new_root_keys=[public_key(s) for s in new], threshold=2, old_signers=lab.keys.root[:1], new_signers=new[:2]
    )
    attempt(lab, device, lab.publish(v2))
    assert_still_v1(lab, device, "UnsignedMetadataError")
    assert not (device.store.root / "tuf" / "root_history" / "2.root.json").exists()


def test_one_release_key_below_the_threshold_cannot_sign_a_release(lab, device, v2):
    attempt(lab, device, lab.publish(v2, signers=lab.keys.release[:1]))
    assert_still_v1(lab, device, "UnsignedMetadataError")


# --- on-disk tampering, health check, rollback -------------------------------------------------


def test_bundle_altered_on_disk_is_never_loaded_and_previous_serves(lab, device, tmp_path, v2):
    attempt(lab, device, lab.publish(v2))
    assert device.host.get().manifest.version == 2
    path = device.store.bundle_path(device.store.slot("production").sha256)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    lab.events.clear()
    again = lab.updater(tmp_path / "dev")  # the agent restarts on the same disk
    again.restore()
    assert again.host.get().manifest.version == 1
    assert "altered on disk" in lab.last("slot.invalid")["message"]
    assert again.store.slot("production").version == 1
    assert "failed verification" in again.running()["production"].reason


def test_golden_vector_mismatch_rolls_back_with_the_reason(lab, device, v2):
    m = bundle_fmt.read(v2).manifest.to_dict()
    vec = m["golden"]["vectors"][0]
    vec["outputs"]["probs"] = [[1.0] + [0.0] * 9]
    bad = repack(v2, golden=m["golden"])
    attempt(lab, device, lab.publish(bad))
    assert device.store.ota.state is State.ROLLED_BACK
    ev = lab.last("ota.rolled_back")
    assert "golden vector 0" in ev["message"]
    assert device.host.get().manifest.version == 1
    assert device.store.slot("production").version == 1
    assert "rolled back: health check failed: golden vector 0" in device.running()["production"].reason
    assert device.ota_status()["state"] == "ROLLED_BACK"


def test_latency_budget_overrun_rolls_back(lab, device, v2):
    attempt(lab, device, lab.publish(repack(v2, latency_budget_ms=1e-6)))
    assert device.store.ota.state is State.ROLLED_BACK
    assert "exceeds the budget" in lab.last("ota.rolled_back")["message"]
    assert device.host.get().manifest.version == 1


# --- interrupted downloads ---------------------------------------------------------------------


def test_interrupted_download_resumes_with_range(lab, device, v2):
    a = lab.publish(v2)
    lab.server.faults.fail_after = 10_000
    attempt(lab, device, a)
    assert device.store.ota.state is State.COMMITTED, lab.events
    assert lab.server.faults.range_requests == ["bytes=10000-"]
    assert device.host.get().manifest.version == 2


def _batch_one_only(bundle: bytes, version: int) -> bytes:
    """A bundle that passes its golden vectors (batch 1) but fails on live batches of 2."""
    import hashlib

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "batch1",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 10])],
        [numpy_helper.from_array(np.array([1, 64], np.int64), "shape"), numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    d = bundle_fmt.read(bundle).manifest.to_dict()
    x = np.zeros((1, 64), np.float32)
    d.update(
        version=version,
        model_sha256=hashlib.sha256(data).hexdigest(),
        inputs=[{"name": "input", "dtype": "float32", "shape": [-1, 64]}],
        outputs=[{"name": "probs", "dtype": "float32", "shape": [-1, 10]}],
        golden={
            "vectors": [{"inputs": {"input": x.tolist()}, "outputs": {"probs": sess.run(None, {"input": x})[0].tolist()}}],
            "atol": 1e-5,
        },
    )
    return bundle_fmt.pack(Manifest.from_dict(d), data)


def test_live_inference_errors_after_the_switch_roll_back(lab, tmp_path, v1):
    import threading
    import time

    from agent.config import HealthConfig

    up = lab.updater(tmp_path / "live")
    up.apply(lab.desired("lab-dev", lab.publish(v1)))
    assert up.host.get().manifest.version == 1
    up.health = HealthConfig(live_inferences=1000, live_window=10.0, latency_runs=3)  # wait for live traffic
    stop = threading.Event()
    outcomes = []

    def traffic():
        while not stop.is_set():
            try:
                outcomes.append(up.host.predict([[0.0] * 64, [0.5] * 64])["version"])
            except Exception as exc:
                outcomes.append(type(exc).__name__)
            time.sleep(0.002)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        up.apply(lab.desired("lab-dev", lab.publish(_batch_one_only(v1, 2))))
    finally:
        stop.set()
        t.join(10)
    assert up.store.ota.state is State.ROLLED_BACK
    assert "live inferences failed" in lab.last("ota.rolled_back")["message"]
    assert up.host.get().manifest.version == 1 and up.store.slot("production").version == 1
    assert any(o not in (1, "ValueError") for o in outcomes)  # the candidate's runtime failures reached clients
    assert up.host.predict([[0.0] * 64])["version"] == 1  # the old model serves again
