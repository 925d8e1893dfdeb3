"""When an agent refreshes its image-repository metadata while nothing installs (agent/ota/refresh.py, ADR 0082):
an interval after the listing it holds, jittered ±20 %; soon (spread out) when the listing is overdue; a doubling,
capped, jittered backoff after failures; never when turned off."""

from __future__ import annotations

import random

import pytest

from agent.ota.refresh import BACKOFF_BASE_S, JITTER, RefreshSchedule

pytestmark = pytest.mark.unit
NOW = 1_000_000.0
EVERY = 1800.0


def fixed(x: float) -> RefreshSchedule:
    return RefreshSchedule(EVERY, rng=lambda: x)


@pytest.mark.parametrize(("r", "interval"), [(0.0, EVERY * 0.8), (0.5, EVERY), (0.999999, EVERY * 1.2)])
def test_an_interval_is_jittered_by_a_fifth_either_way(r, interval):
    assert fixed(r).interval_s() == pytest.approx(interval, abs=0.01)


def test_jittered_intervals_stay_within_their_bounds_and_use_the_whole_range():
    s = RefreshSchedule(EVERY, rng=random.Random(1).random)
    got = [s.interval_s() for _ in range(2000)]
    assert min(got) >= EVERY * (1 - JITTER) and max(got) <= EVERY * (1 + JITTER)
    assert min(got) < EVERY * 0.81 and max(got) > EVERY * 1.19


def test_the_next_refresh_is_an_interval_after_the_listing_the_device_holds():
    assert fixed(0.5).after_listing(NOW - 100, NOW) == NOW - 100 + EVERY  # e.g. an install refreshed it 100 s ago
    assert fixed(0.0).after_listing(NOW - 100, NOW) == NOW - 100 + EVERY * 0.8


@pytest.mark.parametrize("verified", [NOW - 10 * EVERY, NOW - EVERY * 1.25, NOW + 600])  # old, overdue, future
def test_an_overdue_or_future_listing_is_refreshed_soon_but_spread_out(verified):
    assert fixed(0.0).after_listing(verified, NOW) == NOW
    assert fixed(0.999999).after_listing(verified, NOW) == pytest.approx(NOW + 2 * JITTER * EVERY, abs=0.01)


def test_agents_started_together_do_not_refresh_together():
    """A fleet back after a night off (a simulated fleet: agents in one process, each with its own generator)."""
    old = NOW - 8 * 3600
    due = sorted(RefreshSchedule(EVERY, rng=random.Random(i).random).after_listing(old, NOW) or 0.0 for i in range(1000))
    assert due[0] >= NOW and due[-1] <= NOW + 2 * JITTER * EVERY
    per_minute = [sum(1 for t in due if NOW + m * 60 <= t < NOW + (m + 1) * 60) for m in range(12)]
    assert max(per_minute) < 2 * 1000 / 12, per_minute  # roughly uniform: no minute holds twice its share


def test_the_backoff_doubles_from_a_minute_up_to_the_interval():
    s = fixed(0.5)  # no jitter at the midpoint
    assert [s.backoff_s(n) for n in (1, 2, 3, 4, 5, 6, 100)] == [60, 120, 240, 480, 960, EVERY, EVERY]
    assert s.after_failure(2, NOW) == NOW + 2 * BACKOFF_BASE_S


def test_the_backoff_is_jittered_and_never_longer_than_a_jittered_interval():
    assert fixed(0.0).backoff_s(1) == pytest.approx(BACKOFF_BASE_S * 0.8)
    assert fixed(0.999999).backoff_s(1) == pytest.approx(BACKOFF_BASE_S * 1.2, abs=0.01)
    assert fixed(0.999999).backoff_s(50) <= EVERY * (1 + JITTER)


def test_a_short_interval_backs_off_from_the_interval_itself():
    s = RefreshSchedule(2.0, rng=lambda: 0.5)
    assert [s.backoff_s(n) for n in (1, 2, 10)] == [2.0, 2.0, 2.0]
    assert s.after_listing(NOW - 1, NOW) == NOW + 1


def test_a_device_that_never_refreshed_waits_for_its_first_install():
    assert fixed(0.5).after_listing(None, NOW) is None


def test_zero_turns_the_refresh_off():
    s = RefreshSchedule(0.0, rng=lambda: 0.5)
    assert not s.enabled
    assert s.after_listing(None, NOW) is None and s.after_listing(NOW - 10, NOW) is None
    assert s.after_failure(1, NOW) is None


def test_a_negative_interval_is_refused():
    with pytest.raises(ValueError, match="every_s >= 0"):
        RefreshSchedule(-1.0, rng=random.random)
