"""Going back to a model the device still holds (a rollback): no download, and no refresh on the critical path.

A real TUF repository and HTTP server (tests/otalab.py), the real updater. A bundle
already on the device installs again without asking the image repository only while
its last refresh, recent enough, listed it (ADR 0073); otherwise the repository is
asked as for any install, and the bundle is still not downloaded again.
"""

from __future__ import annotations

import json

import pytest

from agent.ota.state import State
from tests.otalab import Lab

pytestmark = [pytest.mark.integration]


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path / "lab")
    yield lab
    lab.close()


def installed(lab: Lab, up, payload: bytes) -> None:
    up.apply(payload)
    assert up.store.ota.state is State.COMMITTED, (up.store.ota, lab.events[-3:])


def two_versions(lab: Lab, tmp_path, make_bundle, max_age: float):
    a1, a2 = lab.publish(make_bundle(1)), lab.publish(make_bundle(2))
    up = lab.updater(tmp_path / "dev", vouched_max_age=max_age)
    installed(lab, up, lab.desired("lab-dev", a1))
    installed(lab, up, lab.desired("lab-dev", a2))  # the candidate; v1 is the previous slot now
    lab.server.requests.clear()
    lab.events.clear()
    return up, a1, a2


def test_a_rollback_to_the_previous_model_asks_nothing_of_the_network(lab, tmp_path, make_bundle):
    up, a1, _ = two_versions(lab, tmp_path, make_bundle, max_age=3600)
    installed(lab, up, lab.desired("lab-dev", a1))
    assert lab.server.requests == []  # no metadata refresh, no bundle download
    assert "ota.downloading" not in lab.kinds() and "listed by the image repository" in lab.last("ota.stored")["message"]
    assert up.host.roles()["production"].manifest.version == 1
    assert up.store.slot("production").version == 1 and up.store.slot("production", "previous").version == 2


def test_with_the_fast_path_off_or_a_listing_too_old_the_repository_is_asked_but_nothing_downloaded(lab, tmp_path, make_bundle):
    up, a1, a2 = two_versions(lab, tmp_path, make_bundle, max_age=0)
    installed(lab, up, lab.desired("lab-dev", a1))
    assert any(p.startswith("/metadata/") for p in lab.server.requests)
    assert not any(p.startswith("/bundles/") for p in lab.server.requests), lab.server.requests
    assert lab.last("ota.downloading")["message"] == "on this device already, no download"

    up.vouched_max_age = 3600
    listing = tmp_path / "dev" / "tuf" / "listing.json"
    data = json.loads(listing.read_text())
    listing.write_text(json.dumps({**data, "verified_at": data["verified_at"] - 7200}))  # two hours old
    lab.server.requests.clear()
    installed(lab, up, lab.desired("lab-dev", a2))
    assert any(p.startswith("/metadata/") for p in lab.server.requests) and "ota.stored" not in lab.kinds()


def test_the_fast_path_follows_the_latest_refresh_a_delisted_version_is_refused(lab, tmp_path, make_bundle):
    up, a1, _ = two_versions(lab, tmp_path, make_bundle, max_age=3600)
    lab.repo.stage_revoke("digits", 1, floor=1)  # the release keys take v1 out of the targets
    lab.repo.resign_targets(lab.keys.release[: lab.keys.release_threshold], lab.keys.online)
    assert up.steps.image_repo.metadata_digest()  # any refresh (an install, a metadata poll) records the new listing
    up.apply(lab.desired("lab-dev", a1))
    assert up.store.ota.state is State.IDLE and "does not list digits/1.tar" in lab.last("ota.rejected")["message"]
    assert "ota.stored" not in lab.kinds()
    assert up.host.roles()["production"].manifest.version == 2  # the running model is untouched


def test_a_refresh_while_nothing_installs_keeps_the_fast_path_usable(lab, tmp_path, make_bundle):
    """ADR 0082: the listing of the last install ages out; a refresh on its own (what the agent does every
    ``refresh_s``) records a new one, and the rollback then takes the fast path again."""
    up, a1, _ = two_versions(lab, tmp_path, make_bundle, max_age=600)
    listing = tmp_path / "dev" / "tuf" / "listing.json"
    data = json.loads(listing.read_text())
    listing.write_text(json.dumps({**data, "verified_at": data["verified_at"] - 7200}))  # the install was long ago
    out = up.refresher.refresh()
    assert out is not None and out.ok and not out.changed  # nothing new was released
    status = up.ota_status()["metadata"]
    assert status["ok"] is True and status["verified_at"] > data["verified_at"] - 60 and status["failures"] == 0
    lab.server.requests.clear()
    installed(lab, up, lab.desired("lab-dev", a1))
    assert lab.server.requests == [] and "listed by the image repository" in lab.last("ota.stored")["message"]


def test_a_failed_refresh_is_reported_backs_off_and_changes_nothing_served(lab, tmp_path, make_bundle):
    up, a1, _ = two_versions(lab, tmp_path, make_bundle, max_age=600)
    up.refresher.schedule.every_s = 1800.0  # as configured by default
    listing = tmp_path / "dev" / "tuf" / "listing.json"
    before = listing.read_bytes()
    lab.server.faults.replace["timestamp.json"] = b"not metadata"  # what a broken or hostile server sends
    first = up.refresher.refresh()
    second = up.refresher.refresh()
    assert first is not None and not first.ok and "not refreshed" in first.reason
    assert second is not None and second.failures == 2
    status = up.ota_status()["metadata"]
    assert status["ok"] is False and status["failures"] == 2 and "not refreshed" in status["reason"]
    assert 120 * 0.8 <= status["next_at"] - second.at <= 120 * 1.2  # the second backoff step
    assert listing.read_bytes() == before  # the last good listing stays the record
    assert up.host.roles()["production"].manifest.version == 2 and up.store.slot("production").version == 2
    del lab.server.faults.replace["timestamp.json"]
    again = up.refresher.refresh()
    assert again is not None and again.ok and up.ota_status()["metadata"]["failures"] == 0
    lab.server.requests.clear()
    installed(lab, up, lab.desired("lab-dev", a1))  # the listing is fresh again: the fast path
    assert lab.server.requests == []
