"""Telemetry ingestion from a real Mosquitto into a real database: two replicas on the shared subscription."""

from __future__ import annotations

import functools
import json
import time

import paho.mqtt.client as mqtt
import pytest
from sqlmodel import Session, select

from controller.core.metrics import Metrics
from controller.core.tables import Cohort, Device, ModelVersion, TelemetryAggregate
from controller.telemetry.aggregate import merge_many
from controller.telemetry.batch import TelemetryIngest
from controller.telemetry.ingest import Ingestor
from controller.telemetry.receiver import ControllerMqtt
from shared.telemetry import N_LATENCY_BUCKETS, merge
from shared.topics import Kind, device_topic

pytestmark = [pytest.mark.integration]
WINDOW = int(time.time()) // 60 * 60 - 3600  # an hour ago, aligned to 60 s
REFERENCE = {  # what the registered manifest of digits v3 says: 4 bins per feature, 10 classes
    "features": [{"name": "px0", "bin_edges": [0, 1, 2]}, {"name": "px1", "bin_edges": [0.5, 1.5, 2.5]}],
    "predictions": {"classes": list(range(10))},
}


def register(engine, model: str = "digits", version: int = 3, reference: dict | None = None) -> None:
    """A registered model version: the ingest takes summary shapes from its manifest."""
    with Session(engine) as s:
        s.add(
            ModelVersion(
                name=model,
                version=version,
                runtime="onnx",
                sha256="0" * 64,
                length=1,
                manifest={"reference": reference or REFERENCE, "outputs": [{"shape": [1, 10]}]},
            )
        )
        s.commit()


def summary(i: int, version: int = 3) -> dict:
    lat = [0] * N_LATENCY_BUCKETS
    lat[20 + i % 7] = 50 + i
    return {
        "model": "digits",
        "version": version,
        "count": 50 + i,
        "errors": i % 2,
        "latency_ms": lat,
        "predictions": [i % 3] * 10,
        "features": {"px0": [1, 2, i, 0], "px1": [0, 0, 1, i]},
        "shadow": {"agree": i, "disagree": 1},
        "labels": {"count": i % 4, "correct": i % 2},
        "samples": 2 * i,
    }


def window(device: str, seq: int, i: int, start: float = WINDOW + 5, **roles) -> bytes:
    return json.dumps(
        {
            "schema": 1,
            "device_id": device,
            "seq": seq,
            "sent_at": time.time(),
            "window_start": start,
            "window_s": 60,
            "roles": roles or {"production": summary(i)},
            "system": {"cpu": 0.5},
        }
    ).encode()


def merged_rows(engine, cohort: str) -> tuple[dict, int, int]:
    with Session(engine) as s:
        rows = s.exec(select(TelemetryAggregate).where(TelemetryAggregate.cohort == cohort)).all()
    return merge_many([r.summary for r in rows]), sum(r.windows for r in rows), len({r.shard for r in rows})


def wait_until(cond, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def replicas(engine, mosquitto):
    """Two controller replicas (ingester + MQTT consumer each) sharing one subscription."""
    register(engine)
    made = []
    for _ in range(2):
        metrics = Metrics()
        tele = TelemetryIngest(engine, metrics, batch_max=7, linger_s=0.01)
        m = ControllerMqtt(
            mosquitto.host,
            mosquitto.port,
            Ingestor(engine, metrics, tele),
            on_malformed=lambda k, mt=metrics: mt.count(k, "malformed"),
        )
        tele.start()
        m.start()
        assert m.connected.wait(10)
        made.append((metrics, tele, m))  # connected = subscriptions acknowledged
    yield made
    for _, tele, m in made:
        tele.stop()
        m.stop()


def publisher(mosquitto) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect(mosquitto.host, mosquitto.port)
    c.loop_start()
    return c


def total(replicas, kind: str, outcome: str) -> float:
    return sum(m.value(kind, outcome) for m, _, _ in replicas)


def test_windows_are_deduped_validated_and_merged_exactly_across_replicas(engine, mosquitto, replicas):
    with Session(engine) as s:
        for i in range(6):
            s.add(Device(id=f"ing-{i}", region="eu" if i < 3 else "us"))
        s.add(Cohort(name="eu", filter={"region": ["eu"]}))
        s.add(Cohort(name="pinned", members=["ing-5"]))
        s.commit()
    pub = publisher(mosquitto)
    sent: dict[str, list[dict]] = {"*": [], "eu": [], "pinned": []}
    n = 0
    for i in range(6):
        for seq in (10, 12, 13, 11):  # out of order is fine
            n += 1
            s = summary(n)
            pub.publish(device_topic(f"ing-{i}", Kind.TELEMETRY), window(f"ing-{i}", seq, n), qos=1).wait_for_publish(5)
            sent["*"].append(s)
            if i < 3:
                sent["eu"].append(s)
            if i == 5:
                sent["pinned"].append(s)
    wait_until(lambda: total(replicas, "telemetry", "accepted") >= 24, what="24 windows accepted")
    # QoS 1 redelivery and replays: same (device, seq) again, different content; must not count.
    for i in range(6):
        pub.publish(device_topic(f"ing-{i}", Kind.TELEMETRY), window(f"ing-{i}", 12, 999), qos=1).wait_for_publish(5)
    bad = [
        (device_topic("ing-0", Kind.TELEMETRY), b"{not json"),
        (device_topic("ing-0", Kind.TELEMETRY), window("ing-1", 50, 1)),  # device_id differs from the topic
        (
            device_topic("ing-0", Kind.TELEMETRY),
            window("ing-0", 51, 1, production={"model": "digits", "version": 3, "count": 1.5}),
        ),
        (device_topic("ing-0", Kind.TELEMETRY), window("ing-0", 52, 1, production={"count": 1})),
        (device_topic("ing-0", Kind.TELEMETRY), window("ing-0", 53, 1, production={**summary(1), "latency_ms": [1, 2]})),
    ]
    for topic, payload in bad:
        pub.publish(topic, payload, qos=1).wait_for_publish(5)
    pub.publish(device_topic("stranger", Kind.TELEMETRY), window("stranger", 1, 1), qos=1).wait_for_publish(5)

    wait_until(lambda: total(replicas, "telemetry", "malformed") >= 5, what="malformed counted")
    wait_until(lambda: total(replicas, "telemetry", "duplicate") >= 6, what="duplicates counted")
    wait_until(lambda: total(replicas, "telemetry", "unknown_device") >= 1, what="unknown device counted")
    outcomes = ("accepted", "duplicate", "malformed", "unknown_device")
    wait_until(lambda: sum(total(replicas, "telemetry", o) for o in outcomes) >= 36, what="all 36 messages handled")
    assert total(replicas, "telemetry", "accepted") == 24
    # All 5 refused by the MQTT consumer's protocol validation (shared.messages.Telemetry.read): bad JSON,
    # device_id mismatch, a float count, a summary without model, a latency list of the wrong length.
    assert total(replicas, "telemetry", "malformed") == 5
    assert total(replicas, "telemetry", "duplicate") == 6
    assert sum(m.malformed for _, _, m in replicas) == 5
    for cohort, summaries in sent.items():
        got, windows, _ = merged_rows(engine, cohort)
        assert got == functools.reduce(merge, summaries), cohort
        assert windows == len(summaries)
    assert merged_rows(engine, "*")[2] == 2, "both replicas should have taken part"
    pub.loop_stop()
    pub.disconnect()


def test_status_and_events_update_inventory_and_unknown_devices_are_ignored(engine, mosquitto, replicas):
    with Session(engine) as s:
        s.add(Device(id="st-1"))
        s.commit()
    pub = publisher(mosquitto)
    unknown_before = total(replicas, "status", "unknown_device")  # retained statuses of other tests' devices
    status = {
        "schema": 1,
        "device_id": "st-1",
        "seq": 1,
        "sent_at": time.time(),
        "state": "online",
        "agent_version": "0.2.0",
        "hardware": {"arch": "aarch64", "model": "Raspberry Pi 4"},
        "models": {"production": {"model": "digits", "version": 2, "sha256": "a" * 64, "runtime": "onnx", "since": 1.0}},
    }
    pub.publish(device_topic("st-1", Kind.STATUS), json.dumps(status).encode(), qos=1).wait_for_publish(5)
    event = {"schema": 1, "device_id": "st-1", "seq": 2, "sent_at": 1.0, "kind": "ota.committed", "severity": "info"}
    pub.publish(device_topic("st-1", Kind.EVENTS), json.dumps(event).encode(), qos=1).wait_for_publish(5)
    pub.publish(device_topic("st-9", Kind.STATUS), json.dumps({**status, "device_id": "st-9"}).encode(), qos=1).wait_for_publish(
        5
    )
    wait_until(lambda: total(replicas, "events", "accepted") == 1, what="event stored")
    wait_until(lambda: total(replicas, "status", "unknown_device") >= unknown_before + 1, what="unknown device status counted")
    with Session(engine) as s:
        d = s.get(Device, "st-1")
        assert d.online and d.agent_version == "0.2.0" and d.hardware["model"] == "Raspberry Pi 4"
        assert d.actual["production"]["version"] == 2
        assert s.get(Device, "st-9") is None
    pub.loop_stop()
    pub.disconnect()


def test_windows_far_behind_the_newest_are_stored_exactly_once(engine, mosquitto, replicas):
    """A device back from a long outage sends old windows after newer ones: seqs more than the
    bitmap's 62 below its highest are still new the first time and duplicates after."""
    with Session(engine) as s:
        s.add(Device(id="late-1"))
        s.commit()
    pub = publisher(mosquitto)
    topic = device_topic("late-1", Kind.TELEMETRY)
    sent: dict[int, dict] = {}
    for n, seq in enumerate((500, 501, 3, 100, 3, 4, 100, 437, 438, 437)):  # 437 is 64 below 501
        n = min((k for k, q in enumerate((500, 501, 3, 100, 3, 4, 100, 437, 438, 437)) if q == seq))  # a repeat: same body
        pub.publish(topic, window("late-1", seq, n), qos=1).wait_for_publish(5)
        sent.setdefault(seq, summary(n))
    wait_until(lambda: total(replicas, "telemetry", "accepted") + total(replicas, "telemetry", "duplicate") >= 10, what="all")
    time.sleep(0.3)
    assert total(replicas, "telemetry", "accepted") == len(sent) == 7
    assert total(replicas, "telemetry", "duplicate") == 3
    got, windows, _ = merged_rows(engine, "*")
    assert windows == 7
    assert got == functools.reduce(merge, sent.values())
    pub.loop_stop()
    pub.disconnect()


def test_one_device_cannot_shape_or_poison_fleet_aggregates(engine, mosquitto, replicas):
    """The shape comes from the registered manifest, not from the first sender; far-off windows are refused."""
    with Session(engine) as s:
        for d in ("evil-1", "good-1", "good-2"):
            s.add(Device(id=d))
        s.commit()
    pub = publisher(mosquitto)
    odd = {**summary(1), "predictions": [1, 2, 3], "features": {"px0": [1]}}  # not digits v3's shape
    future = time.time() + 365 * 86400
    evil = [
        window("evil-1", 1, 1, production=odd),  # first for this window: on the old code it fixed the shape
        window("evil-1", 2, 1, start=future),  # a correct summary for a window a year ahead
        window("evil-1", 3, 1, start=future, production=odd),
        window("evil-1", 4, 1, start=WINDOW - 60 * 86400),  # two months old
        window("evil-1", 5, 1, production={**summary(1), "version": 99}),  # no such registered version
    ]
    for p in evil:
        pub.publish(device_topic("evil-1", Kind.TELEMETRY), p, qos=1).wait_for_publish(5)
    wait_until(lambda: total(replicas, "telemetry", "malformed") >= len(evil), what="the evil windows refused")
    honest = [summary(10 + i) for i in range(4)]
    for i, s in enumerate(honest):
        dev = f"good-{1 + i % 2}"
        pub.publish(device_topic(dev, Kind.TELEMETRY), window(dev, 10 + i, 0, production=s), qos=1).wait_for_publish(5)
    wait_until(lambda: total(replicas, "telemetry", "accepted") >= len(honest), what="every honest window accepted")
    time.sleep(0.3)
    assert total(replicas, "telemetry", "malformed") == len(evil)
    got, windows, _ = merged_rows(engine, "*")
    assert windows == len(honest) and got == functools.reduce(merge, honest)
    with Session(engine) as s:
        starts = {r.window_start for r in s.exec(select(TelemetryAggregate)).all()}
    assert starts == {WINDOW}, "nothing stored for a window far from the controller's clock"
    pub.loop_stop()
    pub.disconnect()


def v2(device: str, seqs: list[int], first: int, start: float = WINDOW + 5, **roles) -> bytes:
    """A wire v2 message with one window per seq (several: later ones are differences)."""
    from shared import wire
    from shared.messages import decode

    windows = [decode(Kind.TELEMETRY, window(device, s, first + k, start, **roles)) for k, s in enumerate(seqs)]
    return wire.encode(windows)  # type: ignore[arg-type]


def recoded(payload: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    """A v2 message altered below the schema (the counts), re-encoded."""
    import zlib

    import msgspec

    from shared import wire

    batch = msgspec.msgpack.decode(zlib.decompress(payload[1:]))
    change(batch)
    return bytes([wire.MAGIC_V2]) + zlib.compress(msgspec.msgpack.encode(batch))


def test_v2_messages_merge_exactly_like_v1_windows_and_bad_ones_are_refused_alone(engine, mosquitto, replicas):
    """Old and new agents side by side: the aggregates equal the merge of every window sent, in any format."""
    with Session(engine) as s:
        for i in range(4):
            s.add(Device(id=f"v2-{i}", region="eu"))
        s.add(Cohort(name="v2-eu", filter={"region": ["eu"]}))
        s.commit()
    pub = publisher(mosquitto)
    expected: list[dict] = []
    accepted_before = total(replicas, "telemetry", "accepted")
    malformed_before = total(replicas, "telemetry", "malformed")
    for seq in range(10, 16):  # single-window v2 messages (the default), summed without decoding
        pub.publish(device_topic("v2-0", Kind.TELEMETRY), v2("v2-0", [seq], seq), qos=1).wait_for_publish(5)
        expected.append(summary(seq))
    # A metered agent: six windows in one message, five of them differences from their predecessors' mean.
    pub.publish(device_topic("v2-1", Kind.TELEMETRY), v2("v2-1", list(range(20, 26)), 40), qos=1).wait_for_publish(5)
    expected += [summary(40 + k) for k in range(6)]
    for seq in (30, 31):  # an older agent's JSON windows, merged with the rest
        pub.publish(device_topic("v2-2", Kind.TELEMETRY), window("v2-2", seq, seq), qos=1).wait_for_publish(5)
        expected.append(summary(seq))
    good = v2("v2-3", [5], 5)
    bad = [
        recoded(good, lambda b: b[4][0][5][0].__setitem__(4, b[4][0][5][0][4][:-1])),  # one byte short
        recoded(good, lambda b: b[3][0].__setitem__(3, [3, 5])),  # px0 has 3 bins, the manifest says 4
        v2("v2-3", [6], 6, production={**summary(6), "version": 9}),  # not a registered version
    ]
    for payload in bad:
        pub.publish(device_topic("v2-3", Kind.TELEMETRY), payload, qos=1).wait_for_publish(5)
    pub.publish(device_topic("v2-3", Kind.TELEMETRY), good, qos=1).wait_for_publish(5)
    expected.append(summary(5))
    wait_until(lambda: total(replicas, "telemetry", "accepted") - accepted_before >= len(expected), what="v2 windows merged")
    wait_until(lambda: total(replicas, "telemetry", "malformed") - malformed_before >= 3, what="bad v2 refused")
    assert total(replicas, "telemetry", "accepted") - accepted_before == len(expected)
    got, windows, _ = merged_rows(engine, "v2-eu")
    assert got == functools.reduce(merge, expected)
    assert windows == len(expected)
    pub.loop_stop()
    pub.disconnect()
