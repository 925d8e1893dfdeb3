"""Seq streams (ADR 0080): a device's seqs are unique per (device, stream), and a counter that starts
again (a wiped data directory) starts a new stream. The agent's counter, the pure dedupe decision and
the wire formats; the database side is in tests/integration/test_ingest_streams.py."""

from __future__ import annotations

import json
import zlib
from dataclasses import replace
from pathlib import Path

import msgspec
import pytest

from agent.ota.store import SeqCounter
from controller.telemetry.cursors import DEDUPE_WINDOW, Stream, decide
from shared import wire
from shared.errors import SchemaError
from shared.messages import Event, Telemetry, decode, encode
from shared.topics import Kind

A, B = "a" * 32, "b" * 32


# --- the agent's counter -------------------------------------------------------------


def test_a_counter_keeps_its_stream_across_restarts_and_a_wiped_one_gets_a_new_stream(tmp_path: Path) -> None:
    first = SeqCounter(tmp_path / "seq")
    assert len(first.stream) == 32 and int(first.stream, 16) >= 0
    assert [first.next() for _ in range(3)] == [0, 1, 2]
    again = SeqCounter(tmp_path / "seq")  # a restart: same stream, seqs go on (past the reserved block)
    assert again.stream == first.stream and again.next() == 1000
    for p in tmp_path.iterdir():  # the re-flash
        p.unlink()
    wiped = SeqCounter(tmp_path / "seq")
    assert wiped.next() == 0 and wiped.stream != first.stream


def test_a_counter_that_cannot_be_read_starts_a_new_stream_and_one_without_a_stream_file_gets_one(tmp_path: Path) -> None:
    c = SeqCounter(tmp_path / "seq")
    (tmp_path / "seq").write_text("garbage")
    broken = SeqCounter(tmp_path / "seq")
    assert broken.next() == 0 and broken.stream != c.stream, "the counter restarts: so does the stream"
    (tmp_path / "seq").write_text("")  # e.g. a file system that lost the write
    emptied = SeqCounter(tmp_path / "seq")
    assert emptied.next() == 0 and emptied.stream != broken.stream
    (tmp_path / "seq").write_text("5000")
    (tmp_path / "stream").unlink()  # an agent from before streams: its counter goes on, in a stream of its own
    upgraded = SeqCounter(tmp_path / "seq")
    assert upgraded.next() == 5000 and len(upgraded.stream) == 32
    assert (tmp_path / "stream").read_text() == upgraded.stream
    (tmp_path / "stream").write_text("NOT-HEX")
    assert SeqCounter(tmp_path / "seq").stream not in ("NOT-HEX", upgraded.stream)
    (tmp_path / "stream").write_bytes(b"\xff\xfe")
    assert len(SeqCounter(tmp_path / "seq").stream) == 32


# --- the dedupe decision ----------------------------------------------------------------


def run(state: dict[Stream, tuple[int | None, int]], items: list[tuple[Stream, int]]) -> list[str]:
    gaps: list[tuple[Stream, int, int]] = []
    return [decide(state, key, seq, gaps) for key, seq in items]


def test_a_new_stream_starts_a_fresh_cursor_and_leaves_the_old_one_alone() -> None:
    old, new = ("d1", ""), ("d1", A)
    state: dict[Stream, tuple[int | None, int]] = {}
    assert run(state, [(old, s) for s in range(1000, 1010)]) == ["new"] * 10
    before = state[old]
    # the counter started again: seqs far below the old stream's highest are new in their own stream
    assert run(state, [(new, s) for s in range(10)]) == ["new"] * 10
    assert state[old] == before, "the new stream never moves the old stream's cursor"
    assert state[new][0] == 9
    assert run(state, [(old, 1009), (old, 1010)]) == ["duplicate", "new"], "the old stream dedupes as before"


def test_resends_within_a_stream_are_duplicates_and_far_back_seqs_are_stale_only_in_their_own_stream() -> None:
    state: dict[Stream, tuple[int | None, int]] = {}
    s = ("d1", A)
    assert run(state, [(s, 5), (s, 6), (s, 5), (s, 6), (s, 7)]) == ["new", "new", "duplicate", "duplicate", "new"]
    assert run(state, [(s, 7 + DEDUPE_WINDOW + 1), (s, 6)]) == ["new", "stale"]
    assert run(state, [(("d1", B), 6)]) == ["new"], "another stream of the device"
    assert run(state, [(("d2", A), 6)]) == ["new"], "another device with the same stream id"


def test_gaps_are_recorded_per_stream() -> None:
    state: dict[Stream, tuple[int | None, int]] = {}
    gaps: list[tuple[Stream, int, int]] = []
    decide(state, ("d1", ""), 500, gaps)
    decide(state, ("d1", A), 100, gaps)
    assert gaps == [(("d1", ""), 0, 500 - DEDUPE_WINDOW), (("d1", A), 0, 100 - DEDUPE_WINDOW)]


# --- the wire formats ------------------------------------------------------------------


def window(seq: int, stream: str = "") -> Telemetry:
    return Telemetry("d1", seq, 1.0, 60.0, 60.0, agent={"version": "1", "boot": "b", "window": 0}, stream=stream)


def test_a_window_without_a_stream_is_written_as_before_and_read_with_the_stream_empty() -> None:
    assert "stream" not in window(3).to_payload()
    old = wire.encode([window(3)])
    assert len(msgspec.msgpack.decode(_body(old))) == 5, "an old agent's v2 message: five fields, no stream"
    assert wire.decode(old).stream == "" and wire.decode_windows(old)[0].stream == ""
    v1 = json.dumps({"schema": 1, "device_id": "d1", "seq": 3, "sent_at": 1.0, "window_start": 0, "window_s": 60}).encode()
    msg = decode(Kind.TELEMETRY, v1)
    assert isinstance(msg, Telemetry) and msg.stream == ""


def _body(payload: bytes) -> bytes:
    return zlib.decompress(payload[1:])


def test_a_stream_travels_in_both_formats_and_a_bad_one_is_refused() -> None:
    w = window(3, A)
    assert wire.decode_windows(wire.encode([w]))[0].stream == A
    assert decode(Kind.TELEMETRY, encode(w)) == w
    with pytest.raises(SchemaError, match="windows of two agent runs"):
        wire.encode([w, replace(window(4), stream=B)])
    for bad in ("A" * 32, "a" * 33, 5):
        with pytest.raises(SchemaError, match="stream"):
            decode(Kind.TELEMETRY, encode({**w.to_payload(), "stream": bad}))
    body = msgspec.msgpack.decode(_body(wire.encode([w])))
    body[5] = "Z" * 10
    with pytest.raises(SchemaError):
        wire.decode(bytes([wire.MAGIC_V2]) + zlib.compress(msgspec.msgpack.encode(body)))


def test_an_event_carries_its_stream_and_one_without_is_written_as_before() -> None:
    e = Event(device_id="d1", seq=4, sent_at=1.0, kind="ota.committed", stream=A)
    assert decode(Kind.EVENTS, encode(e)) == e
    plain = Event(device_id="d1", seq=4, sent_at=1.0, kind="ota.committed")
    assert "stream" not in plain.to_payload()
    got = decode(Kind.EVENTS, encode(plain))
    assert isinstance(got, Event) and got.stream == ""
    with pytest.raises(SchemaError, match="stream"):
        decode(Kind.EVENTS, encode({**plain.to_payload(), "stream": "x"}))
