"""Batch features on the wire and on the device: carried in the signed desired state, kept across
restarts, and resolved to the values in force at each instant."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.batch import BatchFeatures
from agent.ota.checks import RejectedError, check_desired
from agent.ota.store import Store
from controller.fleet.director import Director
from shared.canonical import canonical_json
from shared.features import BatchFeatureValue
from shared.messages import MAX_DESIRED_FEATURES, Assignment, Desired
from shared.schema import Reader
from shared.signing import key_id

pytestmark = pytest.mark.unit
T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
A = Assignment("digits", 1, "a" * 64, 10, "http://x/b")


def val(value: float, start_s: float, end_s: float | None = None, scope: str = "device:d1") -> BatchFeatureValue:
    end = None if end_s is None else T0 + timedelta(seconds=end_s)
    return BatchFeatureValue("dark_level", value, T0 + timedelta(seconds=start_s), end, scope)


def test_the_device_resolves_values_in_force_and_switches_at_their_edges():
    now = [T0.timestamp() - 1]
    batch = BatchFeatures(clock=lambda: now[0])
    assert batch.current() == {}
    batch.set([val(1.0, 0, 10), val(2.0, 5), val(0.5, 0, scope="fleet")])
    assert batch.current() == {}
    for t, want in ((0, 1.0), (4.999, 1.0), (5, 2.0), (10, 2.0), (1000, 2.0)):
        now[0] = T0.timestamp() + t
        assert batch.current() == {"dark_level": want}, t
    batch.set([val(3.0, 0)])  # a new desired state replaces the values at once
    assert batch.current() == {"dark_level": 3.0}
    assert batch.snapshot() == {"in_force": {"dark_level": 3.0}, "values": 1}


def test_desired_state_carries_features_signed_and_omits_them_when_none():
    key = Ed25519PrivateKey.generate()
    director = Director(key)
    plain = director.sign_desired("d1", 1, {"production": A}, 3600)
    assert "features" not in plain["signed"]  # desired states without features sign exactly as before
    history = [val(1.0, 0, 10), val(2.0, 5)]
    env = director.sign_desired("d1", 2, {"production": A}, 3600, features=history)
    assert env["signed"]["features"][0] == history[0].to_wire()
    trusted = {key_id(key.public_key()): key.public_key()}
    desired = check_desired(canonical_json(env), device_id="d1", trusted=trusted, last_counter=1, at=env["signed"]["issued_at"])
    assert desired.features == tuple(history)
    env["signed"]["features"][1]["value"] = 99.0  # tampered in transit
    with pytest.raises(RejectedError):
        check_desired(canonical_json(env), device_id="d1", trusted=trusted, last_counter=1, at=env["signed"]["issued_at"])


def test_a_desired_state_with_malformed_features_is_refused_with_the_field_named():
    signed = Desired("d1", 1, 0.0, 1.0, {"production": A}, features=(val(1.0, 0),)).to_dict()
    signed["features"][0]["scope"] = "planet:mars"
    with pytest.raises(ValueError, match=r"desired.features\[0\].scope"):
        Desired.read(Reader(signed, "desired"))
    signed["features"] = [val(1.0, 0).to_wire()] * (MAX_DESIRED_FEATURES + 1)
    with pytest.raises(ValueError, match="features"):
        Desired.read(Reader(signed, "desired"))


def test_the_store_keeps_the_values_across_a_restart(tmp_path):
    history = [val(1.0, 0, 10), val(2.0, 5, scope="cohort:north")]
    Store(tmp_path).set_counter(3, "digest", None, history)
    again = Store(tmp_path)
    assert again.batch_features == history and again.counter == 3
    again.set_counter(4, "d2", None)
    assert Store(tmp_path).batch_features == []


def test_agent_status_shows_the_values_in_force():
    from agent.status import render

    text = render({"batch_features": {"in_force": {"dark_level": 2.0}, "values": 3}}, now=0.0)
    assert "features   dark_level=2 (3 values on hand)" in text
    assert "features" not in render({"batch_features": {"in_force": {}, "values": 0}}, now=0.0)
