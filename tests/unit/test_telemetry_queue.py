"""The on-disk window queue: bounded, oldest dropped and counted, durable across SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from agent.telemetry.queue import WindowQueue

pytestmark = pytest.mark.unit


def test_windows_come_back_oldest_first_and_leave_only_when_acked(tmp_path):
    q = WindowQueue(tmp_path / "q.db", max_windows=10)
    for seq in (5, 3, 9):
        q.put(seq, time.time(), lambda dropped, s=seq: b"w%d" % s)
    assert q.oldest(2) == [(3, b"w3"), (5, b"w5")]
    q.ack([3])
    assert [s for s, _ in q.oldest(10)] == [5, 9]
    assert q.pending() == 2


def test_full_queue_drops_the_oldest_and_the_next_window_reports_how_many(tmp_path):
    q = WindowQueue(tmp_path / "q.db", max_windows=3)
    reported = []

    def render(seq):
        def r(dropped):
            reported.append(dropped["windows_dropped"])
            return b"%d" % seq

        return r

    drops = [q.put(seq, 0.0, render(seq)) for seq in range(6)]
    assert drops == [0, 0, 0, 1, 1, 1]
    assert reported == [0, 0, 0, 0, 1, 1]  # each drop is reported once, by the window stored after it
    assert q.seqs() == [3, 4, 5]
    q.close()
    q2 = WindowQueue(tmp_path / "q.db", max_windows=3)  # the unreported drop survives a restart
    q2.put(6, 0.0, render(6))
    assert reported[-1] == 1


def test_a_failed_render_stores_nothing_and_keeps_the_drop_count(tmp_path):
    q = WindowQueue(tmp_path / "q.db", max_windows=1)
    q.put(1, 0.0, lambda d: b"1")
    q.put(2, 0.0, lambda d: b"2")  # drops 1

    def boom(d):
        raise RuntimeError("encode failed")

    with pytest.raises(RuntimeError):
        q.put(3, 0.0, boom)
    assert q.seqs() == [2]
    seen = []
    q.put(4, 0.0, lambda d: seen.append(d) or b"4")
    assert seen == [{"windows_dropped": 1, "events_dropped": 0}]


def test_committed_windows_survive_sigkill(tmp_path):
    db = tmp_path / "q.db"
    code = textwrap.dedent(
        f"""
        import sys, time
        from agent.telemetry.queue import WindowQueue
        q = WindowQueue(__import__("pathlib").Path({str(db)!r}), max_windows=1000)
        for seq in range(200):
            q.put(seq, 0.0, lambda d, s=seq: b"x" * 100 + str(s).encode())
            if seq == 99:
                print("ready", flush=True)
        time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == b"ready"
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()
    q = WindowQueue(db, max_windows=1000)
    seqs = q.seqs()
    assert seqs[:100] == list(range(100))
    assert seqs == list(range(len(seqs)))  # a prefix: nothing torn, nothing missing
    assert all(payload.endswith(str(s).encode()) for s, payload in q.oldest(1000))
    q.close()
