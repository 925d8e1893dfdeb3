"""Device events are stored once per (device, seq) and acknowledged, copies too (ADR 0078)."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import text
from sqlmodel import Session, select

from controller.core.db import alembic_config, make_engine, migrate
from controller.core.metrics import Metrics
from controller.core.tables import Device, DeviceEvent
from controller.telemetry.ingest import Ingestor
from shared.messages import Event
from shared.topics import Kind, Topic

pytestmark = [pytest.mark.integration]


def test_an_event_sent_again_is_stored_once_and_acknowledged_each_time(engine) -> None:
    with Session(engine) as s:
        s.add(Device(id="ev-1"))
        s.commit()
    metrics = Metrics()
    ingest = Ingestor(engine, metrics)
    acks: list[int] = []
    topic = Topic("ev-1", Kind.EVENTS)
    rolled_back = Event(device_id="ev-1", seq=41, sent_at=1.0, kind="ota.rolled_back", severity="error", message="health")
    for e in (rolled_back, rolled_back, Event(device_id="ev-1", seq=42, sent_at=2.0, kind="ota.committed")):
        ingest(topic, e, lambda e=e: acks.append(e.seq))
    with Session(engine) as s:
        rows = s.exec(select(DeviceEvent).where(DeviceEvent.device_id == "ev-1").order_by(DeviceEvent.seq)).all()
    assert [(r.seq, r.kind) for r in rows] == [(41, "ota.rolled_back"), (42, "ota.committed")]
    assert acks == [41, 41, 42], "the copy is acknowledged too, so the device forgets it"
    assert metrics.value("events", "accepted") == 2 and metrics.value("events", "duplicate") == 1
    unknown: list[int] = []
    ingest(Topic("ev-x", Kind.EVENTS), Event(device_id="ev-x", seq=1, sent_at=1.0, kind="k"), lambda: unknown.append(1))
    assert unknown == [1] and metrics.value("events", "unknown_device") == 1


def test_the_migration_keeps_the_first_of_the_copies_stored_before(database_url) -> None:
    engine = make_engine(database_url)
    try:
        cfg = alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0011")
        with engine.begin() as conn:
            for seq, kind in ((5, "first"), (5, "copy"), (6, "other")):
                conn.execute(
                    text(
                        "INSERT INTO deviceevent (device_id, seq, kind, severity, message, detail, received_at) "
                        "VALUES ('d', :seq, :kind, 'info', '', '{}', CURRENT_TIMESTAMP)"
                    ),
                    {"seq": seq, "kind": kind},
                )
        migrate(engine)
        with engine.connect() as conn:
            kept = conn.execute(text("SELECT seq, kind FROM deviceevent ORDER BY seq")).all()
        assert [tuple(r) for r in kept] == [(5, "first"), (6, "other")]
    finally:
        engine.dispose()
