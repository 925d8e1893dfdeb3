"""Telemetry ingestion throughput: one controller process vs a bare paho subscriber, same broker, same messages.

Method (so the publisher's speed does not decide the result): a subscriber
with a persistent session subscribes, goes offline, ``N`` telemetry windows are
published into Mosquitto's queue for it, then it reconnects and the time to
drain the queue is measured. Both the baseline (a bare paho client that only
counts messages) and the controller's ingester (decode, validate, dedupe,
aggregate per (model, version, role, cohort, window), batched writes, ack after
commit) use the same shared-subscription filter and the same payloads.

- ``raw_receive_msgs_per_s``: baseline drain rate
- ``ingest_msgs_per_s``: windows merged into aggregate rows and committed, per second
- ``ingest_ratio`` = ingest / raw (goal >= 0.5); ``*_postgres`` for PostgreSQL when reachable;
  ``*_compact`` for small windows (4 feature histograms instead of 64, ~0.7 KB).
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.mosquitto import MosquittoProcess
from shared.telemetry import N_LATENCY_BUCKETS
from shared.topics import Kind, device_topic, fleet_filter

N_DEVICES = int(os.environ.get("EDGEFLEET_BENCH_DEVICES", "1000"))
N_MESSAGES = int(os.environ.get("EDGEFLEET_BENCH_MESSAGES", "10000"))
PG_URL = os.environ.get("EDGEFLEET_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WINDOW = int(time.time()) // 3600 * 3600 - 86400  # a day ago: inside the controller's accepted range


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def payloads(features: int = 64) -> list[tuple[str, bytes]]:
    """Realistic windows for the digits model: 82 latency buckets, 10 classes, ``features`` x 8 bins."""
    rng = random.Random(0)
    out = []
    for i in range(N_MESSAGES):
        dev = f"bench-{i % N_DEVICES:05d}"
        lat = [0] * N_LATENCY_BUCKETS
        for _ in range(5):
            lat[rng.randrange(30, 45)] += rng.randrange(1, 200)
        summary = {
            "model": "digits",
            "version": 3,
            "count": sum(lat),
            "errors": rng.randrange(0, 2),
            "latency_ms": lat,
            "predictions": [rng.randrange(0, 100) for _ in range(10)],
            "features": {f"px{j}": [rng.randrange(0, 50) for _ in range(8)] for j in range(features)},
            "shadow": {"agree": 0, "disagree": 0},
            "labels": {"count": 0, "correct": 0},
        }
        msg = {
            "schema": 1,
            "device_id": dev,
            "seq": 100 + i // N_DEVICES,
            "sent_at": 1.0,
            "window_start": WINDOW + 60 * (i // N_DEVICES),
            "window_s": 60,
            "roles": {"production": summary},
            "system": {"cpu_percent": 12.5, "mem_percent": 40.1, "temp_c": 51.0},
        }
        out.append((device_topic(dev, Kind.TELEMETRY), json.dumps(msg).encode()))
    return out


def publish_all(broker: MosquittoProcess, msgs: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(broker.host, broker.port)
    c.loop_start()
    infos = [c.publish(t, p, qos=1) for t, p in msgs]
    for info in infos:
        info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def park(broker: MosquittoProcess, client_id: str) -> None:
    """Create a persistent session subscribed to telemetry, then leave it offline."""
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_subscribe = lambda *a: done.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.subscribe(fleet_filter(Kind.TELEMETRY, shared=True), qos=1)
    if not done.wait(10):
        raise RuntimeError("no SUBACK")
    c.disconnect()
    c.loop_stop()


def drop_session(broker: MosquittoProcess, client_id: str) -> None:
    """End a persistent session so it stops taking its share of the shared subscription."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.connect(broker.host, broker.port)
    c.loop_start()
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()


def raw_receive(broker: MosquittoProcess, msgs: list[tuple[str, bytes]]) -> float:
    cid = f"bench-raw-{uuid.uuid4().hex[:6]}"
    park(broker, cid)
    publish_all(broker, msgs)
    n = len(msgs)
    got = 0
    done = threading.Event()
    t: dict[str, float] = {}

    def on_message(client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal got
        got += 1
        if got == n:
            t["end"] = time.perf_counter()
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
    c.on_message = on_message
    t["start"] = time.perf_counter()
    c.connect(broker.host, broker.port)
    c.loop_start()
    if not done.wait(300):
        raise RuntimeError(f"raw subscriber got {got} of {n}")
    c.disconnect()
    c.loop_stop()
    drop_session(broker, cid)
    return n / (t["end"] - t["start"])


def ingest(broker: MosquittoProcess, msgs: list[tuple[str, bytes]], database_url: str) -> float:
    from sqlmodel import Session

    from controller.core.db import init_db, make_engine
    from controller.core.metrics import Metrics
    from controller.core.tables import Cohort, Device, ModelVersion
    from controller.telemetry.batch import TelemetryIngest
    from controller.telemetry.ingest import Ingestor
    from controller.telemetry.receiver import ControllerMqtt

    engine = make_engine(database_url)
    init_db(engine)
    with Session(engine) as s:
        for i in range(N_DEVICES):
            s.add(Device(id=f"bench-{i:05d}", region=("eu", "us", "ap")[i % 3], hardware_class=("rpi4", "jetson")[i % 2]))
        s.add(Cohort(name="eu", filter={"region": ["eu"]}))
        s.add(Cohort(name="jetsons", filter={"hardware_class": ["jetson"]}))
        reference = {
            "features": [{"name": f"px{j}", "bin_edges": [float(k) for k in range(7)]} for j in range(64)],
            "predictions": {"classes": list(range(10))},
        }  # the shape summaries must have (8 bins per feature, 10 classes)
        s.add(
            ModelVersion(name="digits", version=3, runtime="onnx", sha256="0" * 64, length=1, manifest={"reference": reference})
        )
        s.commit()
    cid = f"bench-ctl-{uuid.uuid4().hex[:6]}"
    park(broker, cid)
    publish_all(broker, msgs)
    metrics = Metrics()
    tele = TelemetryIngest(engine, metrics)
    ctl = ControllerMqtt(broker.host, broker.port, Ingestor(engine, metrics, tele), client_id=cid)
    n = len(msgs)
    tele.start()
    t0 = time.perf_counter()
    ctl.start()
    deadline = time.monotonic() + 600
    while tele.flushed < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"ingested {tele.flushed} of {n}")
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    tele.stop()
    ctl.stop()
    drop_session(broker, cid)
    bad = {o: metrics.value("telemetry", o) for o in ("malformed", "duplicate", "unknown_device", "failed")}
    if any(bad.values()):
        raise RuntimeError(f"unexpected outcomes {bad}")
    engine.dispose()
    return n / elapsed


def pg_schema_url() -> tuple[str, Any] | None:
    try:
        from sqlalchemy import create_engine, text

        admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        log(f"PostgreSQL not reachable at {PG_URL}: {exc.__class__.__name__}; skipping ingest_ratio_postgres")
        return None

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}", drop


def run() -> dict[str, Any]:
    msgs = payloads()
    log(f"{len(msgs)} telemetry windows from {N_DEVICES} devices, {len(msgs[0][1])} bytes each")
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        broker = MosquittoProcess(Path(tmp) / "broker")
        broker.start()
        try:
            raw = raw_receive(broker, msgs)
            log(f"raw paho receive: {raw:,.0f} msg/s")
            ing = ingest(broker, msgs, f"sqlite:///{tmp}/bench.db")
            log(f"controller ingest (SQLite): {ing:,.0f} msg/s")
            result.update(
                raw_receive_msgs_per_s=round(raw),
                ingest_msgs_per_s=round(ing),
                ingest_ratio=round(ing / raw, 3),
                ingest_messages=len(msgs),
            )
            compact = payloads(features=4)
            raw_c = raw_receive(broker, compact)
            ing_c = ingest(broker, compact, f"sqlite:///{tmp}/bench-compact.db")
            log(f"compact windows ({len(compact[0][1])} bytes): raw {raw_c:,.0f} msg/s, ingest {ing_c:,.0f} msg/s")
            result.update(ingest_msgs_per_s_compact=round(ing_c), ingest_ratio_compact=round(ing_c / raw_c, 3))
            pg = pg_schema_url()
            if pg is not None:
                url, drop = pg
                try:
                    raw_pg = raw_receive(broker, msgs)
                    ing_pg = ingest(broker, msgs, url)
                    log(f"raw paho receive: {raw_pg:,.0f} msg/s; controller ingest (PostgreSQL): {ing_pg:,.0f} msg/s")
                    result.update(
                        raw_receive_msgs_per_s_postgres_run=round(raw_pg),
                        ingest_msgs_per_s_postgres=round(ing_pg),
                        ingest_ratio_postgres=round(ing_pg / raw_pg, 3),
                    )
                finally:
                    drop()
        finally:
            broker.stop()
    return result
