"""The predict answer frame built from kept header bytes equals the general encoder's answer."""

from __future__ import annotations

import io

import numpy as np
import pytest

from agent.host import ModelHost
from agent.localapi import framing
from agent.localapi.server import LocalApi
from firmware_sim.modelgen import N_FEATURES
from tests.unit.test_bulk_observation import _model

pytestmark = pytest.mark.unit


def _decode(frame: bytes) -> tuple[dict, dict]:
    got = framing.read_frame(io.BytesIO(frame).read, 1 << 20)
    assert got is not None
    return got


def test_answers_carry_each_call_its_id_and_follow_a_swap() -> None:
    host = ModelHost()
    host.swap("production", _model(3))
    api = LocalApi(host)
    x = np.linspace(0, 16, N_FEATURES, dtype=np.float32).reshape(1, N_FEATURES)
    x.flags.writeable = False
    seen = set()
    for version in (3, 3, 3, 4, 4):
        if version == 4 and host.get().manifest.version == 3:
            host.swap("production", _model(4))
        head, arrays = _decode(api.handle_frame({"op": "predict"}, {"": x}))
        r = host.predict_arrays(x)
        expected = {"ok": True, "model": "tiny", "version": version, "role": "production"}
        assert {k: head[k] for k in expected} == expected
        assert head["tensors"] == [{"name": "probs", "dtype": "float32", "shape": [1, 10]}]
        np.testing.assert_array_equal(arrays["probs"], r.outputs["probs"])
        seen.add(head["prediction_id"])
    assert len(seen) == 5


def test_a_batch_shaped_answer_falls_back_to_the_general_encoder() -> None:
    host = ModelHost()
    host.swap("production", _model(3))
    api = LocalApi(host)
    one, three = np.ones((1, N_FEATURES), np.float32), np.ones((3, N_FEATURES), np.float32)
    for x in (one, three, one):  # the kept bytes describe (1, 10) outputs; (3, 10) must not use them
        head, arrays = _decode(api.handle_frame({"op": "predict"}, {"": x}))
        assert head["ok"] and arrays["probs"].shape == (len(x), 10)
        assert head["tensors"][0]["shape"] == [len(x), 10]
