"""Store-and-forward: broker down for several windows, the agent SIGKILLed and restarted
meanwhile, broker back: every stored window reaches the receiver exactly once (dedupe by seq)."""

from __future__ import annotations

import itertools

import pytest

from firmware_sim.outage import run_outage

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WINDOW_S = 0.5


def test_windows_survive_broker_outage_and_agent_sigkill(tmp_path):
    r = run_outage(tmp_path, window_s=WINDOW_S, down_windows=6)
    assert r.drained, f"missing {sorted(r.stored_during_outage - r.windows.keys())}; log:\n{r.log_tail}"
    assert len(r.stored_before_kill) >= 6, "the outage did not leave windows queued before the kill"
    assert len(r.stored_during_outage) >= len(r.stored_before_kill) + 6, "the restarted agent queued too little"
    assert r.malformed == 0
    assert r.agents_alive_at_end
    # Exactly once after dedupe by seq: one seq per (boot, window index), no gaps within a boot.
    assert len(r.by_boot) == 2
    for boot, indices in r.by_boot.items():
        assert len(indices) == len(set(indices)), f"boot {boot}: one window under two seqs"
        assert sorted(indices) == list(range(max(indices) + 1)), f"boot {boot}: windows missing: {sorted(indices)}"
    assert r.recovered_ratio == 1.0
    # Windows tile time within a boot: no overlap, no hole.
    for boot in r.by_boot:
        ws = sorted((w for w in r.windows.values() if w.agent["boot"] == boot), key=lambda w: w.agent["window"])
        for a, b in itertools.pairwise(ws):
            assert b.window_start == pytest.approx(a.window_start + a.window_s, abs=0.002)
    assert r.received >= len(r.windows)  # QoS 1 may deliver twice; the receiver keeps one per seq
