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
    # Healed: every window queued through the outage was stored and acknowledged, so it left the agent's disk.
    assert r.drained, (
        f"not stored: {sorted(r.stored_during_outage - r.windows.keys())}; "
        f"stored but never acknowledged to the agent: {sorted(r.left & r.stored_during_outage)}; log:\n{r.log_tail}"
    )
    assert r.heal_s is not None and r.heal_s < 30, f"healed after {r.heal_s} s"
    assert len(r.stored_before_kill) >= 6, "the outage did not leave windows queued before the kill"
    assert len(r.stored_during_outage) >= len(r.stored_before_kill) + 6, "the restarted agent queued too little"
    assert r.malformed == 0
    assert r.agents_alive_at_end
    # Exactly once after dedupe by seq: one seq per (boot, window index), no gaps within a boot.
    assert len(r.by_boot) == 2
    for boot, indices in r.by_boot.items():
        assert len(indices) == len(set(indices)), f"boot {boot}: one window under two seqs"
        assert sorted(indices) == list(range(max(indices) + 1)), f"boot {boot}: windows missing: {sorted(indices)}"
    # The clean stop sends the partial last window and waits for its ack: nothing is left on the agent's disk.
    assert not r.left, f"left unacknowledged on the agent's disk at the clean stop: {sorted(r.left)}; log:\n{r.log_tail}"
    assert r.recovered_ratio == 1.0, f"stored {r.stored} of {len(r.closed)}"
    assert r.stored == len(r.windows), "every window received was stored once"
    # Windows tile time within a boot: no overlap, no hole.
    for boot in r.by_boot:
        ws = sorted((w for w in r.windows.values() if w.agent["boot"] == boot), key=lambda w: w.agent["window"])
        for a, b in itertools.pairwise(ws):
            assert b.window_start == pytest.approx(a.window_start + a.window_s, abs=0.002)
    assert r.received >= len(r.windows)  # QoS 1 may deliver twice; the receiver keeps one per seq
