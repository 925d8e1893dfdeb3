"""Seq streams in the controller's database (ADR 0080): telemetry windows and events are new once per
(device, stream, seq). Real Mosquitto, real database (SQLite and PostgreSQL), two ingesting replicas."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import replace

import pytest
from alembic import command
from sqlalchemy import text
from sqlmodel import Session, select

from controller.core.db import alembic_config, make_engine, migrate
from controller.core.metrics import Metrics
from controller.core.tables import Device, DeviceEvent
from controller.telemetry.ingest import Ingestor
from shared import wire
from shared.messages import Event, Telemetry, decode
from shared.telemetry import merge
from shared.topics import Kind, Topic, device_topic
from tests.integration.test_ingest import merged_rows, publisher, replicas, summary, total, wait_until, window

pytestmark = [pytest.mark.integration]
__all__ = ["replicas"]  # the fixture, used by name
A, B = "a" * 32, "b" * 32


def v1(device: str, seq: int, i: int, stream: str = "") -> bytes:
    data = json.loads(window(device, seq, i))
    if stream:
        data["stream"] = stream
    return json.dumps(data).encode()


def v2(device: str, seqs: list[int], first: int, stream: str = "") -> bytes:
    ws = []
    for k, s in enumerate(seqs):
        w = decode(Kind.TELEMETRY, window(device, s, first + k))
        assert isinstance(w, Telemetry)
        ws.append(replace(w, stream=stream))
    return wire.encode(ws)


def test_a_restarted_counter_in_a_new_stream_is_stored_and_each_stream_dedupes_alone(engine, mosquitto, replicas) -> None:
    """A device sends windows without a stream (an old agent) up to seq 502, is upgraded and later
    re-flashed twice (streams A and B, each from seq 0). Every window is new once in its own stream;
    resends are duplicates; a late window of the old stream still claims that stream's gap, and the
    same seqs of another device (same stream id too) are its own."""
    with Session(engine) as s:
        s.add_all([Device(id="st-1"), Device(id="st-2")])
        s.commit()
    pub = publisher(mosquitto)
    sent: list[tuple[str, bytes, int | None]] = [  # (device, payload, summary index if new else None)
        ("st-1", v1("st-1", 500, 0), 0),
        ("st-1", v1("st-1", 501, 1), 1),
        ("st-1", v2("st-1", [502], 2), 2),  # an old agent's v2 message: no stream
        ("st-1", v2("st-1", [0, 1, 2], 3, A), 3),  # counts three windows: 3, 4, 5
        ("st-1", v1("st-1", 3, 6, A), 6),
        ("st-1", v2("st-1", [1], 4, A), None),  # sent again in stream A
        ("st-1", v1("st-1", 501, 1), None),  # sent again without a stream
        ("st-1", v2("st-1", [0], 7, B), 7),  # the second re-flash
        ("st-1", v1("st-1", 3, 8), 8),  # the old stream's seq 3: in its gap (0..438), new once
        ("st-1", v1("st-1", 3, 8), None),
        ("st-2", v2("st-2", [0, 1], 9, A), 9),  # another device, the same stream id: counts 9, 10
    ]
    new: list[dict] = []
    duplicates = 0
    for device, payload, i in sent:
        pub.publish(device_topic(device, Kind.TELEMETRY), payload, qos=1).wait_for_publish(5)
        n = len(wire.decode_windows(payload))
        if i is None:
            duplicates += n
        else:
            new += [summary(i + k) for k in range(n)]
        # one at a time: the order is what the test is about (late seqs are decided after a batch's others)
        want = len(new) + duplicates
        wait_until(lambda w=want: total(replicas, "telemetry", "accepted") + total(replicas, "telemetry", "duplicate") >= w)
    time.sleep(0.3)
    assert total(replicas, "telemetry", "accepted") == len(new) == 11
    assert total(replicas, "telemetry", "duplicate") == duplicates == 3
    got, windows, _ = merged_rows(engine, "*")
    assert windows == len(new) and got == functools.reduce(merge, new)
    pub.loop_stop()
    pub.disconnect()


def test_an_event_is_stored_once_per_stream(engine) -> None:
    with Session(engine) as s:
        s.add_all([Device(id="evs-1"), Device(id="evs-2")])
        s.commit()
    metrics = Metrics()
    ingest = Ingestor(engine, metrics)
    acks: list[tuple[str, int]] = []
    events = [
        Event(device_id="evs-1", seq=7, sent_at=1.0, kind="ota.committed"),  # an old agent: no stream
        Event(device_id="evs-1", seq=7, sent_at=2.0, kind="ota.rolled_back", stream=A),  # re-flashed: seq 7 again
        Event(device_id="evs-1", seq=7, sent_at=2.0, kind="ota.rolled_back", stream=A),  # sent again
        Event(device_id="evs-1", seq=7, sent_at=3.0, kind="ota.rejected", stream=B),  # re-flashed again
        Event(device_id="evs-2", seq=7, sent_at=3.0, kind="ota.rejected", stream=B),  # another device
    ]
    for e in events:
        ingest(Topic(e.device_id, Kind.EVENTS), e, lambda e=e: acks.append((e.stream, e.seq)))
    with Session(engine) as s:
        rows = s.exec(select(DeviceEvent).order_by(DeviceEvent.id)).all()  # type: ignore[arg-type]
    assert [(r.device_id, r.stream, r.seq, r.kind) for r in rows] == [
        ("evs-1", "", 7, "ota.committed"),
        ("evs-1", A, 7, "ota.rolled_back"),
        ("evs-1", B, 7, "ota.rejected"),
        ("evs-2", B, 7, "ota.rejected"),
    ]
    assert len(acks) == 5, "each copy is acknowledged too"
    assert metrics.value("events", "accepted") == 4 and metrics.value("events", "duplicate") == 1


def test_the_migration_keeps_cursors_gaps_and_events_in_the_stream_without_an_id(database_url) -> None:
    engine = make_engine(database_url)
    try:
        cfg = alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0012")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO telemetrycursor (device_id, high_seq, seen_bits) VALUES ('d', 500, 3)"))
            conn.execute(text("INSERT INTO telemetrygap (device_id, lo, hi, created_at) VALUES ('d', 0, 438, 1.5)"))
            conn.execute(
                text(
                    "INSERT INTO deviceevent (device_id, seq, kind, severity, message, detail, received_at) "
                    "VALUES ('d', 5, 'k', 'info', '', '{}', CURRENT_TIMESTAMP)"
                )
            )
        migrate(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT device_id, stream, high_seq, seen_bits FROM telemetrycursor")).all() == [
                ("d", "", 500, 3)
            ]
            assert conn.execute(text("SELECT device_id, stream, lo, hi, created_at FROM telemetrygap")).all() == [
                ("d", "", 0, 438, 1.5)
            ]
            assert conn.execute(text("SELECT device_id, stream, seq FROM deviceevent")).all() == [("d", "", 5)]
        with engine.begin() as conn:  # the same seq in another stream is another event
            conn.execute(
                text(
                    "INSERT INTO deviceevent (device_id, stream, seq, kind, severity, message, detail, received_at) "
                    f"VALUES ('d', '{A}', 5, 'k', 'info', '', '{{}}', CURRENT_TIMESTAMP)"
                )
            )
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0012")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT device_id, high_seq FROM telemetrycursor")).all() == [("d", 500)]
            assert conn.execute(text("SELECT device_id, seq FROM deviceevent")).all() == [("d", 5)]
    finally:
        engine.dispose()
