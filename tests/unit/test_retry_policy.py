"""When the agent tries a failed assignment again (agent/ota/retry.py, pure)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from agent.ota.retry import Convergence


@given(st.integers(1, 200), st.floats(0.1, 10), st.floats(10, 5000), st.floats(0, 1))
def test_backoff_is_jittered_and_capped(n: int, base: float, cap: float, u: float) -> None:
    c = Convergence(base, cap, rng=lambda: u)
    d = c.delay_s(n)
    assert base / 10 <= d <= min(cap, base * 2 ** (n - 1)) + 1e-9


def test_a_fleet_failing_together_does_not_retry_together() -> None:
    rng = random.Random(1)
    times = []
    for _ in range(200):
        c = Convergence(5, 3600, rng=rng.random)
        for _ in range(6):
            f = c.failed("production", "a" * 64, 2, "controller unreachable", permanent=False, now=0.0)
        assert f.retry_at is not None
        times.append(f.retry_at)
    assert max(times) - min(times) > 100 and len({round(t) for t in times}) > 100


def test_transient_failures_come_due_permanent_ones_wait_for_a_change() -> None:
    c = Convergence(10, 100, rng=lambda: 1.0)
    t = c.failed("production", "a" * 64, 2, "download cut", permanent=False, now=0.0)
    assert t.retry_at == 10 and not c.due("production", "a" * 64, 5) and c.due("production", "a" * 64, 10)
    assert c.failed("production", "a" * 64, 2, "again", permanent=False, now=10).retry_at == 30  # doubled
    c.reconnected(now=12)
    assert c.due("production", "a" * 64, 12)  # the network is back: now
    c.failed("canary", "b" * 64, 3, "below the version floor", permanent=True, now=0)
    assert not c.due("canary", "b" * 64, 10**9)
    c.reconnected(now=20)
    assert not c.due("canary", "b" * 64, 10**9)  # reconnecting does not change a refusal
    assert c.due("canary", "c" * 64, 0)  # another assignment for the role is tried at once
    c.changed()  # new desired state or new release metadata
    assert c.due("canary", "b" * 64, 0)
    assert [f.role for f in c.pending()] == ["production"]
    c.forget_others({"production": "z" * 64})
    assert c.pending() == [] and c.next_due() is None
