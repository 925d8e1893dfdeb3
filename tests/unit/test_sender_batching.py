"""The telemetry sender on a metered link: several windows per message, each still acknowledged on its own."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agent.telemetry.queue import WindowQueue
from agent.telemetry.sender import Sender
from shared import wire
from shared.messages import Telemetry, encode_compact
from shared.topics import Kind

pytestmark = pytest.mark.unit


class FakeLink:
    """The two things the sender uses of MqttLink: publish_bytes and the connection state."""

    def __init__(self) -> None:
        self.connected = True
        self.connects = 1
        self.on_published: Any = None
        self.on_window_ack: Any = None
        self.published: dict[int, bytes] = {}

    def publish_bytes(self, kind: Kind, payload: bytes) -> int:
        mid = len(self.published) + 1
        self.published[mid] = payload
        return mid

    def puback(self, mid: int) -> None:
        self.on_published(mid)

    def controller_ack(self, *seqs: int) -> None:
        self.on_window_ack(seqs)


def window(seq: int) -> Telemetry:
    return Telemetry(device_id="dev-1", seq=seq, sent_at=1.0, window_start=60.0 * seq, window_s=60.0)


def queue_with(tmp_path: Any, seqs: range, encode: Any = lambda w: wire.encode([w])) -> WindowQueue:
    q = WindowQueue(tmp_path / "q.db", max_windows=100)
    for s in seqs:
        q.put(s, time.time(), lambda dropped, s=s: encode(window(s)))
    return q


def test_full_batches_go_at_once_and_a_partial_one_waits(tmp_path: Any) -> None:
    link, q = FakeLink(), queue_with(tmp_path, range(1, 8))
    sender = Sender(link, q, windows_per_publish=3, batch_wait_s=3600)  # type: ignore[arg-type]
    sender.step()
    assert [[w.seq for w in wire.decode_windows(p)] for p in link.published.values()] == [[1, 2, 3], [4, 5, 6]]
    link.controller_ack(1, 2, 3)
    sender.step()
    assert q.seqs() == [4, 5, 6, 7]  # 7 waits for company
    assert len(link.published) == 2


def test_without_controller_acks_one_puback_deletes_every_window_of_its_message(tmp_path: Any) -> None:
    link, q = FakeLink(), queue_with(tmp_path, range(1, 7))
    sender = Sender(link, q, windows_per_publish=3, batch_wait_s=3600, controller_acks=False)  # type: ignore[arg-type]
    sender.step()
    link.puback(2)
    sender.step()
    assert q.seqs() == [1, 2, 3]


def test_a_partial_batch_goes_once_it_has_waited(tmp_path: Any) -> None:
    link, q = FakeLink(), queue_with(tmp_path, range(1, 3))
    sender = Sender(link, q, windows_per_publish=5, batch_wait_s=0.0)  # type: ignore[arg-type]
    sender.step()
    assert [[w.seq for w in wire.decode_windows(p)] for p in link.published.values()] == [[1, 2]]


def test_windows_stored_by_an_older_agent_go_one_by_one(tmp_path: Any) -> None:
    link, q = FakeLink(), queue_with(tmp_path, range(1, 4), encode=encode_compact)
    sender = Sender(link, q, windows_per_publish=3, batch_wait_s=0.0)  # type: ignore[arg-type]
    for _ in range(3):
        sender.step()
    assert [[w.seq for w in wire.decode_windows(p)] for p in link.published.values()] == [[1], [2], [3]]
    link.controller_ack(1, 2, 3)
    sender.step()
    assert q.seqs() == []


def test_one_window_per_message_sends_each_window_as_it_is(tmp_path: Any) -> None:
    link, q = FakeLink(), queue_with(tmp_path, range(1, 4))
    Sender(link, q).step()  # type: ignore[arg-type]
    assert list(link.published.values()) == [wire.encode([window(s)]) for s in (1, 2, 3)]
