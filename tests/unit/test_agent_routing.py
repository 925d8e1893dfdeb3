"""Bandit routing on the device: the signed routing object, seeded draws, persistence across restarts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.ota.store import Store
from agent.routing import ArmRouter
from controller.experiments.srm import srm_check
from shared.errors import SchemaError
from shared.messages import Desired, Routing
from shared.schema import Reader

pytestmark = pytest.mark.unit
R = Routing(experiment=3, seed=17, weights={"arm-a": 0.2, "arm-b": 0.8})


def _desired(routing: object) -> dict:
    d = {"schema": 1, "device_id": "pi-1", "counter": 2, "issued_at": 1.0, "expires_at": 2.0, "assignments": {}}
    if routing is not None:
        d["routing"] = routing
    return d


def test_routing_round_trips_in_the_desired_state_and_is_absent_when_unused() -> None:
    d = Desired("pi-1", 2, 1.0, 2.0, {}, routing=R)
    assert Desired.read(Reader(d.to_dict())).routing == R
    plain = Desired("pi-1", 2, 1.0, 2.0, {})
    assert "routing" not in plain.to_dict()  # signs exactly as before routing existed
    assert Desired.read(Reader(plain.to_dict())).routing is None
    assert Desired.read(Reader(_desired({}))).routing is None


@pytest.mark.parametrize(
    "routing, words",
    [
        ({"experiment": 1, "seed": 1, "weights": {"arm-a": 0.5, "production": 0.5}}, "arm role"),
        ({"experiment": 1, "seed": 1, "weights": {"arm-a": 1.0}}, "at least two"),
        ({"experiment": 1, "seed": 1, "weights": {"arm-a": 0.5, "arm-b": 0.2}}, "summing to 1"),
        ({"experiment": 1, "seed": 1, "weights": {"arm-a": 1.5, "arm-b": -0.5}}, "arm-"),
        ({"experiment": 0, "seed": 1, "weights": {"arm-a": 0.5, "arm-b": 0.5}}, "experiment"),
        ({"seed": 1, "weights": {"arm-a": 0.5, "arm-b": 0.5}}, "experiment"),
        ({"experiment": 1, "seed": 1, "weights": "half"}, "weights"),
    ],
)
def test_bad_routing_is_refused_with_the_field_named(routing: dict, words: str) -> None:
    with pytest.raises(SchemaError, match=words):
        Desired.read(Reader(_desired(routing)))


def test_draws_are_seeded_reproducible_and_follow_the_weights() -> None:
    loaded = {"production", "arm-a", "arm-b"}
    a, b = ArmRouter("pi-1"), ArmRouter("pi-1")
    a.set(R)
    b.set(R)
    seq = [a.choose(loaded) for _ in range(20_000)]
    assert seq == [b.choose(loaded) for _ in range(20_000)]
    other = ArmRouter("pi-2")
    other.set(R)
    assert [other.choose(loaded) for _ in range(200)] != seq[:200]
    counts = [seq.count("arm-a"), seq.count("arm-b")]
    assert not srm_check(counts, [0.2, 0.8]).mismatch
    assert np.isclose(counts[1] / len(seq), 0.8, atol=0.02)


def test_only_loaded_arms_serve_and_no_routing_serves_production() -> None:
    r = ArmRouter("pi-1")
    assert r.choose({"arm-a", "arm-b"}) is None and r.snapshot() is None
    r.set(R)
    assert {r.choose({"production", "arm-a"}) for _ in range(100)} == {"arm-a"}
    assert r.choose({"production"}) is None
    r.set(None)
    assert r.choose({"arm-a", "arm-b"}) is None


def test_the_last_routing_survives_a_restart_and_a_desired_state_without_it_ends_it(tmp_path: Path) -> None:
    Store(tmp_path).set_counter(5, "d1", R)
    restarted = Store(tmp_path)
    assert restarted.routing == R and restarted.counter == 5
    restarted.set_counter(6, "d2", None)
    assert Store(tmp_path).routing is None
