"""One device against the fleet: no payload on any device topic stops ingestion, through a real broker and app.

The first test is the original hole: a deeply nested JSON payload (20 KB, far
under the size limit) on a device's own telemetry topic made the decoder raise
RecursionError, which left the paho callback and ended the network thread, so
no message of any device was processed again while /healthz said all was well.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from sqlmodel import Session

from controller.core.metrics import OUTCOMES
from controller.core.tables import Device
from controller.telemetry.guard import LoopState
from controller.telemetry.receiver import ControllerMqtt
from shared import compact
from shared.topics import Kind, device_topic
from tests.controller_app import Api, running_api, settings_for

pytestmark = [pytest.mark.integration]


def wait_until(cond: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def api(tmp_path, database_url, mosquitto) -> Iterator[Api]:
    with running_api(settings_for(tmp_path, database_url, mosquitto.port)) as a:
        yield a


@pytest.fixture
def pub(mosquitto) -> Iterator[mqtt.Client]:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect(mosquitto.host, mosquitto.port)
    c.loop_start()
    yield c
    c.loop_stop()
    c.disconnect()


def status(device: str, seq: int, version: str = "0.1.0") -> bytes:
    return json.dumps(
        {"schema": 1, "device_id": device, "seq": seq, "sent_at": time.time(), "state": "online", "agent_version": version}
    ).encode()


def enrol(api: Api, *devices: str) -> None:
    with Session(api.app.state.engine) as s:
        for d in devices:
            s.add(Device(id=d))
        s.commit()


def agent_version(api: Api, device: str) -> str | None:
    with Session(api.app.state.engine) as s:
        d = s.get(Device, device)
        return None if d is None else d.agent_version


def nasty_payloads(device: str) -> list[bytes]:
    """Hostile bytes a device can publish on its own topics (all under the size limit)."""
    deep_list = b"[" * 10_000 + b"]" * 10_000
    deep_obj = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    base = {"schema": 1, "device_id": device, "seq": 5, "sent_at": 1.0, "state": "online", "kind": "x", "severity": "info"}
    tele = {**base, "window_start": 1.0, "window_s": 60.0}
    return [
        deep_list,
        deep_obj,
        b'{"schema":1,"device_id":"' + device.encode() + b'","roles":' + deep_obj + b"}",
        b'{"schema":1,"seq":' + b"9" * 4400 + b"}",  # beyond Python's int-to-str limit
        b'{"schema":1,"seq":' + b"9" * 4000 + b"}",
        json.dumps({**tele, "seq": 10**4000}).encode(),
        b'{"schema":1,"sent_at":1e999999}',
        b'{"schema":1,"sent_at":NaN,"seq":-Infinity}',
        b'{"schema":1,"schema":2,"device_id":"a","device_id":"' + device.encode() + b'"}',  # duplicate keys
        b'{"schema":1,"device_id":"\xff\xfe\xc3\x28"}',  # invalid UTF-8
        b"\xff\xfe\x00\x00",
        b'"\\ud800"',
        b"",
        b"null",
        b"[]",
        bytes([compact.ZLIB_MAGIC]) + b"\xbb" + compact.ZDICT_V1_ID.to_bytes(4, "big") + b"\x00" * 50,  # corrupt stream
        compact.compress(deep_list),
        compact.compress(b"{" * 50_000),
        zlib.compress(b"x" * 2_000_000, 9),  # a deflate bomb without the dictionary
        json.dumps(
            {**tele, "roles": {"production": {"model": "m", "version": 1, "count": 1, "errors": 0, "latency_ms": []}}}
        ).encode(),
        json.dumps({**tele, "roles": {"production": {"features": {"f": [10**30]}}}}).encode(),
        json.dumps({**tele, "roles": {"production": {"features": {str(i): [1] for i in range(5000)}}}}).encode(),
        json.dumps({**tele, "counters": {"x": 10**30, "y": -1}}).encode(),
        json.dumps({**base, "models": {"production": {"model": "m", "version": 10**30, "sha256": "z"}}}).encode(),
        json.dumps({**base, "detail": {"nested": [[[[[]]]]]}, "message": "[/]" * 100}).encode(),
    ]


def test_a_poison_payload_on_a_devices_own_topic_does_not_stop_ingestion_for_everyone(api, pub) -> None:
    enrol(api, "poison-1", "honest-1")
    deep = b"[" * 10_000 + b"]" * 10_000
    pub.publish(device_topic("poison-1", Kind.TELEMETRY), deep, qos=1).wait_for_publish(5)
    pub.publish(device_topic("honest-1", Kind.STATUS), status("honest-1", 1, "9.9.9"), qos=1).wait_for_publish(5)
    wait_until(lambda: agent_version(api, "honest-1") == "9.9.9", what="the honest device's status after the poison payload")
    health = api.admin.get("/healthz")
    assert health.status_code == 200 and health.json()["mqtt_receive"] == "running", health.text
    assert api.app.state.metrics.value("telemetry", "malformed") >= 1


@pytest.mark.parametrize("kind", [Kind.TELEMETRY, Kind.STATUS, Kind.EVENTS])
def test_nasty_json_on_every_topic_is_counted_and_the_loop_goes_on(api, pub, kind: Kind) -> None:
    device = f"nasty-{kind.value}"
    enrol(api, device, "honest-2")
    mq: ControllerMqtt = api.app.state.mqtt
    payloads = nasty_payloads(device)
    metrics = api.app.state.metrics

    def seen() -> float:  # every message ends in one outcome; most of these are malformed
        return sum(metrics.value(kind.value, o) for o in OUTCOMES)

    before = seen()
    for p in payloads:
        pub.publish(device_topic(device, kind), p, qos=1).wait_for_publish(5)
    pub.publish(device_topic("honest-2", Kind.STATUS), status("honest-2", 1, f"v-{kind.value}"), qos=1).wait_for_publish(5)
    wait_until(lambda: agent_version(api, "honest-2") == f"v-{kind.value}", what="an honest status after the nasty payloads")
    expected = len(payloads) + (kind is Kind.STATUS)  # and the honest status
    # At least: retained statuses that earlier tests left on the session's broker may arrive too.
    wait_until(lambda: seen() - before >= expected, what=f"an outcome for every payload ({expected})")
    assert metrics.value(kind.value, "malformed") >= len(payloads) // 2
    assert mq.decoder_failures == 0, "a decoder raised something other than a ProtocolError"
    assert mq.guard.errors == {}
    assert api.admin.get("/healthz").json()["mqtt_receive"] == "running"


def test_a_stuck_handler_and_a_dead_loop_show_in_healthz_and_metrics(tmp_path, database_url, mosquitto, pub) -> None:
    settings = settings_for(tmp_path, database_url, mosquitto.port).model_copy(update={"mqtt_stall_s": 0.5})
    with running_api(settings) as api:
        enrol(api, "stuck-1")
        mq: ControllerMqtt = api.app.state.mqtt
        release = threading.Event()
        ingest = mq._handler

        def slow(topic, message, ack):  # the database hangs for this message
            release.wait(20)
            ingest(topic, message, ack)

        mq._handler = slow
        pub.publish(device_topic("stuck-1", Kind.STATUS), status("stuck-1", 1), qos=1).wait_for_publish(5)
        wait_until(lambda: mq.loop_state() is LoopState.STALLED, what="the stall to be seen")
        h = api.admin.get("/healthz")
        assert h.status_code == 503 and h.json()["mqtt_receive"] == "stalled" and h.json()["status"] == "degraded"
        assert "edgefleet_mqtt_receive_running 0.0" in api.admin.get("/metrics").text
        release.set()
        wait_until(lambda: mq.loop_state() is LoopState.RUNNING, what="the loop to run again")
        assert api.admin.get("/healthz").status_code == 200
        assert "edgefleet_mqtt_receive_running 1.0" in api.admin.get("/metrics").text

        # A loop that ended (whatever killed paho's thread) is reported, not hidden behind "connected".
        mq._client.loop_stop()
        h = api.admin.get("/healthz")
        assert h.status_code == 503 and h.json()["mqtt_receive"] == "dead", h.text
