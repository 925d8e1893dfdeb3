"""One leader among replicas on a real database (SQLite file; PostgreSQL when configured)."""

from __future__ import annotations

import time

import pytest

from controller.core.db import make_engine
from controller.core.leader import Leader, LeaderContext

pytestmark = pytest.mark.integration


def test_one_leader_and_a_takeover_with_a_new_term_when_it_stops_renewing(engine, database_url) -> None:
    other_engine = make_engine(database_url)  # a second replica: its own connections
    a = Leader(engine, identity="a", lease_s=2.0)
    b = Leader(other_engine, identity="b", lease_s=2.0)
    try:
        t0 = 1_000_000.0
        assert a.campaign(now=t0) is True
        assert b.campaign(now=t0 + 0.1) is False
        assert b.status().holder == "a"
        assert a.campaign(now=t0 + 1.0) is True, "the holder renews"
        assert b.campaign(now=t0 + 2.5) is False, "renewed at t0+1: valid until t0+3"
        # a dies (no more renewals): once its lease has expired, b takes over in a new term
        assert b.campaign(now=t0 + 3.1) is True
        assert b.status().term == a.status().term + 1
        assert a.campaign(now=t0 + 3.2) is False, "the old leader learns it lost"
        assert a.status().holder == "b"
    finally:
        other_engine.dispose()


def test_jobs_run_only_on_the_leader_and_a_failing_job_does_not_stop_the_others(engine) -> None:
    ran: list[tuple[str, int]] = []

    def good(ctx: LeaderContext) -> None:
        assert ctx.still_leader()
        ran.append(("good", ctx.term))

    def bad(ctx: LeaderContext) -> None:
        raise RuntimeError("boom")

    follower = Leader(engine, identity="f", lease_s=5.0)
    leader = Leader(engine, identity="l", lease_s=5.0)
    for x in (leader, follower):
        x.add_job("bad", 60, bad)
        x.add_job("good", 60, good)
    assert leader.campaign() and not follower.campaign()
    follower.run_due()
    assert ran == []
    leader.run_due()
    assert ran == [("good", 1)]
    st = leader.status().jobs
    assert st["bad"]["failures"] == 1 and "boom" in str(st["bad"]["last_error"])
    leader.run_due()
    assert ran == [("good", 1)], "not due again before its interval"


def test_the_background_loop_takes_the_lease_and_hands_it_over_on_stop(engine) -> None:
    a = Leader(engine, identity="a", lease_s=1.0, tick_s=0.05)
    b = Leader(engine, identity="b", lease_s=1.0, tick_s=0.05)
    a.start()
    try:
        deadline = time.monotonic() + 10
        while not a.is_leader and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.is_leader
        b.start()
        time.sleep(0.5)
        assert not b.is_leader
        a.stop()  # releases the lease: b leads at its next campaign (every lease_s / 3)
        deadline = time.monotonic() + 10
        while not b.is_leader and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.is_leader and b.status().term == 2
    finally:
        a.stop()
        b.stop()
