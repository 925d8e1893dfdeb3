"""Telemetry ingestion throughput: the controller's ingester vs a bare paho subscriber, same broker, same messages.

Method (so the publisher's speed does not decide the result): a subscriber
with a persistent session subscribes, goes offline, ``N`` telemetry messages
are published into Mosquitto's queue for it, then it reconnects and the time to
drain the queue is measured. Both the baseline (a bare paho client that only
counts messages, QoS 1) and the controller's ingester (``ControllerMqtt`` +
``TelemetryIngest``: decode, validate, dedupe, aggregate per (model, version,
role, cohort, window), batched writes, MQTT ack after commit, acks to the
devices) use the same shared-subscription filter and the same payloads: the
wire format agents send (``shared.wire`` v2, one 60 s window of the digits
model per message, as with ``windows_per_publish = 1``).

Each database gets a warm-up round of both, then three repetitions that
alternate baseline and ingester; a repetition's ratio is ingester ÷ the
baseline measured just before it, and the figure reported is the median of the
three (``*_runs`` lists them).

- ``raw_receive_msgs_per_s``, ``ingest_msgs_per_s``: medians on SQLite
- ``ingest_ratio`` (goal >= 0.5), ``ingest_ratio_postgres`` (PostgreSQL, when reachable)
- ``ingest_scaling_4``: 4 ingest processes (one shard each, one share group, one
  PostgreSQL) ÷ 1 process, draining the same N messages; ``ingest_scaling_2`` likewise.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.mosquitto import MosquittoProcess
from shared import wire
from shared.messages import Telemetry
from shared.telemetry import COUNTERS, N_LATENCY_BUCKETS
from shared.topics import Kind, device_topic, fleet_filter

N_MESSAGES = int(os.environ.get("EDGEFLEET_BENCH_MESSAGES", "10000"))
# One window per device per round, as a fleet sends them (one a minute each): every window has its own dedupe
# cursor row and its own ack to the device, and replicas do not fight over a device's cursor.
N_DEVICES = int(os.environ.get("EDGEFLEET_BENCH_DEVICES", str(2 * N_MESSAGES)))
REPS = int(os.environ.get("EDGEFLEET_BENCH_REPS", "3"))
PG_URL = os.environ.get("EDGEFLEET_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WINDOW = int(time.time()) // 3600 * 3600 - 86400  # a day ago: inside the controller's accepted range
N_FEATURES, N_BINS, N_CLASSES = 64, 10, 10  # the digits model: 64 pixels, 9 reference edges (0..16), 10 classes
ROOT = Path(__file__).resolve().parents[2]
_p = np.random.default_rng(7)
PROFILE = {k: (lambda w: w / w.sum())(_p.random(k) ** 3) for k in (N_BINS, N_CLASSES, 20)}  # a steady input distribution


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def reference() -> dict[str, Any]:
    """The registered manifest's reference: the shape every summary must have."""
    edges = [float(k) for k in range(0, 17, 2)]
    return {
        "features": [{"name": f"px{j}", "bin_edges": edges} for j in range(N_FEATURES)],
        "predictions": {"classes": list(range(N_CLASSES))},
    }


def window(rng: np.random.Generator, device: str, seq: int, start: float) -> Telemetry:
    """One 60 s window at 100 inferences/s, shaped like the agent's (confidence and quality included)."""
    n = 6000
    lat = [0] * N_LATENCY_BUCKETS
    lat[28:44] = rng.multinomial(n, np.full(16, 1 / 16)).tolist()

    def hist(k: int) -> list[int]:
        return rng.multinomial(n, PROFILE[k]).tolist()  # type: ignore[no-any-return]

    summary = {
        "model": "digits",
        "version": 3,
        "count": n,
        "errors": int(rng.integers(0, 2)),
        "samples": n,
        "latency_ms": lat,
        "predictions": hist(N_CLASSES),
        "features": {f"px{j}": hist(N_BINS) for j in range(N_FEATURES)},
        "shadow": {"agree": 0, "disagree": 0},
        "labels": {"count": int(rng.integers(0, 5)), "correct": 0},
        "confidence": hist(20),
        "quality": {"nan": [0] * N_FEATURES, "inf": [0] * N_FEATURES, "out_of_range": [0] * N_FEATURES},
    }
    return Telemetry(
        device_id=device,
        seq=seq,
        sent_at=start + 60.1,
        window_start=start,
        window_s=60.0,
        roles={"production": summary},
        system={"cpu_percent": 12.5, "mem_percent": 40.1, "temp_c": 51.0, "queue_pending": 0},
        counters=dict.fromkeys(COUNTERS, 0),
        agent={"version": "bench", "boot": "b00t", "window": seq},
    )


def payloads(round_no: int, n: int = N_MESSAGES) -> list[tuple[str, bytes]]:
    """``n`` v2 messages, one window each (devices take turns); each round has fresh seqs: nothing is a duplicate."""
    rng = np.random.default_rng(round_no)
    out = []
    for i in range(n):
        dev = f"bench-{i % N_DEVICES:05d}"
        k = i // N_DEVICES  # 0 unless there are more messages than devices
        # Seqs grow by a few per round, as a device's do (status and events share the counter): a jump past
        # the 62-seq dedupe bitmap would make every window also write a gap row, which devices do not cause.
        seq = 1 + round_no + k
        out.append((device_topic(dev, Kind.TELEMETRY), wire.encode([window(rng, dev, seq, WINDOW + 60 * k)])))
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


def prepare_db(database_url: str) -> None:
    from sqlmodel import Session

    from controller.core.db import init_db, make_engine
    from controller.core.tables import Cohort, Device, ModelVersion

    engine = make_engine(database_url)
    init_db(engine)
    with Session(engine) as s:
        for i in range(N_DEVICES):
            s.add(Device(id=f"bench-{i:05d}", region=("eu", "us", "ap")[i % 3], hardware_class=("rpi4", "jetson")[i % 2]))
        s.add(Cohort(name="eu", filter={"region": ["eu"]}))
        s.add(Cohort(name="jetsons", filter={"hardware_class": ["jetson"]}))
        manifest = {"reference": reference(), "outputs": [{"name": "probs", "shape": [1, N_CLASSES]}]}
        s.add(ModelVersion(name="digits", version=3, runtime="onnx", sha256="0" * 64, length=1, manifest=manifest))
        s.commit()
    engine.dispose()


class Ingester:
    """One controller ingest path (receiver, ingestor, batcher, device acks) on a parked session."""

    def __init__(self, host: str, port: int, database_url: str, cid: str) -> None:
        from controller.core.db import make_engine
        from controller.core.metrics import Metrics
        from controller.telemetry.batch import TelemetryIngest
        from controller.telemetry.ingest import Ingestor
        from controller.telemetry.receiver import ControllerMqtt

        self.engine = make_engine(database_url)
        self.metrics = Metrics()
        self.tele = TelemetryIngest(self.engine, self.metrics)
        self.ctl = ControllerMqtt(host, port, Ingestor(self.engine, self.metrics, self.tele), client_id=cid, clean_session=False)

    def start(self) -> None:
        self.tele.start()
        self.ctl.start()

    def stop(self) -> None:
        self.tele.stop()
        self.ctl.stop()
        bad = {o: self.metrics.value("telemetry", o) for o in ("malformed", "duplicate", "unknown_device", "failed")}
        self.engine.dispose()
        if any(bad.values()):
            raise RuntimeError(f"unexpected outcomes {bad}")


def ingest(broker: MosquittoProcess, msgs: list[tuple[str, bytes]], database_url: str) -> float:
    cid = f"bench-ctl-{uuid.uuid4().hex[:6]}"
    park(broker, cid)
    publish_all(broker, msgs)
    ing = Ingester(broker.host, broker.port, database_url, cid)
    n = len(msgs)
    t0 = time.perf_counter()
    ing.start()
    deadline = time.monotonic() + 600
    while ing.tele.flushed < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"ingested {ing.tele.flushed} of {n}")
        time.sleep(0.002)
    elapsed = time.perf_counter() - t0
    ing.stop()
    drop_session(broker, cid)
    return n / elapsed


def compare(broker: MosquittoProcess, database_url: str, label: str) -> dict[str, Any]:
    """Warm-up, then REPS alternating rounds of baseline and ingester."""
    raw_receive(broker, payloads(0, 1000))
    ingest(broker, payloads(1, 1000), database_url)
    raws, ings, ratios = [], [], []
    for rep in range(REPS):
        msgs = payloads(10 + rep)
        raw = raw_receive(broker, msgs)
        ing = ingest(broker, payloads(20 + rep), database_url)
        raws.append(raw)
        ings.append(ing)
        ratios.append(ing / raw)
        log(f"{label} rep {rep + 1}: raw {raw:,.0f} msg/s, ingest {ing:,.0f} msg/s, ratio {ing / raw:.3f}")
    return {"raw": statistics.median(raws), "ingest": statistics.median(ings), "ratios": ratios}


# --- several ingest processes on one PostgreSQL -------------------------------------


def worker_main(argv: list[str]) -> None:
    """``python -m scripts.benches.ingest worker HOST PORT URL CID``: wait for 'go' on stdin, drain, report."""
    host, port, url, cid = argv[0], int(argv[1]), argv[2], argv[3]
    ing = Ingester(host, int(port), url, cid)
    print("ready", flush=True)
    sys.stdin.readline()
    ing.start()
    last, last_t = -1, time.time()
    while True:
        n = ing.tele.flushed
        if n != last:
            last, last_t = n, time.time()
            print(f"flushed {n} {last_t:.6f}", flush=True)
        time.sleep(0.01)  # until the parent terminates this process


def multi_ingest(broker: MosquittoProcess, msgs: list[tuple[str, bytes]], url: str, procs: int) -> float:
    cids = [f"bench-w{i}-{uuid.uuid4().hex[:6]}" for i in range(procs)]
    for cid in cids:
        park(broker, cid)
    publish_all(broker, msgs)  # the share group splits the queue between the parked sessions
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "scripts.benches.ingest", "worker", broker.host, str(broker.port), url, cid],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for cid in cids
    ]
    progress = [(0, 0.0)] * procs
    try:
        for w in workers:
            assert w.stdout is not None
            if w.stdout.readline().strip() != "ready":
                raise RuntimeError("ingest worker did not start")

        def follow(i: int, w: subprocess.Popen[str]) -> None:
            assert w.stdout is not None
            for line in w.stdout:
                if line.startswith("flushed "):
                    _, n, t = line.split()
                    progress[i] = (int(n), float(t))

        threads = [threading.Thread(target=follow, args=(i, w), daemon=True) for i, w in enumerate(workers)]
        for t in threads:
            t.start()
        t0 = time.time()
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        deadline = time.monotonic() + 600
        while sum(n for n, _ in progress) < len(msgs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{procs} ingest processes merged {sum(n for n, _ in progress)} of {len(msgs)}")
            time.sleep(0.01)
        end = max(t for _, t in progress)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(30)
    for cid in cids:
        drop_session(broker, cid)
    return len(msgs) / (end - t0)


def pg_schema_url() -> tuple[str, Any] | None:
    try:
        from sqlalchemy import create_engine, text

        admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        log(f"PostgreSQL not reachable at {PG_URL}: {exc.__class__.__name__}; skipping the PostgreSQL figures")
        return None

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}", drop


def run() -> dict[str, Any]:
    sample = payloads(0, 1)[0][1]
    log(f"{N_MESSAGES} telemetry messages per round from {N_DEVICES} devices, {len(sample)} bytes each (wire v2)")
    result: dict[str, Any] = {"ingest_messages": N_MESSAGES, "ingest_payload_bytes": len(sample)}
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        broker = MosquittoProcess(Path(tmp) / "broker")
        broker.start()
        try:
            url = f"sqlite:///{tmp}/bench.db"
            prepare_db(url)
            lite = compare(broker, url, "SQLite")
            result.update(
                raw_receive_msgs_per_s=round(lite["raw"]),
                ingest_msgs_per_s=round(lite["ingest"]),
                ingest_ratio=round(statistics.median(lite["ratios"]), 3),
                ingest_ratio_runs=[round(r, 3) for r in lite["ratios"]],
            )
            pg = pg_schema_url()
            if pg is not None:
                pg_url, drop = pg
                try:
                    prepare_db(pg_url)
                    res = compare(broker, pg_url, "PostgreSQL")
                    result.update(
                        raw_receive_msgs_per_s_postgres_run=round(res["raw"]),
                        ingest_msgs_per_s_postgres=round(res["ingest"]),
                        ingest_ratio_postgres=round(statistics.median(res["ratios"]), 3),
                        ingest_ratio_postgres_runs=[round(r, 3) for r in res["ratios"]],
                    )
                    rates: dict[int, float] = {}
                    for procs in (1, 2, 4):
                        rates[procs] = multi_ingest(broker, payloads(30 + procs, 2 * N_MESSAGES), pg_url, procs)
                        log(f"{procs} ingest processes on one PostgreSQL: {rates[procs]:,.0f} msg/s")
                    result.update(
                        ingest_msgs_per_s_postgres_procs={str(k): round(v) for k, v in rates.items()},
                        ingest_scaling_2=round(rates[2] / rates[1], 3),
                        ingest_scaling_4=round(rates[4] / rates[1], 3),
                    )
                finally:
                    drop()
        finally:
            broker.stop()
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker_main(sys.argv[2:])
