"""Device events wait in the telemetry queue until a controller acknowledges them (ADR 0078)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.telemetry.queue import WindowQueue
from agent.telemetry.sender import Sender
from shared.topics import Kind

pytestmark = pytest.mark.unit


class FakeLink:
    def __init__(self) -> None:
        self.connected, self.connects = True, 1
        self.published: list[tuple[Kind, bytes]] = []
        self.on_published = self.on_window_ack = None

    def publish_bytes(self, kind: Kind, payload: bytes) -> int | None:
        if not self.connected:
            return None
        self.published.append((kind, payload))
        return len(self.published)


def test_events_are_bounded_and_the_next_window_reports_the_dropped_ones_once(tmp_path: Path) -> None:
    q = WindowQueue(tmp_path / "q.db", max_windows=10, max_events=3)
    drops = [q.put_event(seq, 0.0, b"e%d" % seq) for seq in range(5)]
    assert drops == [0, 0, 0, 1, 1]
    assert q.event_seqs() == [2, 3, 4] and q.events(2) == [(2, b"e2"), (3, b"e3")]
    assert q.pending() == 3
    q.close()
    q = WindowQueue(tmp_path / "q.db", max_windows=10, max_events=3)  # the drops survive a restart
    reported: list[dict[str, int]] = []
    q.put(10, 0.0, lambda d: reported.append(d) or b"w10")
    q.put(11, 0.0, lambda d: reported.append(d) or b"w11")
    assert reported == [{"windows_dropped": 0, "events_dropped": 2}, {"windows_dropped": 0, "events_dropped": 0}]
    assert q.pending() == 5  # windows and events wait for acks alike
    q.ack([2, 10, 99])  # one ack names windows and events by their seqs (one counter on the device)
    assert q.event_seqs() == [3, 4] and q.seqs() == [11]


def test_a_window_that_fails_to_render_keeps_the_event_drops_for_the_next(tmp_path: Path) -> None:
    q = WindowQueue(tmp_path / "q.db", max_windows=10, max_events=1)
    q.put_event(1, 0.0, b"e1")
    q.put_event(2, 0.0, b"e2")

    def boom(d: dict[str, int]) -> bytes:
        raise RuntimeError("encode failed")

    with pytest.raises(RuntimeError):
        q.put(3, 0.0, boom)
    seen: list[dict[str, int]] = []
    q.put(4, 0.0, lambda d: seen.append(d) or b"w4")
    assert seen == [{"windows_dropped": 0, "events_dropped": 1}]


def test_an_event_goes_at_once_on_its_own_topic_and_stays_until_the_controller_acks_it(tmp_path: Path) -> None:
    link = FakeLink()
    q = WindowQueue(tmp_path / "q.db", 100)
    q.put(1, 0.0, lambda _d: b"w1")
    q.put_event(2, 0.0, b"e2")
    s = Sender(link, q, ack_timeout=0.05, windows_per_publish=10, batch_wait_s=3600)  # type: ignore[arg-type]
    s.step()
    assert link.published == [(Kind.EVENTS, b"e2")], "the event goes first and does not wait for a batch"
    s._on_published(1)  # the broker's PUBACK is not enough
    s.step()
    assert q.event_seqs() == [2]
    time.sleep(0.1)
    s.step()  # no ack within the timeout: sent again
    assert link.published[-1] == (Kind.EVENTS, b"e2") and s.resent == 1
    s._on_window_ack((2,))
    s.step()
    assert q.event_seqs() == [] and q.seqs() == [1]


def test_events_wait_while_disconnected_and_count_against_the_inflight_bound(tmp_path: Path) -> None:
    link = FakeLink()
    link.connected = False
    q = WindowQueue(tmp_path / "q.db", 100)
    for seq in range(5):
        q.put_event(seq, 0.0, b"e%d" % seq)
    s = Sender(link, q, max_inflight=3)  # type: ignore[arg-type]
    s.step()
    assert link.published == []
    link.connected, link.connects = True, 2
    s.step()
    assert [p for _, p in link.published] == [b"e0", b"e1", b"e2"]
    s._on_window_ack((0, 1))
    s.step()
    assert [p for _, p in link.published][3:] == [b"e3", b"e4"]


def test_without_controller_acks_the_brokers_puback_deletes_an_event(tmp_path: Path) -> None:
    link = FakeLink()
    q = WindowQueue(tmp_path / "q.db", 100)
    q.put_event(7, 0.0, b"e7")
    s = Sender(link, q, controller_acks=False)  # type: ignore[arg-type]
    s.step()
    s._on_published(1)
    s.step()
    assert q.pending() == 0
