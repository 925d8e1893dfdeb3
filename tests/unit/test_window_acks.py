"""Controller acks of telemetry windows (ADR 0068): the message, coalescing, and the agent's sender rules."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.telemetry.queue import WindowQueue
from agent.telemetry.sender import Sender
from controller.telemetry.acks import AckPublisher, ack_payload, ack_payloads, puback_packets, publish_packet
from shared.errors import SchemaError
from shared.messages import MAX_ACK_SEQS, WindowAck, decode_ack, encode

pytestmark = pytest.mark.unit


def test_an_ack_round_trips_and_bad_ones_are_refused_naming_the_field() -> None:
    assert decode_ack(encode(WindowAck(seqs=(3, 1, 2)))).seqs == (3, 1, 2)
    for bad in (b'{"schema": 1, "seqs": [-1]}', b'{"schema": 1, "seqs": [true]}', b'{"schema": 2, "seqs": []}', b"[]"):
        with pytest.raises(SchemaError):
            decode_ack(bad)
    with pytest.raises(SchemaError, match="seqs"):
        decode_ack(encode({"schema": 1, "seqs": list(range(MAX_ACK_SEQS + 1))}))


def test_acks_are_coalesced_per_device_and_split_at_the_limit() -> None:
    out = ack_payloads({"a": list(range(MAX_ACK_SEQS + 5)), "b": [7]})
    assert [d for d, _ in out] == ["a", "a", "b"]
    assert sum(len(decode_ack(p).seqs) for _, p in out) == MAX_ACK_SEQS + 6
    link = FakeAckLink()
    pub = AckPublisher(link, bulk=False)
    for seq in (1, 2, 3):
        pub.add("dev", seq)
    pub.flush()
    assert [(d, decode_ack(p).seqs) for _, d, p in link.published] == [("dev", (1, 2, 3))]


class FakeAckLink:
    """The controller's broker connection as ``AckLink``: numbered connections, up or not."""

    def __init__(self, bulk: bool = True) -> None:
        self.number, self.up, self.bulk = 1, True, bulk
        self.writes: list[tuple[int, bytes]] = []
        self.published: list[tuple[int, str, bytes]] = []
        self.pubacks: list[tuple[int, int]] = []
        self.lose_next = False  # the connection goes away between session() and the write

    def session(self) -> int | None:
        return self.number if self.up else None

    def _ok(self, session: int) -> bool:
        if self.lose_next:
            self.lose_next, self.up = False, False
        return self.up and session == self.number

    def write(self, session: int, packets: bytes) -> bool | None:
        if not self.bulk:
            return None
        if not self._ok(session):
            return False
        self.writes.append((session, packets))
        return True

    def publish(self, session: int, device_id: str, payload: bytes) -> bool:
        if not self._ok(session):
            return False
        self.published.append((session, device_id, payload))
        return True

    def puback(self, session: int, mid: int) -> bool:
        if not self._ok(session):
            return False
        self.pubacks.append((session, mid))
        return True

    def reconnect(self) -> None:
        self.number += 1
        self.up = True


def ack_packet(device_id: str, seqs: list[int]) -> bytes:
    from shared.topics import Kind, device_topic

    return publish_packet(device_topic(device_id, Kind.ACK), ack_payload(seqs))


@pytest.mark.parametrize("bulk", [True, False])
def test_acks_wait_for_the_next_connection_and_pubacks_never_outlive_theirs(bulk: bool) -> None:
    """A flush while the broker connection is down loses nothing the device needs: its acks go out on the next
    connection. A PUBACK belongs to the connection its message came on (its packet id may name another message on
    the next one): it is dropped and counted, never sent late."""
    link = FakeAckLink(bulk=bulk)
    pub = AckPublisher(link)
    pub.add("dev", 1)
    pub.puback(17, session=1)
    link.up = False
    pub.flush()
    pub.flush()  # still down: held, counted once
    assert (link.writes, link.published, link.pubacks) == ([], [], [])
    assert pub.held == 1 and pub.counts() == {"sent": 0, "deferred": 1, "dropped": 0} and pub.pubacks_dropped == 1
    link.reconnect()
    pub.add("dev", 2)
    pub.puback(18, session=2)
    pub.flush()
    if bulk:
        assert link.writes == [(2, ack_packet("dev", [1, 2]) + puback_packets([18]))]
    else:
        assert [(s, d, decode_ack(p).seqs) for s, d, p in link.published] == [(2, "dev", (1, 2))]
        assert link.pubacks == [(2, 18)]
    assert pub.held == 0 and pub.counts() == {"sent": 2, "deferred": 1, "dropped": 0} and pub.pubacks_dropped == 1


@pytest.mark.parametrize("bulk", [True, False])
def test_a_connection_lost_during_the_write_holds_the_acks(bulk: bool) -> None:
    link = FakeAckLink(bulk=bulk)
    pub = AckPublisher(link)
    pub.add("dev", 5)
    pub.puback(3, session=1)
    link.lose_next = True  # refused by the writer: nothing queued
    pub.flush()
    assert pub.held == 1 and pub.windows_sent == 0 and pub.pubacks_dropped == 1
    link.reconnect()
    pub.flush()
    sent = [decode_ack(p).seqs for _, _, p in link.published] if not bulk else [w for _, w in link.writes]
    assert sent == ([(5,)] if not bulk else [ack_packet("dev", [5])])
    assert pub.counts() == {"sent": 1, "deferred": 1, "dropped": 0}


def test_held_acks_are_bounded_and_the_excess_is_counted() -> None:
    link = FakeAckLink()
    pub = AckPublisher(link, max_held=3)
    link.up = False
    for seq in range(5):
        pub.add("dev", seq)
    pub.flush()
    assert pub.held == 3 and pub.counts() == {"sent": 0, "deferred": 3, "dropped": 2}
    link.reconnect()
    pub.flush()
    assert link.writes == [(2, ack_packet("dev", [0, 1, 2]))]


def test_a_writer_that_raises_falls_back_to_one_by_one() -> None:
    link = FakeAckLink()

    def broken(session: int, packets: bytes) -> bool:
        raise OSError("boom")

    link.write = broken  # type: ignore[method-assign]
    pub = AckPublisher(link)
    pub.add("dev", 9)
    pub.puback(4, session=1)
    pub.flush()
    assert [(d, decode_ack(p).seqs) for _, d, p in link.published] == [("dev", (9,))] and link.pubacks == [(1, 4)]
    assert pub.counts()["sent"] == 1 and pub.pubacks_dropped == 0


class FakeLink:
    def __init__(self) -> None:
        self.connected, self.connects = True, 1
        self.published: list[bytes] = []
        self.on_published = self.on_window_ack = None

    def publish_bytes(self, kind: object, payload: bytes) -> int:
        self.published.append(payload)
        return len(self.published)


def test_a_window_leaves_the_queue_on_the_controllers_ack_not_the_brokers(tmp_path: Path) -> None:
    link = FakeLink()
    q = WindowQueue(tmp_path / "t.db", 100)
    for seq in (10, 11):
        q.put(seq, 0.0, lambda _d, s=seq: b"w%d" % s)
    s = Sender(link, q, ack_timeout=0.05)  # type: ignore[arg-type]
    s.step()
    assert link.published == [b"w10", b"w11"]
    s._on_published(1)  # the broker's PUBACK
    s.step()
    assert q.seqs() == [10, 11]
    s._on_window_ack((10,))  # the controller's
    s.step()
    assert q.seqs() == [11]
    time.sleep(0.1)
    s.step()  # no ack for 11 within the timeout: sent again
    assert link.published[-1] == b"w11" and s.resent == 1


def test_a_queue_a_controller_acked_expects_acks_after_a_restart(tmp_path: Path) -> None:
    """A clean stop waits for the acks of the last windows when acks come: an agent restarted just before its
    stop has seen none yet in this run, but the queue remembers that its controller acknowledges."""
    path = tmp_path / "t.db"
    q = WindowQueue(path, 100)
    q.put(1, 0.0, lambda _d: b"w1")
    s = Sender(FakeLink(), q)  # type: ignore[arg-type]
    assert not s.acks_expected()  # a receiver that never acks costs a stop no wait
    s.step()
    s._on_window_ack((1,))
    s.step()
    assert s.acks_expected() and q.seqs() == []
    q.close()
    q = WindowQueue(path, 100)
    assert Sender(FakeLink(), q).acks_expected()  # type: ignore[arg-type]
    assert Sender(FakeLink(), WindowQueue(tmp_path / "u.db", 10), controller_acks=False).acks_expected()  # type: ignore[arg-type]


def test_without_controller_acks_the_pubacks_delete(tmp_path: Path) -> None:
    link = FakeLink()
    q = WindowQueue(tmp_path / "t.db", 100)
    q.put(5, 0.0, lambda _d: b"w5")
    s = Sender(link, q, controller_acks=False)  # type: ignore[arg-type]
    s.step()
    s._on_published(1)
    s.step()
    assert q.seqs() == []


def test_bulk_acks_are_the_same_packets_paho_would_send() -> None:
    """Acks to devices and PUBACKs of one flush go out as one write of ready-made packets."""
    import struct

    from shared.topics import Kind, device_topic

    for seqs in ([1], [3, 4, 2**40], list(range(300))):
        assert ack_payload(seqs) == encode(WindowAck(seqs=tuple(seqs)))
    link = FakeAckLink()
    pub = AckPublisher(link)
    pub.add("dev-1", 7)
    pub.puback(513, session=1)
    pub.flush()
    topic = device_topic("dev-1", Kind.ACK).encode()
    body = struct.pack("!H", len(topic)) + topic + encode(WindowAck(seqs=(7,)))
    assert link.writes == [(1, b"\x30" + bytes([len(body)]) + body + b"\x40\x02\x02\x01")]
    assert publish_packet("t", b"x" * 200)[:3] == b"\x30\xcb\x01"  # remaining length 203 in two bytes


def test_ack_outcomes_are_exported_at_scrape_time() -> None:
    from prometheus_client import generate_latest

    from controller.core.metrics import Metrics

    link = FakeAckLink()
    pub = AckPublisher(link, max_held=1)
    metrics = Metrics()
    metrics.watch_acks(pub.counts, lambda: pub.pubacks_dropped)
    link.up = False
    pub.add("dev", 1)
    pub.add("dev", 2)
    pub.puback(9, session=1)
    pub.flush()
    text = generate_latest(metrics.registry).decode()
    for line in (
        'edgefleet_telemetry_acks_total{outcome="deferred"} 1.0',
        'edgefleet_telemetry_acks_total{outcome="dropped"} 1.0',
        'edgefleet_telemetry_acks_total{outcome="sent"} 0.0',
        "edgefleet_mqtt_pubacks_dropped_total 1.0",
    ):
        assert line in text.splitlines(), line
