"""The rollback fast path's rule (agent/ota/agreement.py ``vouched``): it says yes only for what the last refresh,
recent and unexpired, listed in agreement with the assignment; everything else means "ask the repository"."""

from __future__ import annotations

import pytest

from agent.ota.agreement import remember, vouched
from shared.messages import Assignment

pytestmark = pytest.mark.unit
SHA = "ab" * 32
A = Assignment("digits", 3, SHA, 100, "http://x/b.tar")
NOW = 1_000_000.0


def listing(tmp_path, *, custom=None, at=NOW - 10, expires=NOW + 3600, length=100, sha=SHA, path="digits/3.tar"):
    c = {"model": "digits", "version": 3, "floor": 1, "hardware": {}} if custom is None else custom
    remember(tmp_path, {path: {"length": length, "sha256": sha, "custom": c}}, verified_at=at, expires_at=expires)


def test_a_recent_listing_that_agrees_vouches(tmp_path):
    listing(tmp_path)
    ok, how = vouched(tmp_path, A, arch="x86_64", now=NOW, max_age=60)
    assert ok and how == "listed by the image repository 10 s ago"


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"at": NOW - 61}, "last refresh 61 s ago (at most 60 s)"),
        ({"at": NOW + 5}, "last refresh -5 s ago"),  # a clock that went back: not trusted
        ({"expires": NOW}, "has expired"),
        ({"path": "digits/2.tar"}, "did not list digits/3.tar"),
        ({"sha": "cd" * 32}, "mix-and-match"),
        ({"length": 101}, "director assigned length 100"),
        ({"custom": {"model": "digits", "version": 3, "floor": 4}}, "below the signed version floor 4"),
        ({"custom": {"model": "digits", "version": 3, "hardware": {"arch": ["aarch64"]}}}, "wrong hardware"),
        ({"custom": {"model": "digits", "version": 2}}, "lists digits/3.tar as digits v2"),
        ({"custom": {"version": 3}}, "lacks edgefleet data"),
    ],
)
def test_anything_else_means_ask_the_repository(tmp_path, kw, why):
    listing(tmp_path, **kw)
    ok, how = vouched(tmp_path, A, arch="x86_64", now=NOW, max_age=60)
    assert not ok and why in how


def test_no_record_a_corrupt_one_or_a_zero_age_never_vouch(tmp_path):
    assert vouched(tmp_path, A, arch="x86_64", now=NOW, max_age=60) == (False, "no refresh recorded")
    (tmp_path / "listing.json").write_text("{not json")
    assert not vouched(tmp_path, A, arch="x86_64", now=NOW, max_age=60)[0]
    listing(tmp_path)
    assert vouched(tmp_path, A, arch="x86_64", now=NOW, max_age=0) == (False, "turned off")


@pytest.mark.parametrize(
    ("at", "max_age"),
    [(NOW, 60), (NOW - 60, 60), (NOW - 1, 1)],
    ids=["refreshed-this-instant", "exactly-max-age-ago", "max-age-of-one-second"],
)
def test_a_refresh_from_zero_to_max_age_seconds_ago_vouches(tmp_path, at, max_age):
    listing(tmp_path, at=at)
    assert vouched(tmp_path, A, arch="x86_64", now=NOW, max_age=max_age)[0]


def test_a_release_signed_for_this_hardware_vouches(tmp_path):
    listing(tmp_path, custom={"model": "digits", "version": 3, "floor": 1, "hardware": {"arch": ["aarch64", "x86_64"]}})
    assert vouched(tmp_path, A, arch="x86_64", now=NOW, max_age=60)[0]


def test_expired_metadata_is_named_as_the_reason(tmp_path):
    listing(tmp_path, expires=NOW)
    assert vouched(tmp_path, A, arch="x86_64", now=NOW, max_age=60) == (False, "the metadata of the last refresh has expired")
