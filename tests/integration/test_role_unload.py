"""A role the desired state no longer names is unloaded by the agent, its slots and bundle dropped, and reported."""

from __future__ import annotations

import pytest

from shared.canonical import canonical_json
from tests.otalab import Lab

pytestmark = pytest.mark.integration


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path / "lab")
    yield lab
    lab.close()


def _desired(lab: Lab, roles: dict) -> bytes:
    lab.counter += 1
    return canonical_json(lab.director.sign_desired("lab-dev", lab.counter, roles, 3600))


def test_a_role_dropped_from_the_desired_state_is_unloaded_and_reported(lab, tmp_path, make_bundle):
    changes = []
    up = lab.updater(tmp_path / "dev")
    up.on_change = lambda: changes.append(sorted(up.running()))
    a1, a2 = lab.publish(make_bundle(1)), lab.publish(make_bundle(2))
    up.apply(_desired(lab, {"production": a1, "shadow": a2}))
    assert {r: m.version for r, m in up.running().items()} == {"production": 1, "shadow": 2}
    assert up.store.bundle_path(a2.sha256).exists()

    changes.clear()
    up.apply(_desired(lab, {"production": a1}))
    assert {r: m.version for r, m in up.running().items()} == {"production": 1}
    assert up.store.slot("shadow") is None and "shadow" not in up.store.state["roles"]
    assert not up.store.bundle_path(a2.sha256).exists()  # nothing refers to it any more
    assert up.store.bundle_path(a1.sha256).exists()
    ev = lab.last("role.unloaded")
    assert ev["detail"] == {"role": "shadow", "model": "digits", "version": 2}
    assert changes and changes[-1] == ["production"]  # the retained status is published again
    assert up.ota_status()["converged"] is True

    lab.events.clear()
    up.apply(_desired(lab, {"production": a1}))  # nothing left to unload: no event
    assert "role.unloaded" not in lab.kinds()


def test_the_unloaded_role_stays_gone_after_a_restart(lab, tmp_path, make_bundle):
    a1, a2 = lab.publish(make_bundle(1)), lab.publish(make_bundle(2))
    up = lab.updater(tmp_path / "dev")
    up.apply(_desired(lab, {"production": a1, "shadow": a2}))
    up.apply(_desired(lab, {"production": a1}))
    again = lab.updater(tmp_path / "dev")  # a new agent process on the same data directory
    again.restore()
    assert {r: m.version for r, m in again.running().items()} == {"production": 1}
