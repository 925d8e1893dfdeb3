"""Telemetry cost and store-and-forward recovery.

- ``bytes_per_device_day``: one default 60 s window of a real int8 digits model
  at 100 inferences/s (compact payload as stored in the queue), plus MQTT framing
  (PUBLISH header, topic, packet id, the broker's PUBACK) and keepalive pings
  (every 30 s, one window a message: the settings issue 18 started from), times
  1440 windows a day. ``bytes_per_device_day_tcpip`` adds 40 bytes
  of IPv4+TCP header for the four segments of each exchange (cellular bills those).
- ``cpu_overhead_percent``: extra CPU of the telemetry observer per inference,
  measured against the same inference loop without it (interleaved rounds,
  medians), times 100 inferences/s, plus closing one window per 60 s; in percent
  of one core. ``cpu_overhead_relative_percent`` is the same extra CPU relative
  to the inference itself.
- ``recovered_windows_ratio``: the outage scenario of the integration test
  (firmware_sim/outage.py) with 1 s windows: windows the controller's real ingest
  path stored over windows the agents closed (the last, partial window of the
  clean stop at the end included).
- ``wire_bytes_per_device_day`` (goal <= 1,000,000): measured on the wire, not
  computed from payloads: one agent over mTLS through a counting TCP proxy to a
  secured Mosquitto, a real controller storing and acknowledging the windows
  (``_wire.py``: TCP payload both ways, segments from the kernel, cut at a 1448-byte
  MSS, 52 bytes of IPv4+TCP header each). A day is one connection (TLS handshake,
  CONNECT, SUBSCRIBE, status), 1440 windows of 6000 real inferences on digits drawn
  at random, 10 events and the keepalive pings between messages, all with the
  agent's default settings for a device outside any rollout (ADR 0076: windows
  batched, ``windows_per_publish`` a message, pings after ``[broker] keepalive``
  seconds of quiet; both reported).
  ``wire_bytes_per_device_day_fresh``: the same device all day in a rollout or
  experiment (the desired state's ``sampling.telemetry_fresh``: every window
  published as it closes). The arithmetic figures above are kept for comparison.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WINDOW_S = 60.0  # default telemetry window
RATE = 100  # inferences per second
KEEPALIVE_S = 30  # the arithmetic figures keep the settings of issue 18 (one window a message, 30 s pings)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run() -> dict[str, object]:
    import hashlib

    from agent.config import parse_config
    from agent.host import ModelHost
    from agent.link import MqttLink
    from agent.runtime import load_model
    from agent.telemetry import Telemetry
    from firmware_sim.modelgen import load_digits, make_onnx_bundle
    from firmware_sim.outage import run_outage
    from shared import bundle as bundle_fmt
    from shared.topics import Kind, device_topic

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        _log("building a real int8 digits bundle")
        raw = make_onnx_bundle(version=1)
        b = bundle_fmt.read(raw)
        (tmp / "model.onnx").write_bytes(b.model)
        model = load_model(b.manifest, tmp / "model.onnx", hashlib.sha256(raw).hexdigest())
        host = ModelHost()
        host.swap("production", model)
        device = "pi-000123"
        cfg = parse_config({"device_id": device, "data_dir": str(tmp / "agent"), "director_public_keys": ["0" * 64]})
        link = MqttLink(cfg, lambda: 0, lambda p: None, lambda: None)  # never started: windows stay queued
        seq = iter(range(1, 1_000_000))
        tel = Telemetry(cfg, host, link, lambda: next(seq), "bench")
        x = load_digits()[0]
        inputs = [x[i : i + 1].tolist() for i in range(500)]  # what the socket API hands over

        def loop(n: int) -> float:
            t0 = time.process_time()
            for i in range(n):
                host.predict(inputs[i % len(inputs)])
            return (time.process_time() - t0) / n

        _log("measuring inference CPU with and without telemetry")
        loop(300)
        base, with_tel = [], []
        for _ in range(7):
            host.observers[:] = []
            base.append(loop(1500))
            host.observers[:] = [tel.observe]
            with_tel.append(loop(1500))
        host.observers[:] = []
        per_inf_base, per_inf_tel = statistics.median(base), statistics.median(with_tel)

        _log("one default window at 100 inferences/s")
        tel.close_window()
        tel.queue.ack(tel.queue.seqs())
        host.observers[:] = [tel.observe]
        for i in range(int(RATE * WINDOW_S)):
            host.predict(inputs[i % len(inputs)])
        host.observers[:] = []
        t0 = time.process_time()
        s = tel.close_window()
        close_cpu = time.process_time() - t0
        payload = dict(tel.queue.oldest(10))[s]
        topic = len(device_topic(device, Kind.TELEMETRY).encode())
        remaining = 2 + topic + 2 + len(payload)
        publish = 1 + (1 if remaining < 128 else 2 if remaining < 16384 else 3) + remaining
        per_window = publish + 4  # + PUBACK
        pings = 86400 / KEEPALIVE_S * (2 + 2)  # PINGREQ + PINGRESP
        windows_per_day = 86400 / WINDOW_S
        bytes_day = windows_per_day * per_window + pings
        tcpip_day = bytes_day + windows_per_day * 4 * 40 + 86400 / KEEPALIVE_S * 4 * 40
        tel.queue.close()
        _log("bytes on the wire: mTLS, a counting proxy, a real controller acknowledging")
        every = [x[i : i + 1].tolist() for i in range(len(x))]
        wire = measure_wire(tmp / "wire", model, json.loads(b.manifest.to_json()), every)

    overhead_s = per_inf_tel - per_inf_base + close_cpu / (RATE * WINDOW_S)
    cpu_pct = overhead_s * RATE * 100
    _log(
        f"inference {per_inf_base * 1e6:.1f} us, with telemetry {per_inf_tel * 1e6:.1f} us; window close {close_cpu * 1e3:.2f} ms"
    )
    _log(f"payload {len(payload)} bytes per window")

    _log("outage scenario: broker down, agent SIGKILLed and restarted, broker back")
    with tempfile.TemporaryDirectory() as tmp_s:
        outage = run_outage(Path(tmp_s), window_s=1.0, down_windows=5)
    return {
        **wire,
        "telemetry_window_payload_bytes": len(payload),
        "bytes_per_device_day": round(bytes_day),
        "bytes_per_device_day_tcpip": round(tcpip_day),
        "cpu_overhead_percent": round(cpu_pct, 3),
        "cpu_overhead_relative_percent": round(100 * overhead_s / per_inf_base, 1),
        "recovered_windows_ratio": round(outage.recovered_ratio, 4),
        "recovered_windows": outage.stored,  # stored by the controller
        "closed_windows": len(outage.closed),  # closed by the agents, the last ones included
    }


# --- bytes on the wire ------------------------------------------------------------------------

EVENTS_PER_DAY = 10  # OTA transitions, rejections, ...: a generous day for a device
CONNECTS_PER_DAY = 1  # TLS handshake, CONNECT, SUBSCRIBE, status
FRESH = {"telemetry_fresh": ["rollout:1"]}  # what a rollout's signed desired state puts in ``sampling``
BATCHED_WINDOWS, FRESH_WINDOWS = 20, 5  # windows measured in each cadence


def _identity(ca: Any, device: str, directory: Path) -> tuple[Path, Path, Path]:
    from controller.identity import pki
    from shared.csr import make_csr

    directory.mkdir(parents=True, exist_ok=True)
    key = pki.new_key()
    issued = ca.issue_device(device, make_csr(key, device))
    paths = (directory / "ca.pem", directory / f"{device}.pem", directory / f"{device}.key")
    paths[0].write_bytes(ca.cert_pem)
    paths[1].write_bytes(issued.pem)
    paths[2].write_bytes(pki.key_pem(key))
    paths[2].chmod(0o600)
    return paths


def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def measure_wire(tmp: Path, model: Any, manifest: dict[str, Any], inputs: list[Any]) -> dict[str, Any]:
    """One agent over mTLS through a counting proxy, a real controller ingesting and acknowledging."""
    import getpass
    import ssl

    from sqlmodel import Session

    from agent.config import parse_config
    from agent.host import ModelHost
    from agent.link import MqttLink
    from agent.telemetry import Telemetry
    from controller.core.db import init_db, make_engine
    from controller.core.metrics import Metrics
    from controller.core.tables import Device, ModelVersion
    from controller.identity import pki
    from controller.identity.broker_auth import controller_identities, provision, write_identity
    from controller.identity.broker_config import MosquittoConfig
    from controller.telemetry.batch import TelemetryIngest
    from controller.telemetry.ingest import Ingestor
    from controller.telemetry.receiver import ControllerMqtt
    from firmware_sim.mosquitto import MosquittoProcess, free_port
    from scripts.benches._wire import CountingProxy
    from shared.messages import Event, Status, now
    from shared.topics import Kind

    device = "pi-000123"
    ca = pki.DeviceCA.open(tmp / "ca", create=True)
    names = controller_identities(1)
    sec = provision(ca, tmp / "broker", controllers=names)
    ident = write_identity(ca, names[0], tmp / "controller-identity")
    broker = MosquittoProcess(
        tmp / "run", MosquittoConfig(port=free_port(), security=sec, pid_file=tmp / "run" / "pid", run_as=getpass.getuser())
    )
    broker.start()
    engine = make_engine(f"sqlite:///{tmp}/controller.db")
    init_db(engine)
    with Session(engine) as s:
        s.add(Device(id=device))
        s.add(ModelVersion(name=model.manifest.name, version=model.manifest.version, runtime="onnx", sha256=model.sha256,
                           length=1, manifest=manifest))  # fmt: skip
        s.commit()
    ctx = ssl.create_default_context(cafile=str(sec.cafile))
    ctx.load_cert_chain(str(ident.cert), str(ident.key))
    metrics = Metrics()
    ingest = TelemetryIngest(engine, metrics, max_age_s=10 * 86400)
    ctl = ControllerMqtt(broker.host, broker.port, Ingestor(engine, metrics, ingest), tls=ctx, client_id=names[0])
    ingest.start()
    ctl.start()
    proxy = CountingProxy((broker.host, broker.port))
    link: Any = None
    tel: Any = None
    try:
        _until(ctl.connected.is_set, 20, "the controller on the secure broker")
        if not ctl.register_devices([device]):
            raise RuntimeError("the broker did not take the device registration")
        ca_file, cert, key = _identity(ca, device, tmp / "device")
        seq = iter(range(1, 10**9))
        cfg = parse_config({
            "device_id": device, "data_dir": str(tmp / "agent"), "director_public_keys": ["0" * 64],
            "broker": {"host": "127.0.0.1", "port": proxy.port, "ca_file": str(ca_file), "cert_file": str(cert),
                       "key_file": str(key)},
            "telemetry": {"window_s": 3600.0},  # the bench closes each window itself; the cadence is the default
        })  # fmt: skip
        host = ModelHost()
        host.swap("production", model)
        status = lambda: Status(device_id=device, seq=next(seq), sent_at=now(), state="online", agent_version="bench",  # noqa: E731
                                hardware={"arch": "aarch64", "machine": "pi-000123", "python": "3.11.2"},
                                models={})  # fmt: skip
        link = MqttLink(cfg, lambda: next(seq), lambda p: None, lambda: link.publish(Kind.STATUS, status(), retain=True))
        tel = Telemetry(cfg, host, link, lambda: next(seq), "bench")
        tel.start()
        before = proxy.count()
        link.start()
        _until(lambda: link.connected and not link._client._out_messages, 30, "the agent connected, status sent")
        time.sleep(0.5)
        connect = proxy.count() - before

        rng = random.Random(7)

        def windows(n: int, sampling: dict[str, Any], each: bool) -> tuple[Any, int]:
            """``n`` windows of 6000 inferences on digits drawn at random (each differs as a sensor's do), published
            as the cadence decides under the desired state's ``sampling``; (bytes on the wire, messages)."""
            host.sampling = sampling
            start, messages = proxy.count(), tel.sender.messages
            for _ in range(n):
                for _ in range(int(RATE * WINDOW_S)):
                    host.predict(inputs[rng.randrange(len(inputs))])
                tel.close_window()
                if each:  # a fresh window goes at once: it is acknowledged before the next one closes
                    _until(lambda: tel.queue.pending() == 0, 60, "the fresh window acknowledged by the controller")
            _until(lambda: tel.queue.pending() == 0, 120, "every window acknowledged by the controller")
            time.sleep(0.5)
            return proxy.count() - start, tel.sender.messages - messages

        per_message = cfg.telemetry.windows_per_publish
        _log(f"wire: default cadence (up to {per_message} windows a message)")
        batched, batched_messages = windows(BATCHED_WINDOWS, {}, each=False)
        _log("wire: fresh cadence (the desired state of a device in a rollout)")
        fresh, fresh_messages = windows(FRESH_WINDOWS, FRESH, each=True)
        start = proxy.count()
        detail = {"role": "production", "model": "digits", "version": 3, "sha256": "a" * 64}
        link.publish(Kind.EVENTS, Event(device_id=device, seq=next(seq), sent_at=now(), kind="ota.committed",
                                        message="committed digits v3 after health check", detail=detail))  # fmt: skip
        _until(lambda: not link._client._out_messages, 10, "the event acknowledged")
        time.sleep(0.3)
        event = proxy.count() - start
        start = proxy.count()
        link._client._send_pingreq()  # what the keepalive sends when the link is quiet
        time.sleep(0.5)
        ping = proxy.count() - start
        stored = metrics.value("telemetry", "accepted")
    finally:
        if tel is not None:
            tel.stop()
        if link is not None:
            link.stop()
        proxy.close()
        ctl.stop()
        ingest.stop()
        broker.stop()
        engine.dispose()
    if stored != BATCHED_WINDOWS + FRESH_WINDOWS:
        raise RuntimeError(f"the controller stored {stored} of {BATCHED_WINDOWS + FRESH_WINDOWS} windows")
    if batched_messages != math.ceil(BATCHED_WINDOWS / per_message) or fresh_messages != FRESH_WINDOWS:
        raise RuntimeError(
            f"expected {BATCHED_WINDOWS} windows in messages of {per_message} and {FRESH_WINDOWS} one by one, "
            f"got {batched_messages} and {fresh_messages} messages (a notable window goes at once)"
        )
    keepalive = cfg.broker.keepalive
    windows_day = 86400 / WINDOW_S

    def day(per_window: float, interval_s: float) -> float:
        """Bytes a day: the fixed part, every window, and the pings a quiet link sends between messages."""
        pings = 86400 / interval_s * (math.ceil(interval_s / keepalive) - 1)
        return CONNECTS_PER_DAY * connect.wire + EVENTS_PER_DAY * event.wire + windows_day * per_window + pings * ping.wire

    per_window, per_window_fresh = batched.wire / BATCHED_WINDOWS, fresh.wire / FRESH_WINDOWS
    _log(
        f"wire bytes: connect {connect.wire}, window {per_window:.0f} ({per_message} a message) / {per_window_fresh:.0f} "
        f"(fresh, one a message), event {event.wire}, ping {ping.wire} (keepalive {keepalive} s)"
    )
    return {
        "wire_bytes_per_device_day": round(day(per_window, per_message * WINDOW_S)),
        "wire_bytes_per_device_day_fresh": round(day(per_window_fresh, WINDOW_S)),
        "wire_bytes_per_window": round(per_window),
        "wire_bytes_per_window_fresh": round(per_window_fresh),
        "wire_bytes_connect": connect.wire,
        "wire_bytes_event": event.wire,
        "wire_bytes_ping": ping.wire,
        "wire_keepalive_s": keepalive,
        "wire_windows_per_message": per_message,
    }
