"""Binary tensor frames and predict_batch on the real SocketServer serving a real int8 ONNX model."""

from __future__ import annotations

import json
import socket
import struct

import numpy as np
import pytest

from agent.localapi import framing
from agent.localapi.client import AgentClient
from agent.localapi.server import MAX_REQUEST_BYTES, LocalApi, SocketServer
from firmware_sim.modelgen import load_digits
from tests.otalab import Lab

pytestmark = pytest.mark.integration


@pytest.fixture
def served(tmp_path, make_bundle):
    lab = Lab(tmp_path / "lab")
    up = lab.updater(tmp_path / "dev")
    up.apply(lab.desired("lab-dev", lab.publish(make_bundle(1))))
    server = SocketServer(tmp_path / "agent.sock", LocalApi(up.host))
    server.start()
    yield server.path, up.host
    server.stop()
    lab.close()


def _raw(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    return s


def _read_answer(s):
    f = s.makefile("rb")
    try:
        return framing.read_frame(f.read, 1 << 20)
    finally:
        f.close()


def test_binary_predict_matches_json_and_mixes_on_one_connection(served):
    path, host = served
    x, _ = load_digits()
    with AgentClient(path) as c:
        j = c.predict(x[:1].tolist())
        b = c.predict_array(x[:1])
        assert c.info()["ok"]  # JSON after binary on the same connection
        b2 = c.predict_array({"input": x[1:2]})  # named input
    assert j["ok"] and b["ok"] and b2["ok"]
    assert b["model"] == j["model"] == "digits" and b["version"] == j["version"] == 1
    assert b["prediction_id"] != j["prediction_id"]
    probs = b["outputs"]["probs"]
    assert probs.dtype == np.float32 and probs.shape == (1, 10)
    np.testing.assert_array_equal(probs, np.asarray(j["outputs"]["probs"], dtype=np.float32))
    np.testing.assert_array_equal(b2["outputs"]["probs"], host.predict_arrays(x[1:2]).outputs["probs"])


def test_predict_batch_binary_and_json(served):
    path, host = served
    x, _ = load_digits()
    batch = x[:5].reshape(5, 1, 64)
    with AgentClient(path) as c:
        b = c.predict_batch(batch)
        j = c.call({"op": "predict_batch", "inputs": [batch[0].tolist(), [[1.0, 2.0]], batch[2].tolist()]})
        empty = c.predict_batch(np.zeros((0, 1, 64), np.float32))
    assert b["ok"] and len(set(b["prediction_ids"])) == 5
    assert b["outputs"]["probs"].shape == (5, 1, 10)
    for i in range(5):
        np.testing.assert_array_equal(b["outputs"]["probs"][i], host.predict_arrays(batch[i]).outputs["probs"])
    assert j["ok"] and j["model"] == "digits" and len(j["predictions"]) == 3
    assert "expected shape" in j["predictions"][1]["error"]  # one bad item; the others are answered
    np.testing.assert_array_equal(np.asarray(j["predictions"][2]["outputs"]["probs"], np.float32), b["outputs"]["probs"][2])
    assert empty["ok"] and empty["prediction_ids"] == []


def test_request_errors_keep_the_connection(served):
    path, _ = served
    x, _ = load_digits()
    with AgentClient(path) as c:
        wrong_shape = c.predict_array(np.zeros((1, 63), np.float32))
        assert not wrong_shape["ok"] and "expected shape" in wrong_shape["error"]
        no_role = c.predict_array(x[:1], role="shadow")
        assert not no_role["ok"] and "no model loaded in role 'shadow'" in no_role["error"]
        ragged = c.predict_batch({"input": np.zeros((2, 1, 64), np.float32), "other": np.zeros((3,), np.float32)})
        assert not ragged["ok"] and "batch axis" in ragged["error"]
        s = c._sock  # a readable frame with an unknown op
        s.sendall(framing.encode({"op": "dance"}))
        assert "unknown op" in _read_answer(s)[0]["error"]
        assert c.predict_array(x[:1])["ok"]
        assert c.call({"op": "predict_batch", "inputs": 3})["error"].startswith("bad input")


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x00EFX" + struct.pack("<I", 2) + b"{}", "bad frame magic"),
        (framing.PREFIX.pack(framing.MAGIC, framing.MAX_HEADER_BYTES + 1), "larger than"),
        (framing.PREFIX.pack(framing.MAGIC, 5) + b"nope!", "not JSON"),
        (framing.PREFIX.pack(framing.MAGIC, 2) + b"[]", "must be a JSON object"),
        (framing.encode({"op": "predict", "tensors": [{"name": "", "dtype": "complex64", "shape": [1]}]}), "dtype"),
        (framing.encode({"op": "predict", "tensors": [{"name": "", "dtype": "float32", "shape": [-1, 64]}]}), "shape"),
        (framing.encode({"op": "predict", "tensors": [{"name": "", "dtype": "float32", "shape": "1x64"}]}), "shape"),
        (
            framing.encode({"op": "predict", "tensors": [{"name": "", "dtype": "float32", "shape": [MAX_REQUEST_BYTES, 2]}]}),
            "larger than",
        ),
    ],
)
def test_bad_frames_get_an_error_then_close_and_others_carry_on(served, payload, message):
    path, _ = served
    x, _ = load_digits()
    with AgentClient(path) as other:  # a connection open across the bad one
        assert other.predict_array(x[:1])["ok"]
        s = _raw(path)
        s.sendall(payload)
        head, _data = _read_answer(s)
        assert head["ok"] is False and head["error"].startswith("bad frame") and message in head["error"], head
        assert s.recv(1) == b""  # closed: the stream is out of step
        s.close()
        assert other.predict_array(x[:1])["ok"]
        assert other.info()["ok"]


def test_truncated_frames_do_not_hurt_the_server(served):
    path, _ = served
    x, _ = load_digits()
    whole = framing.encode({"op": "predict"}, [("", x[:1])])
    for cut in (1, 3, 6, 12, len(whole) - 1):
        s = _raw(path)
        s.sendall(whole[:cut])
        s.shutdown(socket.SHUT_WR)
        rest = s.makefile("rb").read()
        if rest:  # the prefix arrived: an error frame says what was missing
            head = json.loads(rest[8:])
            assert head["ok"] is False and "truncated" in head["error"]
        s.close()
    with AgentClient(path) as c:
        assert c.predict_array(x[:1])["ok"]


def test_routed_production_requests_say_which_arm_served(served):
    from shared.messages import Routing

    path, host = served
    host.swap("arm-b", host.get("production"))
    host.router.set(Routing(experiment=1, seed=2, weights={"arm-b": 1.0}))
    x, _ = load_digits()
    with AgentClient(path) as c:
        assert c.predict_array(x[:1])["role"] == "arm-b"
        assert c.predict(x[:1].tolist())["role"] == "arm-b"
        b = c.predict_batch(x[:2].reshape(2, 1, 64))
        j = c.call({"op": "predict_batch", "inputs": [x[:1].tolist()]})
    assert b["roles"] == ["arm-b", "arm-b"] and b["versions"] == [1, 1]
    assert j["predictions"][0]["role"] == "arm-b"
